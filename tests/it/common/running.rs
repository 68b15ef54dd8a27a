//! Real running services for the reload tests: redis-server, gunicorn and celery
//! started on 127.0.0.1 from an installed release, a load generator, and a
//! small HTTP sink for deploy notifications. Everything started here is
//! stopped when its guard drops (the whole process group is killed).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A started process group, killed on drop.
pub struct Group {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Group {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Group {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Group {
            child,
            name: name.into(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // The group outlives its leader (gunicorn's new master, celery's pool).
        unsafe_free_kill(-pgid, "TERM");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && group_alive(pgid) {
            let _ = self.child.try_wait();
            sleep(Duration::from_millis(50));
        }
        unsafe_free_kill(-pgid, "KILL");
        let _ = self.child.wait();
    }
}

fn unsafe_free_kill(target: i32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(target.to_string())
        .stderr(Stdio::null())
        .status();
}

fn group_alive(pgid: i32) -> bool {
    Command::new("kill")
        .args(["-0", "--"])
        .arg((-pgid).to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        sleep(Duration::from_millis(50));
    }
}

pub struct Redis {
    pub group: Group,
    pub port: u16,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir);
        let group = Group::spawn("redis", cmd, dir.join("redis.log"));
        wait_for("redis", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port))
                .and_then(|mut s| {
                    s.write_all(b"PING\r\n")?;
                    let mut buf = [0u8; 7];
                    s.read_exact(&mut buf)?;
                    Ok(&buf == b"+PONG\r\n")
                })
                .unwrap_or(false)
        });
        Redis { group, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// What `release init --wsgi … --celery … --run-dir RUN --bind
/// 127.0.0.1:PORT --json` reports for `root`: the services with their launch
/// lines and systemd units. The tests start gunicorn and celery with exactly
/// these lines (one source of truth with the units). A release.toml this
/// writes is removed again: the tests write their own.
pub fn init_services(root: &Path, run_dir: &Path, port: u16) -> serde_json::Value {
    let out = crate::common::release()
        .arg("--root")
        .arg(root)
        .args(["init", "--json", "--wsgi", "mysite.wsgi:application"])
        .args(["--celery", "mysite", "--run-dir"])
        .arg(run_dir)
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let report = crate::common::json_ok(&out);
    if report["config_written"] == true {
        std::fs::remove_file(root.join("release.toml")).unwrap();
    }
    report
}

/// The launch line of service `name` in an [`init_services`] report.
pub fn launch_line(report: &serde_json::Value, name: &str) -> String {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["launch"].as_str())
        .unwrap_or_else(|| panic!("no {name} service in {report}"))
        .to_string()
}

/// Run a launch line with /bin/sh, in a process group of its own, without a
/// terminal (as under systemd), its output to `log`.
pub fn spawn_launch(name: &str, line: &str, env: &[(&str, &str)], log: PathBuf) -> Group {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(line).current_dir("/");
    for (key, value) in env {
        cmd.env(key, value);
    }
    Group::spawn(name, cmd, log)
}

/// gunicorn started with the launch line `release init` generates: through
/// `current`, with --chdir through `current`, from `current/app` as its
/// (logical) working directory.
pub struct Gunicorn {
    pub group: Group,
    pub port: u16,
    pub pidfile: PathBuf,
}

impl Gunicorn {
    pub fn start(root: &Path, run_dir: &Path) -> Gunicorn {
        Gunicorn::start_at(root, run_dir, free_port())
    }

    /// As `start`, on a given port (a restarted host keeps its address).
    pub fn start_at(root: &Path, run_dir: &Path, port: u16) -> Gunicorn {
        let line = launch_line(&init_services(root, run_dir, port), "web");
        Gunicorn::from_launch(&line, run_dir, port)
    }

    /// Start gunicorn with `line` (a generated launch line whose pidfile is
    /// `run_dir/gunicorn.pid` and which binds `port`) and wait until it serves.
    pub fn from_launch(line: &str, run_dir: &Path, port: u16) -> Gunicorn {
        Gunicorn::from_launch_ready(line, run_dir, port, "/healthz")
    }

    /// As [`Gunicorn::from_launch`], ready once `ready_path` answers 200.
    pub fn from_launch_ready(line: &str, run_dir: &Path, port: u16, ready_path: &str) -> Gunicorn {
        let group = spawn_launch("gunicorn", line, &[], run_dir.join("gunicorn.log"));
        let g = Gunicorn {
            group,
            port,
            pidfile: run_dir.join("gunicorn.pid"),
        };
        wait_for("gunicorn to serve", Duration::from_secs(30), || {
            get(g.port, ready_path, false).is_ok_and(|(s, _)| s == 200)
        });
        g
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.port, path, false).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// One HTTP/1.1 GET on a fresh connection.
pub fn get(port: u16, path: &str, _keep: bool) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut conn = Conn {
        reader: BufReader::new(stream),
    };
    conn.request(path, false)
        .map(|(status, body, _)| (status, body))
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Send a GET and read the response; returns (status, body, closed). With
    /// `keep_alive` false the request asks the server to close.
    fn request(&mut self, path: &str, keep_alive: bool) -> std::io::Result<(u16, String, bool)> {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before any response",
            ));
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let mut close = false;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = Vec::new();
        match length {
            Some(n) => {
                body.resize(n, 0);
                self.reader.read_exact(&mut body)?;
            }
            None => {
                self.reader.read_to_end(&mut body)?;
                close = true;
            }
        }
        if close {
            self.reader
                .get_mut()
                .shutdown(std::net::Shutdown::Both)
                .ok();
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
    }
}

/// Counts from a load run.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub server_errors: u64,
    pub other_status: u64,
    pub connection_errors: u64,
    pub retried: u64,
    pub errors: Vec<String>,
    /// Distinct bodies seen (release ids), with counts.
    pub bodies: std::collections::BTreeMap<String, u64>,
}

/// Continuous GET /healthz load from several threads until stopped: half the
/// clients open a connection per request, half keep connections alive. A
/// request sent on a reused keep-alive connection that gets no response byte
/// at all is retried once on a new connection, as HTTP clients do for
/// idempotent requests (RFC 9112 §9.3.1); anything else is an error.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
    pub sent: Arc<AtomicU64>,
}

impl Load {
    pub fn start(port: u16, clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let stop = stop.clone();
                let sent = sent.clone();
                let keep_alive = i % 2 == 1;
                std::thread::spawn(move || client(port, keep_alive, pause, &stop, &sent))
            })
            .collect();
        Load {
            stop,
            threads,
            sent,
        }
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().unwrap();
            total.ok += r.ok;
            total.server_errors += r.server_errors;
            total.other_status += r.other_status;
            total.connection_errors += r.connection_errors;
            total.retried += r.retried;
            total.errors.extend(r.errors);
            for (b, n) in r.bodies {
                *total.bodies.entry(b).or_default() += n;
            }
        }
        total
    }
}

fn client(
    port: u16,
    keep_alive: bool,
    pause: Duration,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut conn: Option<Conn> = None;
    let connect = || -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    };
    while !stop.load(Ordering::SeqCst) {
        sent.fetch_add(1, Ordering::Relaxed);
        let reused = conn.is_some();
        let attempt = |conn: &mut Option<Conn>| -> std::io::Result<(u16, String)> {
            if conn.is_none() {
                *conn = Some(connect()?);
            }
            match conn.as_mut().unwrap().request("/healthz", keep_alive) {
                Ok((status, body, closed)) => {
                    if closed {
                        *conn = None;
                    }
                    Ok((status, body))
                }
                Err(e) => {
                    *conn = None;
                    Err(e)
                }
            }
        };
        let mut result = attempt(&mut conn);
        if let Err(e) = &result {
            let no_response = e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.kind() == std::io::ErrorKind::ConnectionReset
                || e.kind() == std::io::ErrorKind::BrokenPipe;
            if reused && keep_alive && no_response {
                report.retried += 1;
                result = attempt(&mut conn);
            }
        }
        match result {
            Ok((200, body)) => {
                report.ok += 1;
                *report.bodies.entry(body).or_default() += 1;
            }
            Ok((status, body)) if status >= 500 => {
                report.server_errors += 1;
                if report.errors.len() < 20 {
                    report.errors.push(format!(
                        "{status}: {}",
                        body.chars().take(200).collect::<String>()
                    ));
                }
            }
            Ok((status, _)) => {
                report.other_status += 1;
                if report.errors.len() < 20 {
                    report.errors.push(format!("status {status}"));
                }
            }
            Err(e) => {
                report.connection_errors += 1;
                if report.errors.len() < 20 {
                    report.errors.push(format!("connection: {e}"));
                }
            }
        }
        if !keep_alive {
            conn = None;
        }
        sleep(pause);
    }
    report
}

/// celery worker started without a tty with the launch line `release init`
/// generates (through `current/venv/...`, `--workdir` through `current`).
pub struct Celery {
    pub group: Group,
    pub pidfile: PathBuf,
}

impl Celery {
    pub fn start(root: &Path, run_dir: &Path, broker: &str) -> Celery {
        let line = launch_line(&init_services(root, run_dir, free_port()), "worker");
        Celery::from_launch(&line, run_dir, broker)
    }

    /// Start celery with `line` (pidfile `run_dir/celery.pid`) and the broker
    /// in its environment, and wait until it is ready.
    pub fn from_launch(line: &str, run_dir: &Path, broker: &str) -> Celery {
        let env = [("CELERY_BROKER_URL", broker), ("C_FORCE_ROOT", "1")];
        let group = spawn_launch("celery", line, &env, run_dir.join("celery.log"));
        let c = Celery {
            group,
            pidfile: run_dir.join("celery.pid"),
        };
        wait_for("celery to be ready", Duration::from_secs(60), || {
            c.group.log_text().contains("ready.")
        });
        c
    }
}

/// Run a celery task through the release's own venv; returns its JSON result.
pub fn send_task(root: &Path, broker: &str, expr: &str, wait: bool) -> Option<Child> {
    let code = format!(
        "import json, mysite.tasks as t\nr = {expr}\nprint(json.dumps(r.get(timeout=120)) if {} else r.id, flush=True)\n",
        if wait { "True" } else { "False" }
    );
    let child = Command::new(root.join("current/venv/bin/python"))
        .args(["-c", &code])
        .current_dir(root.join("current/app"))
        .env("CELERY_BROKER_URL", broker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Some(child)
}

/// A tiny HTTP server that records the bodies POSTed to it.
pub struct Sink {
    pub port: u16,
    pub bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).ok();
                        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        let mut reader = BufReader::new(stream);
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                break;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if line.trim_end().is_empty() {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_ok() {
                            b.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                        }
                        let _ = reader
                            .get_mut()
                            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                    }
                    Err(_) => sleep(Duration::from_millis(20)),
                }
            }
        });
        Sink { port, bodies, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/deploys", self.port)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
