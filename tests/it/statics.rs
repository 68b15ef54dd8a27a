//! The served `<root>/static/` (src/host/statics.rs): the union of the
//! installed releases' static files, the live release's where they differ.
//!
//! * on a root, file by file: install adds (hard links, nothing
//!   overwritten), activate and rollback replace with the live release's,
//!   prune removes what no release has left, verify says what differs and the
//!   next command repairs it; the opt-out, a release without `static/`, a
//!   shared path under `static/`;
//! * with real servers: nginx serving `<root>/static/` (its workers as
//!   `nobody`, so the modes are tested too) in front of gunicorn, and a
//!   client that loads pages, parses their asset URLs and fetches them,
//!   through activate, rollback and activate on one host, and through a
//!   rolling switch of two hosts behind one nginx load balancer.
//!
//! The fixture app uses Django's ManifestStaticFilesStorage, and the shared
//! artifacts A and B (host.rs) differ in their CSS.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::members::Members;
use crate::common::root::Root;
use crate::common::running::*;
use crate::common::*;
use crate::host::artifacts;

/// The hashed name of `mysite/style.css` in a release (from its manifest).
fn hashed_css(root: &Root, id: &str) -> String {
    root.release_static(id)
        .into_iter()
        .find(|f| f.starts_with("mysite/style.") && f != "mysite/style.css")
        .unwrap_or_else(|| panic!("{id} has no hashed style.css"))
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn served(root: &Root, rel: &str) -> Vec<u8> {
    read(root.path.join("static").join(rel))
}

fn of_release(root: &Root, id: &str, rel: &str) -> Vec<u8> {
    read(root.path.join("releases").join(id).join("static").join(rel))
}

fn union(root: &Root, ids: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ids.iter().flat_map(|id| root.release_static(id)).collect();
    all.sort();
    all.dedup();
    all
}

#[test]
fn static_is_the_union_of_the_releases_and_the_live_one_wins() {
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    // Install A: its files, each a hard link to A's (world-readable), in
    // directories the web server can enter.
    assert_eq!(root.served_static(), root.release_static(&a));
    assert!(root
        .served_static()
        .contains(&"staticfiles.json".to_string()));
    for rel in root.served_static() {
        assert_eq!(root.served_from(&rel).as_deref(), Some(a.as_str()), "{rel}");
        let meta = std::fs::metadata(root.path.join("static").join(&rel)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o444, 0o444, "{rel}");
    }
    let dir_mode = std::fs::metadata(root.path.join("static/mysite"))
        .unwrap()
        .mode();
    assert_eq!(dir_mode & 0o7777, 0o755);
    let (css_a, unhashed) = (hashed_css(&root, &a), "mysite/style.css");

    // Install B: its new hashed CSS is added; the names both have (the
    // unhashed style.css, staticfiles.json) are not overwritten.
    let b = root.install(&art.b);
    let css_b = hashed_css(&root, &b);
    assert_ne!(css_a, css_b, "A and B must differ in their CSS");
    assert_eq!(root.served_static(), union(&root, &[&a, &b]));
    assert_eq!(served(&root, &css_b), of_release(&root, &b, &css_b));
    assert_eq!(root.served_from(unhashed).as_deref(), Some(a.as_str()));
    assert_ne!(
        of_release(&root, &a, unhashed),
        of_release(&root, &b, unhashed)
    );

    // Activate B: B's version of every name it has; A's hashed CSS stays.
    root.json(&["activate", &a]);
    assert_eq!(root.served_from(unhashed).as_deref(), Some(a.as_str()));
    root.json(&["activate", &b]);
    for rel in root.release_static(&b) {
        assert_eq!(root.served_from(&rel).as_deref(), Some(b.as_str()), "{rel}");
    }
    assert_eq!(root.served_from(&css_a).as_deref(), Some(a.as_str()));
    assert!(root.verifies_all());
    // Rollback: A's again; activate B again: B's.
    root.json(&["rollback"]);
    assert_eq!(root.served_from(unhashed).as_deref(), Some(a.as_str()));
    assert_eq!(
        root.served_from("staticfiles.json").as_deref(),
        Some(a.as_str())
    );
    assert_eq!(root.served_from(&css_b).as_deref(), Some(b.as_str()));
    root.json(&["activate", &b]);
    assert_eq!(root.served_from(unhashed).as_deref(), Some(b.as_str()));

    // verify: the served files against the releases' manifests.
    let report = root.json(&["verify"]);
    assert_eq!(report["static"]["ok"], true, "{report}");
    assert_eq!(
        report["static"]["files"].as_u64().unwrap() as usize,
        root.served_static().len()
    );
    // status and list show its files and bytes.
    let status = root.json(&["status"]);
    let files = root.served_static();
    let bytes: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(root.path.join("static").join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(status["static"]["files"], files.len() as u64, "{status}");
    assert_eq!(status["static"]["bytes"], bytes, "{status}");
    let list = stdout(&root.ok(&["list"]));
    assert!(
        list.contains(&format!("static    {} files", files.len())),
        "{list}"
    );
    // A file of current missing, one changed by hand, a stray: each named,
    // exit 1; `activate` of the current release puts them right.
    std::fs::remove_file(root.path.join("static").join(&css_b)).unwrap();
    let stray = root.path.join("static/mysite/stray.txt");
    std::fs::write(&stray, "not from a release").unwrap();
    let changed = root.path.join("static/mysite/app.js");
    std::fs::remove_file(&changed).unwrap();
    std::fs::write(&changed, "changed by hand").unwrap();
    let out = root.run(&["--json", "verify"]);
    let err = fails_with(&out, 1);
    assert!(err.contains("static") && err.contains("activate"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "the release itself is intact: {report}");
    let problems: BTreeMap<String, String> = report["static"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        problems[&format!("static/{css_b}")].contains("missing"),
        "{problems:?}"
    );
    assert!(
        problems["static/mysite/stray.txt"].contains("no installed release"),
        "{problems:?}"
    );
    assert!(
        problems["static/mysite/app.js"].contains("not the current release's"),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 3, "{problems:?}");
    let again = root.json(&["activate", &b]);
    assert_eq!(again["already_current"], true);
    assert!(root.verifies_all());
    assert!(!stray.exists());
    assert_eq!(root.served_static(), union(&root, &[&a, &b]));

    // Prune: C (B's files under another commit) becomes current, B the
    // rollback target, A goes, and with it the files only A had.
    let c = root.install(&art.c);
    root.json(&["activate", &c]);
    let a_only: Vec<String> = root
        .release_static(&a)
        .into_iter()
        .filter(|f| !root.release_static(&b).contains(f))
        .collect();
    assert!(a_only.contains(&css_a), "{a_only:?}");
    let pruned = root.json(&["prune", "--keep", "1"]);
    assert_eq!(pruned["removed"], serde_json::json!([a]), "{pruned}");
    assert_eq!(root.served_static(), union(&root, &[&b, &c]));
    for rel in &a_only {
        assert!(!root.path.join("static").join(rel).exists(), "{rel}");
    }
    assert!(root.verifies_all());
}

#[test]
fn opt_out_a_release_without_static_and_a_shared_path_under_static() {
    let art = artifacts();
    // serve_static = false: no static/ is made or touched.
    let off = Root::new();
    std::fs::create_dir_all(&off.path).unwrap();
    off.write_config("serve_static = false\n");
    let a = off.install(&art.a);
    off.json(&["activate", &a]);
    assert!(!off.path.join("static").exists());
    let report = off.json(&["verify"]);
    assert!(report.get("static").is_none(), "{report}");

    // A release without static/: nothing to serve, no directory.
    let tmp = tempfile::tempdir().unwrap();
    let commit = format!("5a71c{}", "0".repeat(35));
    let mut bare = Members::read(&art.a).with_commit(&commit);
    bare.0.retain(|m| {
        let p = m.path.trim_end_matches('/');
        p != "static" && !p.starts_with("static/")
    });
    let mut m = bare.manifest();
    m.files
        .retain(|e| e.path != "static" && !e.path.starts_with("static/"));
    bare.set_manifest(m);
    let bare = bare.write(&tmp.path().join(format!("mysite-{}.tar.zst", &commit[..12])));
    let root = Root::new();
    let plain = root.install(&bare);
    root.json(&["activate", &plain]);
    assert!(!root.path.join("static").exists());
    assert!(root.verifies_all());
    // Then a release with static files: served; the bare one current.
    let a = root.install(&art.a);
    assert_eq!(root.served_static(), root.release_static(&a));
    assert!(root.verifies_all());

    // A shared path under static/ (uploads): a link in each release, not
    // served from static/ (it is the app's data, not a release's file).
    let shared = Root::new();
    std::fs::create_dir_all(&shared.path).unwrap();
    shared.write_config("shared = [\"static/uploads\"]\n");
    std::fs::create_dir_all(shared.path.join("shared/static/uploads")).unwrap();
    std::fs::write(shared.path.join("shared/static/uploads/u.txt"), "upload").unwrap();
    let a = shared.install(&art.a);
    shared.json(&["activate", &a]);
    assert!(shared
        .path
        .join("releases")
        .join(&a)
        .join("static/uploads")
        .is_symlink());
    let mut files = shared.release_static(&a);
    assert!(files.contains(&"uploads".to_string()), "{files:?}");
    files.retain(|f| f != "uploads");
    assert_eq!(shared.served_static(), files);
    assert!(shared.verifies_all());
}

// ---------------------------------------------------------------------------
// Real nginx and gunicorn

/// nginx on 127.0.0.1 with its workers as `nobody`: one server per host
/// (`/static/` from the host's `<root>/static/` with the immutable cache
/// header, the rest proxied to its gunicorn), and, for more than one host,
/// a load balancer over them.
struct Nginx {
    _group: Group,
    /// The port of each host's server, and of the balancer (the last one).
    ports: Vec<u16>,
}

impl Nginx {
    fn start(dir: &Path, hosts: &[(&Path, u16)]) -> Nginx {
        assert!(
            Path::new("/usr/sbin/nginx").exists(),
            "/usr/sbin/nginx missing: run scripts/test-deps (it installs Debian's nginx)"
        );
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let mut ports = Vec::new();
        let mut servers = String::new();
        for (root, upstream) in hosts {
            let port = free_port();
            ports.push(port);
            servers += &format!(
                "  server {{\n    listen 127.0.0.1:{port};\n\
                 location /static/ {{\n      alias {}/static/;\n\
                 add_header Cache-Control \"public, max-age=31536000, immutable\";\n    }}\n\
                 location / {{\n      proxy_pass http://127.0.0.1:{upstream};\n      proxy_set_header Host 127.0.0.1;\n    }}\n  }}\n",
                root.display()
            );
        }
        if hosts.len() > 1 {
            let port = free_port();
            let members: String = ports
                .iter()
                .map(|p| format!("    server 127.0.0.1:{p};\n"))
                .collect();
            servers += &format!(
                "  upstream hosts {{\n{members}  }}\n  server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{\n      proxy_pass http://hosts;\n      proxy_set_header Host 127.0.0.1;\n    }}\n  }}\n"
            );
            ports.push(port);
        }
        let conf = dir.join("nginx.conf");
        let t = dir.join("tmp").display().to_string();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser nobody nogroup;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n\
                 client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n\
                 uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n{servers}}}\n",
                d = dir.display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/nginx");
        cmd.arg("-p").arg(&dir).arg("-c").arg(&conf);
        let group = Group::spawn("nginx", cmd, dir.join("nginx.out"));
        let front = *ports.last().unwrap();
        wait_for("nginx to serve", Duration::from_secs(10), || {
            get(front, "/healthz", false).is_ok_and(|(s, _)| s == 200)
        });
        Nginx {
            _group: group,
            ports,
        }
    }

    /// The port clients use: the balancer, or the one host's server.
    fn front(&self) -> u16 {
        *self.ports.last().unwrap()
    }
}

/// The status line and headers of a GET, lowercased.
fn response_head(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The `/static/` URLs a page links (`href="…"`, `src="…"`).
fn asset_urls(page: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attr in ["href=\"", "src=\""] {
        let mut rest = page;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            if rest[..end].starts_with("/static/") {
                urls.push(rest[..end].to_string());
            }
        }
    }
    urls
}

/// What the browsing clients saw.
#[derive(Debug, Default)]
struct Seen {
    pages: u64,
    failed_pages: Vec<String>,
    assets: u64,
    /// Asset fetches that did not answer 200, with the URL and status.
    failed_assets: Vec<String>,
    /// Every asset URL a page linked, with how often it was fetched.
    urls: BTreeMap<String, u64>,
}

impl Seen {
    /// Says what the clients saw (`what`: which scenario), and asserts that
    /// no page and no asset fetch failed and that each of `css` (hashed
    /// names under /static/) was fetched more than 10 times.
    fn assert_all_served(&self, what: &str, css: [&str; 2]) {
        eprintln!(
            "{what}: {} pages, {} asset fetches, {} failed pages, {} failed assets; URLs {:?}",
            self.pages,
            self.assets,
            self.failed_pages.len(),
            self.failed_assets.len(),
            self.urls
        );
        assert_eq!(self.failed_pages, Vec::<String>::new());
        assert_eq!(self.failed_assets, Vec::<String>::new());
        for css in css {
            let url = format!("/static/{css}");
            assert!(
                self.urls.get(&url).is_some_and(|&n| n > 10),
                "{url}: {:?}",
                self.urls
            );
        }
    }
}

/// Clients that load `/`, parse its asset URLs and fetch each, and also
/// fetch again every asset URL any earlier page linked (a browser or CDN
/// holding an older page), until stopped.
struct Browsing {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<JoinHandle<()>>,
}

impl Browsing {
    fn start(port: u16, clients: usize) -> Browsing {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        browse_once(port, &seen);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Browsing {
            stop,
            seen,
            threads,
        }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

fn browse_once(port: u16, seen: &Mutex<Seen>) {
    let page = get(port, "/", false);
    let mut urls: BTreeSet<String> = seen.lock().unwrap().urls.keys().cloned().collect();
    {
        let mut s = seen.lock().unwrap();
        s.pages += 1;
        match &page {
            Ok((200, body)) => {
                for url in asset_urls(body) {
                    s.urls.entry(url.clone()).or_default();
                    urls.insert(url);
                }
            }
            Ok((status, _)) => s.failed_pages.push(format!("/ -> {status}")),
            Err(e) => s.failed_pages.push(format!("/ -> {e}")),
        }
    }
    for url in urls {
        let got = get(port, &url, false);
        let mut s = seen.lock().unwrap();
        s.assets += 1;
        *s.urls.entry(url.clone()).or_default() += 1;
        match got {
            Ok((200, _)) => {}
            Ok((status, _)) => s.failed_assets.push(format!("{url} -> {status}")),
            Err(e) => s.failed_assets.push(format!("{url} -> {e}")),
        }
    }
}

/// A host for the server tests: a root, its gunicorn (started through
/// `current` with the launch line `release init` writes, reloaded with HUP),
/// in a directory nginx's `nobody` workers may enter.
struct ServedHost {
    root: Root,
    web: Gunicorn,
}

impl ServedHost {
    /// A root at `dir/<name>` with A installed and live, and gunicorn on it.
    fn start(dir: &Path, name: &str) -> ServedHost {
        let art = artifacts();
        let root = Root::at(dir.join(name).join("srv/mysite"));
        let run = dir.join(name).join("run");
        std::fs::create_dir_all(&run).unwrap();
        for d in [dir.join(name), dir.join(name).join("srv")] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let a = root.install(&art.a);
        root.json(&["activate", &a]);
        let web = Gunicorn::start(&root.path, &run);
        root.write_config(&format!(
            "[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"hup\"\ntimeout = \"60s\"\n\n[health]\nurl = \"{}\"\nexpect = \"{{release}}\"\ntimeout = \"30s\"\n",
            web.pidfile.display(),
            web.url("/healthz"),
        ));
        ServedHost { root, web }
    }
}

/// A directory every user may enter (nginx's workers run as nobody).
fn open_tmp() -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("release-static-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

fn pause() {
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn nginx_serves_every_asset_through_activate_rollback_activate_and_prune() {
    let art = artifacts();
    let tmp = open_tmp();
    let host = ServedHost::start(tmp.path(), "web1");
    let nginx = Nginx::start(tmp.path(), &[(&host.root.path, host.web.port)]);
    let port = nginx.front();
    let a = host.root.current().unwrap();
    let browsing = Browsing::start(port, 3);
    pause();
    let b = host.root.install(&art.b);
    pause();
    host.root.json(&["activate", &b]);
    pause();
    host.root.json(&["rollback"]);
    pause();
    host.root.json(&["activate", &b]);
    pause();
    let seen = browsing.stop();
    let (css_a, css_b) = (hashed_css(&host.root, &a), hashed_css(&host.root, &b));
    // Both versions' pages were seen, and every asset either linked was
    // fetched again after each switch.
    seen.assert_all_served("one host", [&css_a, &css_b]);
    // The hashed names are served with the immutable cache header.
    let head = response_head(port, &format!("/static/{css_b}"));
    assert!(
        head.starts_with("http/1.1 200")
            && head.contains("cache-control: public, max-age=31536000, immutable"),
        "{head}"
    );

    // Prune A (C, B's files under another commit, goes live; B is the
    // rollback target): A's hashed CSS is gone, 404; B's is served.
    let c = host.root.install(&art.c);
    host.root.json(&["activate", &c]);
    let pruned = host.root.json(&["prune", "--keep", "1"]);
    assert_eq!(pruned["removed"], serde_json::json!([a]), "{pruned}");
    assert_eq!(
        get(port, &format!("/static/{css_a}"), false).unwrap().0,
        404
    );
    assert_eq!(
        get(port, &format!("/static/{css_b}"), false).unwrap().0,
        200
    );
    let (status, page) = get(port, "/", false).unwrap();
    assert_eq!(status, 200);
    for url in asset_urls(&page) {
        assert_eq!(get(port, &url, false).unwrap().0, 200, "{url}");
    }
}

#[test]
fn two_hosts_behind_one_balancer_roll_without_a_missing_asset() {
    let art = artifacts();
    let tmp = open_tmp();
    let one = ServedHost::start(tmp.path(), "web1");
    let two = ServedHost::start(tmp.path(), "web2");
    let nginx = Nginx::start(
        tmp.path(),
        &[
            (&one.root.path, one.web.port),
            (&two.root.path, two.web.port),
        ],
    );
    let a = one.root.current().unwrap();
    let browsing = Browsing::start(nginx.front(), 4);
    pause();
    // Stage: B installed on both, nothing live changes.
    let b1 = one.root.install(&art.b);
    let b2 = two.root.install(&art.b);
    pause();
    // Roll: host 1, a pause with the fleet mixed, host 2.
    one.root.json(&["activate", &b1]);
    pause();
    pause();
    two.root.json(&["activate", &b2]);
    pause();
    let seen = browsing.stop();
    let (css_a, css_b) = (hashed_css(&one.root, &a), hashed_css(&one.root, &b1));
    seen.assert_all_served("two hosts", [&css_a, &css_b]);
    // While the fleet was mixed, pages of both releases came through the
    // balancer: host 1 rendered B while host 2 still ran A.
    for host in [&one, &two] {
        assert!(host.root.verifies_all());
        assert_eq!(
            host.root.served_from("mysite/style.css").as_deref(),
            host.root.current().as_deref()
        );
    }
}
