//! The fleet playbooks (`ansible/playbooks/deploy.yml`, `rollback.yml`) run
//! with the real `ansible-playbook` (pinned by scripts/test-deps into
//! target/ansible) over real SSH against five hosts. Each host is a real
//! OpenSSH sshd on its own loopback address (127.A.B.2 … .6), with its own
//! host key, its own release root and its own gunicorn started through
//! `current`; the first also runs a celery worker against a real redis. A
//! real nginx load-balances the gunicorns and a client load runs through it
//! for the whole test. Everything is stopped when the guards drop.
//!
//! One test runs the scenarios in order on the same hosts (each
//! starts from the state the previous one left, which it checks first):
//! (g) --check changes nothing, (a) a good rollout, (e) the same deploy again,
//! (f) rollback.yml, (b) a release that fails its health check, (c) a host
//! whose service is down in the last batch, (d) a host unreachable at stage.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::running::*;
use crate::common::*;

const HOSTS: usize = 5;

pub fn repo() -> &'static Path {
    Path::new(REPO)
}

/// `ansible-playbook` from the venv scripts/test-deps makes, or from the
/// directory `$RELEASE_TEST_ANSIBLE_BIN` names (to run the fleet test with
/// another ansible-core, e.g. 2.14).
fn ansible_bin() -> PathBuf {
    let bin = std::env::var_os("RELEASE_TEST_ANSIBLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/ansible/bin"));
    assert!(
        bin.join("ansible-playbook").is_file(),
        "{} missing: run scripts/test-deps (it installs ansible-core into target/ansible)",
        bin.join("ansible-playbook").display()
    );
    bin
}

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} missing: run scripts/test-deps (it installs Debian's {package})"
    );
}

/// Kill every descendant of `pid` (sshd's per-connection processes start
/// their own sessions, so killing the listener's group does not reach them).
fn kill_descendants(pid: u32) {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces; split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.entry(ppid).or_default().push(child);
        }
    }
    let mut stack = vec![pid];
    let mut all = Vec::new();
    while let Some(p) = stack.pop() {
        for &c in parents.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            all.push(c);
            stack.push(c);
        }
    }
    for c in all {
        let _ = Command::new("kill")
            .args(["-KILL", &c.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// One sshd: its own address, host key and config; key auth only.
pub struct Sshd {
    pub group: Option<Group>,
    pub addr: Ipv4Addr,
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Sshd {
    pub fn start(dir: &Path, addr: Ipv4Addr, port: u16, authorized_keys: &Path) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("ssh_host_ed25519_key");
        if !key.exists() {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()
                .unwrap();
            assert!(st.success(), "ssh-keygen failed");
        }
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {addr}:{port}\nHostKey {key}\nPidFile {pid}\nAuthorizedKeysFile {keys}\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nUsePAM no\n\
                 # the test's files live under /tmp, whose mode sshd's StrictModes refuses\n\
                 StrictModes no\nPrintMotd no\nMaxSessions 50\nMaxStartups 100:30:200\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n",
                key = key.display(),
                pid = dir.join("sshd.pid").display(),
                keys = authorized_keys.display(),
            ),
        )
        .unwrap();
        // The privilege separation directory a packaged sshd normally gets
        // from its service unit.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut sshd = Sshd {
            group: None,
            addr,
            port,
            config,
            log: dir.join("sshd.log"),
        };
        sshd.restart();
        sshd
    }

    pub fn restart(&mut self) {
        assert!(self.group.is_none());
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"]).arg(&self.config);
        let group = Group::spawn("sshd", cmd, self.log.clone());
        let (addr, port) = (self.addr, self.port);
        wait_for("sshd to listen", Duration::from_secs(10), || {
            TcpStream::connect((addr, port)).is_ok()
        });
        self.group = Some(group);
    }

    /// Stop the listener and every connection it serves.
    pub fn stop(&mut self) {
        if let Some(group) = self.group.take() {
            kill_descendants(group.child.id());
            drop(group);
        }
    }

    pub fn public_key(&self) -> String {
        let key = std::fs::read_to_string(self.config.with_file_name("ssh_host_ed25519_key.pub"))
            .unwrap();
        key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    pub fn known_hosts_line(&self) -> String {
        if self.port == 22 {
            format!("{} {}\n", self.addr, self.public_key())
        } else {
            format!("[{}]:{} {}\n", self.addr, self.port, self.public_key())
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback block 127.A.B.0/24 for this run (from the pid, so two test runs
/// at once do not collide) whose addresses .2 … .(n+1) are free on port 22;
/// the port falls back to 2222 when 22 is taken there.
pub fn address_block(n: usize) -> (Vec<Ipv4Addr>, u16) {
    let pid = std::process::id();
    for attempt in 0..50u32 {
        let x = pid.wrapping_add(attempt * 7919);
        let (a, b) = (((x >> 8) % 250 + 1) as u8, (x & 0xff) as u8);
        let addrs: Vec<Ipv4Addr> = (0..n)
            .map(|i| Ipv4Addr::new(127, a, b, 2 + i as u8))
            .collect();
        for port in [22, 2222] {
            if addrs
                .iter()
                .all(|&ip| TcpListener::bind((ip, port)).is_ok())
            {
                return (addrs, port);
            }
        }
    }
    panic!("no free loopback block for {n} sshd hosts");
}

/// One managed host: sshd, a release root, the services.
pub struct FleetHost {
    pub name: String,
    pub sshd: Sshd,
    pub root: PathBuf,
    pub run: PathBuf,
    pub port: u16,
    pub web: Option<Gunicorn>,
    pub worker: Option<Celery>,
}

impl FleetHost {
    pub fn release(&self, args: &[&str]) -> std::process::Output {
        release()
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn current(&self) -> String {
        let link = std::fs::read_link(self.root.join("current")).unwrap();
        link.file_name().unwrap().to_string_lossy().into_owned()
    }

    pub fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal line parses"))
            .collect()
    }

    pub fn releases(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.root.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    pub fn start_web(&mut self) {
        self.web = Some(Gunicorn::start_at(&self.root, &self.run, self.port));
    }
}

/// The hosts, the inventory and the ssh client key.
pub struct Fleet {
    pub dir: PathBuf,
    pub hosts: Vec<FleetHost>,
    pub inventory: PathBuf,
}

impl Fleet {
    /// `n` hosts with sshd running and an empty root each (no services yet).
    pub fn start(dir: &Path, n: usize) -> Fleet {
        need("/usr/sbin/sshd", "openssh-server");
        let ssh = dir.join("ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let key = ssh.join("id_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        let authorized = ssh.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).unwrap();
        let (addrs, ssh_port) = address_block(n);
        let mut hosts = Vec::new();
        let mut known = String::new();
        for (i, addr) in addrs.into_iter().enumerate() {
            let name = format!("h{}", i + 1);
            let hdir = dir.join(&name);
            let sshd = Sshd::start(&hdir.join("sshd"), addr, ssh_port, &authorized);
            known.push_str(&sshd.known_hosts_line());
            let run = hdir.join("run");
            std::fs::create_dir_all(&run).unwrap();
            hosts.push(FleetHost {
                name,
                sshd,
                root: hdir.join("srv/mysite"),
                run,
                port: free_port(),
                web: None,
                worker: None,
            });
        }
        let known_hosts = ssh.join("known_hosts");
        std::fs::write(&known_hosts, known).unwrap();
        let mut inv = String::from("[web]\n");
        for h in &hosts {
            inv.push_str(&format!(
                "{} ansible_host={} ansible_port={} release_root={}\n",
                h.name,
                h.sshd.addr,
                h.sshd.port,
                h.root.display()
            ));
        }
        inv.push_str(&format!(
            "\n[web:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n\
             ansible_ssh_private_key_file={}\n\
             ansible_ssh_common_args='-o UserKnownHostsFile={} -o IdentitiesOnly=yes'\n\
             release_bin={}\n",
            key.display(),
            known_hosts.display(),
            BIN
        ));
        let inventory = dir.join("inventory.ini");
        std::fs::write(&inventory, inv).unwrap();
        Fleet {
            dir: dir.to_path_buf(),
            hosts,
            inventory,
        }
    }

    /// Run a playbook of ansible/playbooks with extra vars (JSON) and args.
    pub fn playbook(&self, book: &str, vars: &Value, args: &[&str]) -> Played {
        self.playbook_at(
            &repo().join("ansible/playbooks").join(book),
            vars,
            args,
            &[],
        )
    }

    /// Run the playbook at `book` with extra vars, args and environment.
    pub fn playbook_at(
        &self,
        book: &Path,
        vars: &Value,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Played {
        let path = std::env::var("PATH").unwrap_or_default();
        let started = Instant::now();
        let out = Command::new(ansible_bin().join("ansible-playbook"))
            .arg("-i")
            .arg(&self.inventory)
            .arg(book)
            .arg("-e")
            .arg(vars.to_string())
            .args(args)
            .env("ANSIBLE_CONFIG", repo().join("ansible/ansible.cfg"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", self.dir.join("cp"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("ansible-tmp"))
            .env("ANSIBLE_HOME", self.dir.join("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("PATH", format!("{}:{path}", ansible_bin().display()))
            .env_remove("RELEASE_ROOT")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let seconds = started.elapsed().as_secs_f64();
        // Keep every run's output beside the hosts for a failing test's reader.
        let log = self.dir.join("playbook.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writeln!(
            f,
            "==== ansible-playbook {} {vars} {args:?} ({seconds:.1}s, {:?})\n{text}",
            book.display(),
            out.status
        )
        .unwrap();
        Played {
            code: out.status.code(),
            text,
            seconds,
        }
    }

    /// Everything that could change on a host: current, journal, releases.
    pub fn snapshot(&self) -> Vec<(String, usize, Vec<String>)> {
        self.hosts
            .iter()
            .map(|h| (h.current(), h.journal().len(), h.releases()))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.worker = None;
            h.web = None;
            h.sshd.stop();
        }
    }
}

pub struct Played {
    pub code: Option<i32>,
    pub text: String,
    pub seconds: f64,
}

impl Played {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "playbook failed:\n{}", self.text);
        self
    }

    /// ansible-playbook's exit 2 (a host failed) or 4 (a host unreachable).
    pub fn failed(&self) -> &Self {
        assert!(
            matches!(self.code, Some(2) | Some(4)),
            "playbook should have failed (exit 2 or 4), got {:?}:\n{}",
            self.code,
            self.text
        );
        self
    }

    /// PLAY RECAP: host -> (ok, changed, unreachable, failed).
    pub fn recap(&self) -> BTreeMap<String, [u32; 4]> {
        let mut out = BTreeMap::new();
        let Some(recap) = self.text.split("PLAY RECAP").nth(1) else {
            return out;
        };
        for line in recap.lines() {
            let Some((host, rest)) = line.split_once(" : ") else {
                continue;
            };
            let field = |k: &str| -> u32 {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            out.insert(
                host.trim().to_string(),
                [
                    field("ok"),
                    field("changed"),
                    field("unreachable"),
                    field("failed"),
                ],
            );
        }
        out
    }

    pub fn contains(&self, s: &str) -> bool {
        self.text.contains(s)
    }

    /// The lines of the playbook's summary table (HOST BEFORE AFTER OUTCOME).
    pub fn summary(&self) -> Vec<String> {
        let Some(start) = self.text.rfind("\"HOST  ") else {
            return Vec::new();
        };
        self.text[start..]
            .lines()
            .take_while(|l| !l.trim_start().starts_with(']'))
            .map(|l| l.trim().trim_end_matches(',').trim_matches('"').to_string())
            .collect()
    }
}

/// nginx in front of the gunicorns, on 127.0.0.1.
pub struct Nginx {
    _group: Group,
    pub port: u16,
}

impl Nginx {
    /// Balance `upstreams` on `/`; with `files`, also serve that directory
    /// as `/files/` (an artifact store for `release_artifact` URLs).
    pub fn start(dir: &Path, upstreams: &[u16], files: Option<&Path>) -> Nginx {
        need("/usr/sbin/nginx", "nginx");
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let files = files
            .map(|f| {
                format!(
                    "location /files/ {{\n      alias {}/;\n    }}\n    ",
                    f.display()
                )
            })
            .unwrap_or_default();
        let conf = dir.join("nginx.conf");
        let t = dir.join("tmp").display().to_string();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n\
                 client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n\
                 uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
                 upstream app {{\n{servers}  }}\n\
                 server {{\n    listen 127.0.0.1:{port};\n    {files}\
                 location / {{\n      proxy_pass http://app;\n      proxy_set_header Host 127.0.0.1;\n\
                 proxy_next_upstream error timeout;\n      proxy_connect_timeout 2s;\n    }}\n  }}\n}}\n",
                d = dir.display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/nginx");
        cmd.arg("-p").arg(&dir).arg("-c").arg(&conf);
        let group = Group::spawn("nginx", cmd, dir.join("nginx.out"));
        wait_for("nginx to serve", Duration::from_secs(10), || {
            get(port, "/healthz", false).is_ok_and(|(s, _)| s == 200)
        });
        Nginx {
            _group: group,
            port,
        }
    }
}

/// A tmpfs for the hosts' files, unmounted on drop (after every process
/// using it is gone). Removing five hosts' release trees (some 200,000
/// files) from the test machine's disk took a minute; from a tmpfs it takes
/// none.
pub struct TmpfsMount(pub PathBuf);

impl TmpfsMount {
    pub fn at(path: PathBuf) -> TmpfsMount {
        std::fs::create_dir_all(&path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs on {} failed", path.display());
        TmpfsMount(path)
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

fn failed_requests(r: &LoadReport) -> u64 {
    r.server_errors + r.other_status + r.connection_errors
}

fn config(h: &FleetHost, redis: Option<&str>) -> String {
    let web = h.web.as_ref().unwrap();
    let mut text = format!(
        "keep = 4\n\n[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"gunicorn-upgrade\"\ntimeout = \"60s\"\n",
        web.pidfile.display()
    );
    if redis.is_some() {
        text.push_str(&format!(
            "\n[[service]]\nname = \"worker\"\npidfile = \"{}\"\nreload = \"hup\"\ntimeout = \"60s\"\n",
            h.run.join("celery.pid").display()
        ));
    }
    // 45 s: a gunicorn upgrade on this 2-core machine, while other test
    // suites run beside this one, was seen to need more than 10 s. (The bad
    // release of scenario (b) makes the canary wait for all of it.)
    text.push_str(&format!(
        "\n[health]\nurl = \"{}\"\nexpect = \"{{release}}\"\ntimeout = \"45s\"\n",
        web.url("/healthz")
    ));
    text
}

/// Which hosts' journals mention `commit12` with one of `events`.
fn mentions(fleet: &Fleet, commit12: &str, events: &[&str]) -> Vec<String> {
    fleet
        .hosts
        .iter()
        .filter(|h| {
            h.journal().iter().any(|e| {
                e["release"].as_str().unwrap_or("").starts_with(commit12)
                    && events.contains(&e["event"].as_str().unwrap_or(""))
            })
        })
        .map(|h| h.name.clone())
        .collect()
}

fn currents(fleet: &Fleet) -> Vec<String> {
    fleet
        .hosts
        .iter()
        .map(|h| h.current()[..12].to_string())
        .collect()
}

#[test]
fn fleet_deploys_canary_batches_and_rollbacks_over_ssh() {
    if !running_as_root("the fleet test (sshd on loopback addresses, logging in as root)") {
        return;
    }
    let started = Instant::now();
    let app = App::new();
    let dir = app.tmp.path().to_path_buf();
    let dist = dir.join("dist");

    // The releases: A (the fixture), B (a code change), C (B with a health
    // endpoint that answers 500).
    let a = app.build_ok(&dist, &[]);
    let a12 = app.head()[..12].to_string();
    app.write("mysite/extra.py", "X = 2\n");
    app.commit("release B");
    // B with a delta against A: the good rollout (a) ships the delta.
    let b = app.build_ok(&dist, &["--delta-from", a.to_str().unwrap()]);
    let b12 = app.head()[..12].to_string();
    let b_delta = dist.join(format!("mysite-{b12}.delta-{a12}.tar.zst"));
    assert!(b_delta.is_file(), "no delta {}", b_delta.display());
    let views = std::fs::read_to_string(app.path("mysite/views.py")).unwrap();
    app.write(
        "mysite/views.py",
        &views.replace(
            "    return HttpResponse(RELEASE_ID, content_type=\"text/plain; charset=utf-8\")",
            "    return HttpResponse(RELEASE_ID, status=500, content_type=\"text/plain; charset=utf-8\")",
        ),
    );
    app.commit("release C: healthz answers 500");
    let c_commit = app.head();
    let c12 = c_commit[..12].to_string();
    // D: one more commit, only to be the base of C's delta. Scenario (b)
    // stages D on two hosts first, so the run ships C's delta to those two
    // and the full C to the hosts without D.
    app.write("mysite/extra.py", "X = 3\n");
    app.commit("release D");
    let d = app.build_ok(&dist, &[]);
    let d12 = app.head()[..12].to_string();
    let c = app.build_ok(
        &dist,
        &["--commit", &c_commit, "--delta-from", d.to_str().unwrap()],
    );
    let c_delta = dist.join(format!("mysite-{c12}.delta-{d12}.tar.zst"));
    assert!(c_delta.is_file(), "no delta {}", c_delta.display());
    eprintln!(
        "fleet: built A {a12}, B {b12}, C {c12}, D {d12} in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Five hosts, each with A live (installed by hand, as on a provisioned
    // host), its own gunicorn through `current`; h1 also runs celery.
    let hosts_dir = TmpfsMount::at(dir.join("hosts"));
    let mut fleet = Fleet::start(&hosts_dir.0, HOSTS);
    let redis = Redis::start(&dir);
    for h in &mut fleet.hosts {
        json_ok(&h.release(&["--json", "install", a.to_str().unwrap()]));
        json_ok(&h.release(&["--json", "activate", &a12]));
        h.start_web();
    }
    fleet.hosts[0].worker = Some(Celery::start(
        &fleet.hosts[0].root,
        &fleet.hosts[0].run,
        &redis.url(),
    ));
    for (i, h) in fleet.hosts.iter().enumerate() {
        let text = config(h, (i == 0).then(|| redis.url()).as_deref());
        std::fs::write(h.root.join("release.toml"), text).unwrap();
    }
    let nginx = Nginx::start(
        &dir,
        &fleet.hosts.iter().map(|h| h.port).collect::<Vec<_>>(),
        Some(&dist),
    );
    let check_url = format!("http://127.0.0.1:{}/healthz", nginx.port);
    let sink = Sink::start();
    let base = |artifact: &Path| {
        json!({
            "release_artifact": artifact,
            "release_check_url": check_url,
            "release_notify_url": sink.url(),
            "release_lock_wait": 30,
        })
    };
    let url_of = |artifact: &Path| {
        format!(
            "http://127.0.0.1:{}/files/{}",
            nginx.port,
            artifact.file_name().unwrap().to_string_lossy()
        )
    };
    let by_url = |artifact: &Path| {
        let mut vars = base(artifact);
        vars["release_artifact"] = json!(url_of(artifact));
        vars
    };
    eprintln!(
        "fleet: {HOSTS} hosts up at {:?} (ssh port {}) in {:.1}s",
        fleet.hosts.iter().map(|h| h.sshd.addr).collect::<Vec<_>>(),
        fleet.hosts[0].sshd.port,
        started.elapsed().as_secs_f64()
    );
    let mut load = Load::start(nginx.port, 4, Duration::from_millis(20));
    let window = |name: &str, load: &mut Load, zero: bool| {
        let report =
            std::mem::replace(load, Load::start(nginx.port, 4, Duration::from_millis(20))).stop();
        eprintln!(
            "fleet ({name}): {} requests through nginx, failed {} (5xx {}, other {}, connection {}); bodies {:?}",
            report.ok + failed_requests(&report),
            failed_requests(&report),
            report.server_errors,
            report.other_status,
            report.connection_errors,
            report.bodies
        );
        if zero {
            assert_eq!(
                failed_requests(&report),
                0,
                "({name}) failed requests: {:?}",
                report.errors
            );
        }
        assert!(report.ok > 0, "({name}) no request got through nginx");
        report
    };

    // (g) --check: says what it would do, changes nothing anywhere.
    let before = fleet.snapshot();
    let run = fleet.playbook("deploy.yml", &base(&b), &["--check", "--diff"]);
    run.ok();
    assert_eq!(
        fleet.snapshot(),
        before,
        "--check changed a host:\n{}",
        run.text
    );
    assert!(run.contains("would install and activate"), "{}", run.text);
    for h in &fleet.hosts {
        assert!(!h
            .root
            .join("incoming")
            .join(b.file_name().unwrap())
            .exists());
    }
    assert!(sink.bodies.lock().unwrap().is_empty(), "--check notified");
    eprintln!("fleet (g): --check changed nothing ({:.1}s)", run.seconds);
    window("g", &mut load, true);

    // (a) a good rollout, with a release phase run once before any switch.
    let phase_log = dir.join("phase.log");
    let roots: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| h.root.display().to_string())
        .collect();
    let phase = format!(
        "python -c 'import mysite.settings, os; print(os.environ[\"RELEASE_ID\"])' >> {log} && for r in {roots}; do readlink $r/current >> {log}; done",
        log = phase_log.display(),
        roots = roots.join(" ")
    );
    // Every host has A, the delta's base: each gets the delta, not B.
    let mut vars = base(&b);
    vars["release_delta"] = json!(b_delta);
    vars["release_phase"] = json!(phase);
    vars["release_canary_pause"] = json!(2);
    let run = fleet.playbook("deploy.yml", &vars, &[]);
    run.ok();
    for h in &fleet.hosts {
        assert_eq!(h.current()[..12], b12, "{} not on B:\n{}", h.name, run.text);
        let web = h.web.as_ref().unwrap();
        assert_eq!(web.get("/healthz").1, b12, "{} does not serve B", h.name);
        let activations = h
            .journal()
            .iter()
            .filter(|e| {
                e["event"] == "activated" && e["release"].as_str().unwrap().starts_with(&b12)
            })
            .count();
        assert_eq!(
            activations, 1,
            "{}: B activated {activations} times",
            h.name
        );
    }
    let status = json_ok(&fleet.hosts[0].release(&["status", "--json"]));
    for service in status["services"].as_array().unwrap() {
        assert_eq!(service["alive"], true, "{service}");
        assert_eq!(service["stale"], false, "{service}");
    }
    // The phase ran once, in B, while every host still ran A.
    let phase_out = std::fs::read_to_string(&phase_log).unwrap();
    let lines: Vec<&str> = phase_out.lines().collect();
    assert_eq!(
        lines.len(),
        1 + HOSTS,
        "phase ran more than once: {phase_out}"
    );
    assert!(lines[0].starts_with(&b12), "{phase_out}");
    assert!(
        lines[1..].iter().all(|l| l.contains(&a12)),
        "phase ran after a switch: {phase_out}"
    );
    let summary = run.summary();
    assert_eq!(summary.len(), 1 + HOSTS, "{}", run.text);
    assert!(
        summary[1..].iter().all(|l| l.ends_with("activated")),
        "{summary:?}"
    );
    let bodies = sink.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies.len(),
        1,
        "one notification per fleet deploy: {bodies:?}"
    );
    let note: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(note["event"], "fleet_deployed");
    assert_eq!(note["hosts"].as_array().unwrap().len(), HOSTS);
    eprintln!(
        "fleet (a): good rollout in {:.1}s:\n  {}",
        run.seconds,
        summary.join("\n  ")
    );
    let report = window("a", &mut load, true);
    assert!(report.bodies.contains_key(&b12), "{:?}", report.bodies);
    for h in &fleet.hosts {
        let incoming = h.root.join("incoming");
        assert!(incoming.join(b_delta.file_name().unwrap()).is_file());
        assert!(!incoming.join(b.file_name().unwrap()).exists());
        let installed = h
            .journal()
            .into_iter()
            .find(|e| e["event"] == "installed" && e["release"].as_str().unwrap().starts_with(&b12))
            .unwrap();
        let id = installed["release"].as_str().unwrap();
        assert!(
            h.release(&["verify", id]).status.success(),
            "{}: B from the delta does not verify",
            h.name
        );
    }

    // (e) the same deploy again: no change, no journal line. This time from
    // a URL (nginx serves dist/): each host would download it itself, and
    // finds the copy it already has matches the .sha256 beside the URL.
    let before = fleet.snapshot();
    let mut vars = by_url(&b);
    vars["release_delta"] = json!(url_of(&b_delta));
    let run = fleet.playbook("deploy.yml", &vars, &[]);
    run.ok();
    assert_eq!(fleet.snapshot(), before, "a repeated deploy changed a host");
    let recap = run.recap();
    assert_eq!(recap.len(), HOSTS, "{}", run.text);
    for (host, [_, changed, unreachable, failed]) in &recap {
        assert_eq!(
            (*changed, *unreachable, *failed),
            (0, 0, 0),
            "{host}:\n{}",
            run.text
        );
    }
    assert_eq!(
        sink.bodies.lock().unwrap().len(),
        1,
        "a no-op deploy notified"
    );
    eprintln!(
        "fleet (e): the same deploy again changed nothing ({:.1}s)",
        run.seconds
    );
    // (g) again, with the artifact (B's delta) on the hosts: check mode
    // runs the binary's install --dry-run and activate --dry-run.
    let mut vars = base(&b);
    vars["release_delta"] = json!(b_delta);
    let run = fleet.playbook("deploy.yml", &vars, &["--check", "--diff"]);
    run.ok();
    assert_eq!(fleet.snapshot(), before, "--check changed a host");
    assert!(
        run.summary()[1..]
            .iter()
            .all(|l| l.ends_with("already current")),
        "{}",
        run.text
    );
    for (host, [_, changed, ..]) in &run.recap() {
        assert_eq!(*changed, 0, "{host}:\n{}", run.text);
    }
    window("e", &mut load, true);

    // (f) rollback.yml: refused when a host lacks the target; back to each
    // host's previous (A); then to a named release (B).
    json_ok(&fleet.hosts[1].release(&["--json", "install", c.to_str().unwrap()]));
    let before = fleet.snapshot();
    let run = fleet.playbook("rollback.yml", &json!({"release_id": c12}), &[]);
    run.failed();
    assert_eq!(
        fleet.snapshot(),
        before,
        "a refused rollback changed a host"
    );
    for h in ["h1", "h3", "h4", "h5"] {
        assert!(
            run.contains(&format!("{h}: has no release {c12} installed")),
            "{}",
            run.text
        );
    }
    assert!(!run.contains("h2: has no release"), "{}", run.text);
    let run = fleet.playbook("rollback.yml", &json!({}), &["--check", "--diff"]);
    run.ok();
    assert_eq!(
        fleet.snapshot(),
        before,
        "rollback.yml --check changed a host"
    );
    let summary = run.summary();
    assert!(
        summary[1..]
            .iter()
            .all(|l| l.ends_with("would roll back") && l.contains(&a12)),
        "{}",
        run.text
    );
    let run = fleet.playbook("rollback.yml", &json!({}), &[]);
    run.ok();
    assert_eq!(currents(&fleet), vec![a12.clone(); HOSTS], "{}", run.text);
    let run2 = fleet.playbook("rollback.yml", &json!({"release_id": b12}), &[]);
    run2.ok();
    assert_eq!(currents(&fleet), vec![b12.clone(); HOSTS], "{}", run2.text);
    for h in &fleet.hosts {
        assert_eq!(h.web.as_ref().unwrap().get("/healthz").1, b12);
    }
    eprintln!(
        "fleet (f): refused, then back to A ({:.1}s), then to B by id ({:.1}s)",
        run.seconds, run2.seconds
    );
    window("f", &mut load, true);

    // (b) a release that fails its health check: only the canary tried it,
    // it switched back by itself, the fleet stays on B. C comes with its
    // delta against D, which only h1 and h3 have: they get the delta, the
    // others the full artifact. The canary's health timeout is 10 s here
    // (the 45 s in `config` is for upgrades that must succeed on a loaded
    // machine; C fails its check either way, so the wait proves nothing).
    for h in [&fleet.hosts[0], &fleet.hosts[2]] {
        json_ok(&h.release(&["--json", "install", d.to_str().unwrap()]));
    }
    let h1_toml = fleet.hosts[0].root.join("release.toml");
    let h1_config = std::fs::read_to_string(&h1_toml).unwrap();
    std::fs::write(
        &h1_toml,
        h1_config.replace("timeout = \"45s\"", "timeout = \"10s\""),
    )
    .unwrap();
    let mut vars = base(&c);
    vars["release_delta"] = json!(c_delta);
    let run = fleet.playbook("deploy.yml", &vars, &[]);
    std::fs::write(&h1_toml, &h1_config).unwrap();
    run.failed();
    for (i, h) in fleet.hosts.iter().enumerate() {
        let incoming = h.root.join("incoming");
        let got_delta = incoming.join(c_delta.file_name().unwrap()).is_file();
        let got_full = incoming.join(c.file_name().unwrap()).is_file();
        if i == 0 || i == 2 {
            assert!(
                got_delta && !got_full,
                "{}: has D, must get C's delta only:\n{}",
                h.name,
                run.text
            );
        } else {
            assert!(
                got_full && !got_delta,
                "{}: lacks D, must get the full C only:\n{}",
                h.name,
                run.text
            );
        }
    }
    assert_eq!(currents(&fleet), vec![b12.clone(); HOSTS], "{}", run.text);
    assert_eq!(
        mentions(&fleet, &c12, &["activated", "failed"]),
        vec!["h1"],
        "{}",
        run.text
    );
    let h1 = fleet.hosts[0].journal();
    let failed = h1.iter().rev().find(|e| e["event"] == "failed").unwrap();
    assert_eq!(failed["reverted"], true, "{failed}");
    assert!(
        run.summary()
            .iter()
            .any(|l| l.starts_with("h1") && l.contains("exit 3")),
        "{}",
        run.text
    );
    assert_eq!(
        mentions(&fleet, &c12, &["installed"]).len(),
        HOSTS,
        "C staged everywhere"
    );
    let note: Value = serde_json::from_str(sink.bodies.lock().unwrap().last().unwrap()).unwrap();
    assert_eq!(note["event"], "fleet_failed");
    eprintln!(
        "fleet (b): bad release stopped at the canary ({:.1}s):\n  {}",
        run.seconds,
        run.summary().join("\n  ")
    );
    window("b", &mut load, false);

    // (c) h5's service is down when the last batch reaches it: every host
    // this run switched goes back to B, h5 is untouched.
    fleet.hosts[4].web = None;
    let h5_before = (fleet.hosts[4].current(), fleet.hosts[4].releases());
    // A from a URL: every host downloads it (checked against the .sha256
    // beside it), finds it installed, and activates it.
    let run = fleet.playbook("deploy.yml", &by_url(&a), &[]);
    run.failed();
    assert_eq!(currents(&fleet), vec![b12.clone(); HOSTS], "{}", run.text);
    for h in &fleet.hosts[..4] {
        let j = h.journal();
        let last: Vec<&str> = j[j.len() - 2..]
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(last, ["activated", "rolled_back"], "{}: {j:?}", h.name);
        assert!(j[j.len() - 1]["release"]
            .as_str()
            .unwrap()
            .starts_with(&b12));
    }
    let h5 = &fleet.hosts[4];
    assert_eq!((h5.current(), h5.releases()), h5_before);
    assert!(!h5.journal().iter().any(|e| e["event"] == "activated"
        && e["release"].as_str().unwrap().starts_with(&a12)
        && e["from"].as_str().is_some_and(|f| f.starts_with(&b12))));
    let summary = run.summary();
    assert!(
        summary
            .iter()
            .filter(|l| l.contains(&format!("rolled back (had switched to {a12}")))
            .count()
            == 4,
        "{summary:?}"
    );
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("h5") && l.contains("nothing changed (exit 1)")),
        "{summary:?}"
    );
    eprintln!(
        "fleet (c): service down in the last batch, fleet back on B ({:.1}s):\n  {}",
        run.seconds,
        summary.join("\n  ")
    );
    fleet.hosts[4].start_web();
    window("c", &mut load, true);

    // Preflight: another command holds h3's lock (read from /proc/locks,
    // without taking it), and h2 runs another version of release: the run
    // stops before touching anything, naming both.
    let other = dir.join("release-0.0.1");
    std::fs::write(
        &other,
        format!("#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'release 0.0.1'; exit 0; }}\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let host_vars = fleet.inventory.with_file_name("host_vars");
    std::fs::create_dir_all(&host_vars).unwrap();
    std::fs::write(
        host_vars.join("h2.yml"),
        format!("release_bin: {}\n", other.display()),
    )
    .unwrap();
    let mut holder = Command::new("flock")
        .arg(fleet.hosts[2].root.join(".lock"))
        .args(["sleep", "120"])
        .process_group(0)
        .spawn()
        .unwrap();
    let before = fleet.snapshot();
    let run = fleet.playbook("deploy.yml", &base(&a), &[]);
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", holder.id())])
        .status();
    let _ = holder.wait();
    run.failed();
    std::fs::remove_dir_all(&host_vars).unwrap();
    assert!(
        run.contains("h3: the root is locked by pid"),
        "{}",
        run.text
    );
    assert!(
        run.contains("release versions differ") && run.contains("h2=0.0.1"),
        "{}",
        run.text
    );
    assert_eq!(fleet.snapshot(), before, "{}", run.text);

    // (d) h4 unreachable: preflight refuses; and with preflight skipped, the
    // stage stops the run. Nothing live changes either way.
    fleet.hosts[3].sshd.stop();
    let before = fleet.snapshot();
    let run = fleet.playbook("deploy.yml", &base(&a), &[]);
    run.failed();
    assert!(
        run.contains("preflight failed; nothing changed anywhere"),
        "{}",
        run.text
    );
    assert!(run.contains("h4: unreachable"), "{}", run.text);
    assert_eq!(fleet.snapshot(), before, "{}", run.text);
    let run = fleet.playbook("deploy.yml", &base(&a), &["--skip-tags", "preflight"]);
    run.failed();
    assert!(
        run.contains("stage failed on h4; nothing live changed anywhere"),
        "{}",
        run.text
    );
    assert_eq!(currents(&fleet), vec![b12.clone(); HOSTS], "{}", run.text);
    for (h, (current, lines, _)) in fleet.hosts.iter().zip(&before) {
        assert_eq!(&h.current(), current);
        let new: Vec<Value> = h.journal()[*lines..].to_vec();
        assert!(
            new.iter().all(|e| e["event"] == "installed"),
            "{}: {new:?}",
            h.name
        );
    }
    fleet.hosts[3].sshd.restart();
    eprintln!(
        "fleet (d): unreachable host stopped the run before any switch ({:.1}s)",
        run.seconds
    );
    window("d", &mut load, true);

    load.stop();
    eprintln!(
        "fleet: all scenarios in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
