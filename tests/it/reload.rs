//! Graceful reloads of real gunicorn and celery through `current`, health
//! checks, automatic rollback, notifications and pidfile problems.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::root::Root;
use crate::common::running::*;
use crate::common::*;

/// A host root with releases installed from the fixture app, and a run
/// directory for the services' pidfiles.
struct Host {
    app: App,
    root: Root,
    run: PathBuf,
}

impl Host {
    fn new() -> Host {
        let app = App::new();
        let root = Root::at(app.tmp.path().join("srv/mysite"));
        let run = app.tmp.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        Host { app, root, run }
    }

    /// Build the app's HEAD and install it; returns (release dir id, commit12).
    fn install_head(&self) -> (String, String) {
        let artifact = self.app.build_ok(&self.app.tmp.path().join("dist"), &[]);
        let id = self.root.install(&artifact);
        (id, self.app.head()[..12].to_string())
    }

    fn current(&self) -> String {
        self.root.current().expect("a current release")
    }

    fn status(&self) -> Value {
        self.root.json(&["status"])
    }
}

fn web_config(g: &Gunicorn, reload: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"{reload}\"\ntimeout = \"60s\"\n\n[health]\nurl = \"{}\"\nexpect = \"{{release}}\"\ntimeout = \"30s\"\n{extra}",
        g.pidfile.display(),
        g.url("/healthz"),
    )
}

/// Install A (the fixture) and B (a code change), activate A.
fn two_releases(host: &Host) -> ((String, String), (String, String)) {
    let a = host.install_head();
    host.app.write("mysite/extra.py", "X = 2\n");
    host.app.commit("release B");
    let b = host.install_head();
    host.root.ok(&["activate", &a.0]);
    (a, b)
}

#[test]
fn gunicorn_under_load_through_10_switches_drops_nothing() {
    let host = Host::new();
    let (a, b) = two_releases(&host);
    // Sync workers (gunicorn's default): a worker told to stop gracefully
    // finishes the request it has and accepts no more, so nothing is dropped.
    // They answer keep-alive requests with `Connection: close`, which the
    // keep-alive clients follow. (gthread workers were measured to reset
    // connections they had accepted but not served when they stop: see the
    // README.)
    let g = Gunicorn::start(&host.root.path, &host.run);
    host.root.write_config(&web_config(&g, "hup", ""));
    assert_eq!(g.get("/healthz").1, a.1);

    let load = Load::start(g.port, 8, Duration::from_millis(20));
    let started = Instant::now();
    let mut switch_times = Vec::new();
    // Ten switches: each one waits for gunicorn to replace its workers and
    // for the health check, which is where this test spends its time.
    for round in 0..5 {
        let t = Instant::now();
        host.root.ok(&["activate", &b.0]);
        switch_times.push(t.elapsed());
        // activate returns once the health check saw B; every request now hits B.
        assert_eq!(
            g.get("/healthz").1,
            b.1,
            "round {round}: B not serving after activate"
        );
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        host.root.ok(&["rollback"]);
        switch_times.push(t.elapsed());
        assert_eq!(
            g.get("/healthz").1,
            a.1,
            "round {round}: A not serving after rollback"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let elapsed = started.elapsed();
    let report = load.stop();
    let total = report.ok + report.server_errors + report.other_status + report.connection_errors;
    let rate = total as f64 / elapsed.as_secs_f64();
    switch_times.sort();
    eprintln!(
        "hup under load: {total} requests in {:.1}s ({rate:.0}/s), ok {}, 5xx {}, other {}, connection errors {}, keep-alive retries {}; switch (activate→serving) median {:?} max {:?}; bodies {:?}",
        elapsed.as_secs_f64(),
        report.ok,
        report.server_errors,
        report.other_status,
        report.connection_errors,
        report.retried,
        switch_times[switch_times.len() / 2],
        switch_times.last().unwrap(),
        report.bodies
    );
    eprintln!("errors: {:?}", report.errors);
    // Enough requests that every switch happened under load (a count, not a
    // rate: the machine may be busy with other work).
    assert!(total >= 200, "load too light: {total} requests");
    assert_eq!(report.connection_errors, 0, "{:?}", report.errors);
    assert_eq!(report.server_errors, 0, "{:?}", report.errors);
    assert_eq!(report.other_status, 0, "{:?}", report.errors);
    assert!(report.bodies.contains_key(&a.1) && report.bodies.contains_key(&b.1));
    assert_eq!(
        report.bodies.len(),
        2,
        "unexpected bodies: {:?}",
        report.bodies
    );

    let activations = host
        .root
        .journal()
        .iter()
        .filter(|e| e["event"] == "activated")
        .count();
    assert!(activations >= 6, "journal has {activations} activations");
}

#[test]
fn gunicorn_upgrade_picks_up_changed_dependencies_and_hup_does_not() {
    let host = Host::new();
    let a = host.install_head();
    // Release C pins another gunicorn: only a new interpreter can pick it up.
    let reqs = std::fs::read_to_string(host.app.path("requirements.txt")).unwrap();
    host.app.write(
        "requirements.txt",
        &reqs.replace("gunicorn==23.0.0", "gunicorn==22.0.0"),
    );
    host.app.commit("gunicorn 22");
    let c = host.install_head();
    host.root.ok(&["activate", &a.0]);

    let g = Gunicorn::start(&host.root.path, &host.run);
    let info = |g: &Gunicorn| -> Value { serde_json::from_str(&g.get("/info").1).unwrap() };
    assert_eq!(info(&g)["gunicorn"], "23.0.0");

    // hup: new code, but the master's interpreter (with gunicorn 23 imported) stays.
    host.root.write_config(&web_config(&g, "hup", ""));
    host.root.ok(&["activate", &c.0]);
    let after_hup = info(&g);
    assert_eq!(after_hup["release"], c.1.as_str());
    assert_eq!(
        after_hup["gunicorn"], "23.0.0",
        "HUP cannot load another gunicorn"
    );
    let status = host.status();
    let web = &status["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(
        web["stale"], true,
        "status must flag the old master: {status}"
    );
    let text = stdout(&host.root.ok(&["status"]));
    assert!(
        text.contains("gunicorn-upgrade"),
        "status should say how to fix it:\n{text}"
    );

    // gunicorn-upgrade: a new master from C's venv takes over the socket.
    host.root
        .write_config(&web_config(&g, "gunicorn-upgrade", ""));
    let old_master = std::fs::read_to_string(&g.pidfile).unwrap();
    host.root.ok(&["rollback"]);
    assert_eq!(info(&g)["release"], a.1.as_str());
    let t = Instant::now();
    host.root.ok(&["activate", &c.0]);
    eprintln!("gunicorn-upgrade: activate→serving {:?}", t.elapsed());
    let after_upgrade = info(&g);
    assert_eq!(after_upgrade["release"], c.1.as_str());
    assert_eq!(
        after_upgrade["gunicorn"], "22.0.0",
        "the new venv must serve"
    );
    assert_ne!(std::fs::read_to_string(&g.pidfile).unwrap(), old_master);
    let status = host.status();
    assert_eq!(status["services"][0]["stale"], false, "{status}");
    assert_eq!(status["services"][0]["alive"], true, "{status}");
}

#[test]
fn a_release_that_fails_to_import_is_stopped_by_check_or_rolled_back() {
    let host = Host::new();
    let a = host.install_head();
    host.app.write(
        "mysite/wsgi.py",
        "import this_module_does_not_exist_anywhere  # a broken release\n",
    );
    host.app.commit("broken");
    let (broken, _) = host.install_head();
    host.root.ok(&["activate", &a.0]);
    let g = Gunicorn::start(&host.root.path, &host.run);

    // 1. The check hook stops it before anything changes.
    host.root.write_config(&web_config(
        &g,
        "gunicorn-upgrade",
        "\n[hooks]\ncheck = \"venv/bin/python -c 'import mysite.wsgi'\"\n",
    ));
    let err = fails_with(&host.root.run(&["activate", &broken]), 1);
    assert!(
        err.contains("check") && err.contains("this_module_does_not_exist_anywhere"),
        "{err}"
    );
    assert_eq!(host.current(), a.0);
    assert_eq!(host.root.journal().last().unwrap()["event"], "failed");

    // 2. Without the check, the new master cannot boot its workers: the tool
    //    switches back by itself while the old master never stops serving.
    host.root
        .write_config(&web_config(&g, "gunicorn-upgrade", ""));
    let load = Load::start(g.port, 4, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));
    let out = host.root.run(&["activate", &broken]);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let err = fails_with(&out, 3);
    assert!(
        err.contains(&a.0) && err.to_lowercase().contains("live again"),
        "{err}"
    );
    assert_eq!(host.current(), a.0);
    let last = host.root.journal().last().unwrap().clone();
    assert_eq!(last["event"], "failed", "{last}");
    assert!(
        last["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{last}"
    );
    eprintln!(
        "broken release under load: ok {}, 5xx {}, connection errors {}",
        report.ok, report.server_errors, report.connection_errors
    );
    assert!(report.ok > 20);
    assert_eq!(
        report.connection_errors + report.server_errors + report.other_status,
        0,
        "{:?}",
        report.errors
    );
    assert_eq!(g.get("/healthz").1, a.0[..12]);
}

#[test]
fn celery_worker_moves_to_the_new_release_and_finishes_its_running_task() {
    let host = Host::new();
    let (a, b) = two_releases(&host);
    let redis = Redis::start(&host.run);
    let worker = Celery::start(&host.root.path, &host.run, &redis.url());
    host.root.write_config(&format!(
        "[[service]]\nname = \"worker\"\npidfile = \"{}\"\nreload = \"hup\"\ntimeout = \"120s\"\n",
        worker.pidfile.display()
    ));
    let whoami = || -> Value {
        let child = send_task(&host.root.path, &redis.url(), "t.whoami.delay()", true).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(whoami()["release"], a.1.as_str());

    // A long task is running when the reload starts.
    let slow = send_task(&host.root.path, &redis.url(), "t.slow.delay(6)", true).unwrap();
    wait_for("the slow task to start", Duration::from_secs(30), || {
        worker.group.log_text().contains("slow task started")
    });
    let t = Instant::now();
    host.root.ok(&["activate", &b.0]);
    eprintln!("celery hup: activate→confirmed {:?}", t.elapsed());
    let slow_out = slow.wait_with_output().unwrap();
    assert!(slow_out.status.success(), "{}", stderr(&slow_out));
    let slow_result: Value = serde_json::from_slice(&slow_out.stdout).unwrap();
    if slow_result != a.1.as_str() {
        eprintln!("celery log:\n{}", worker.group.log_text());
    }
    assert_eq!(
        slow_result,
        a.1.as_str(),
        "the running task finished on the old release"
    );
    let after = whoami();
    assert_eq!(
        after["release"],
        b.1.as_str(),
        "a task sent after the activation runs on B"
    );
    assert!(after["executable"]
        .as_str()
        .unwrap()
        .ends_with("current/venv/bin/python"));

    let status = host.status();
    let svc = &status["services"][0];
    assert_eq!(svc["alive"], true, "{status}");
    assert_eq!(svc["stale"], false, "{status}");
}

#[test]
fn notify_posts_the_event_and_a_dead_url_does_not_fail_the_deploy() {
    let host = Host::new();
    let (_a, b) = two_releases(&host);
    let sink = Sink::start();
    host.root
        .write_config(&format!("[hooks]\nnotify = \"{}\"\n", sink.url()));
    host.root.ok(&["activate", &b.0]);
    wait_for("the notification", Duration::from_secs(10), || {
        !sink.bodies.lock().unwrap().is_empty()
    });
    let event: Value = serde_json::from_str(&sink.bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(event["event"], "activated");
    assert_eq!(event["release"], b.0.as_str());

    host.root.write_config(&format!(
        "[hooks]\nnotify = \"http://127.0.0.1:{}/gone\"\n",
        free_port()
    ));
    let out = host.root.ok(&["rollback"]);
    assert!(stderr(&out).contains("notify"), "{}", stderr(&out));
}

#[test]
fn pidfile_problems_are_refused_before_anything_changes() {
    let host = Host::new();
    let (a, b) = two_releases(&host);
    let service = |pidfile: &Path, extra: &str| {
        format!(
            "[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"hup\"\n{extra}",
            pidfile.display()
        )
    };
    // Missing pidfile.
    let missing = host.run.join("nope.pid");
    host.root.write_config(&service(&missing, ""));
    let err = fails_with(&host.root.run(&["activate", &b.0]), 1);
    assert!(
        err.contains("nope.pid") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(host.current(), a.0);

    // A pidfile naming a dead process.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = host.run.join("stale.pid");
    std::fs::write(&stale, format!("{dead_pid}\n")).unwrap();
    host.root.write_config(&service(&stale, ""));
    let err = fails_with(&host.root.run(&["activate", &b.0]), 1);
    assert!(
        err.contains("stale.pid") && err.contains("not running"),
        "{err}"
    );
    assert_eq!(host.current(), a.0);

    // A pidfile naming an unrelated live process.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let unrelated = host.run.join("unrelated.pid");
    std::fs::write(&unrelated, format!("{}\n", other.id())).unwrap();
    host.root.write_config(&service(&unrelated, ""));
    let err = fails_with(&host.root.run(&["activate", &b.0]), 1);
    other.kill().unwrap();
    other.wait().unwrap();
    assert!(err.contains("sleep 60") && err.contains("stale"), "{err}");
    assert_eq!(host.current(), a.0);

    // required = false: the service is down, the deploy goes on and says so.
    host.root
        .write_config(&service(&missing, "required = false\n"));
    let out = host.root.ok(&["activate", &b.0]);
    assert!(stderr(&out).contains("web"), "{}", stderr(&out));
    assert_eq!(host.current(), b.0);
}

/// TERMs whatever the pidfile (and `<pidfile>.2`) name when dropped: for
/// services started detached (gunicorn --daemon) by a `start` command, which
/// leave the test's process groups.
struct StopByPidfile(PathBuf);

impl Drop for StopByPidfile {
    fn drop(&mut self) {
        let pids: Vec<i32> = [
            self.0.clone(),
            PathBuf::from(format!("{}.2", self.0.display())),
        ]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| t.trim().parse().ok())
        .collect();
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until
            && pids
                .iter()
                .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_first_deploy_starts_what_it_can_and_later_deploys_still_refuse_a_service_that_is_down() {
    let host = Host::new();
    // Three releases of the bundled app, built once for all tests.
    let art = crate::host::artifacts();
    let (a, b, c) = (&art.a, &art.b, &art.c);

    // A service release can start: its `start` line launches gunicorn
    // detached (through current, like the launch lines), then returns.
    let port = free_port();
    let pidfile = host.run.join("gunicorn.pid");
    let stop_web = StopByPidfile(pidfile.clone());
    let app = host.root.path.join("current/app");
    let start = format!(
        "cd {app} && exec {venv}/gunicorn --chdir {app} --bind 127.0.0.1:{port} --pid {pid} --workers 2 --daemon --log-file {log} mysite.wsgi:application",
        app = app.display(),
        venv = host.root.path.join("current/venv/bin").display(),
        pid = pidfile.display(),
        log = host.run.join("gunicorn.log").display(),
    );
    std::fs::create_dir_all(&host.root.path).unwrap();
    host.root.write_config(&format!(
        "[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"gunicorn-upgrade\"\nstart = \"{start}\"\n\n[health]\nurl = \"http://127.0.0.1:{port}/healthz\"\n",
        pidfile.display()
    ));
    let out = host.root.ok(&["deploy", "--json", a.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let a_id = report["activate"]["id"].as_str().unwrap().to_string();
    assert_eq!(report["activate"]["not_running"], serde_json::json!([]));
    assert_eq!(host.current(), a_id);
    // Started, confirmed from its processes, and answering from A.
    let status = host.status();
    let web = &status["services"][0];
    assert_eq!(web["alive"], true, "{status}");
    assert_eq!(web["stale"], false, "{status}");
    assert_eq!(
        get(port, "/healthz", false).unwrap().1,
        a_id[..12],
        "{status}"
    );

    // The second deploy reloads it (nothing is started).
    let out = host.root.ok(&["deploy", b.to_str().unwrap()]);
    assert!(!stderr(&out).contains("starting web"), "{}", stderr(&out));
    let b_id = host.current();
    assert_eq!(get(port, "/healthz", false).unwrap().1, b_id[..12]);

    // A later deploy with the service down is refused before the switch, and
    // says that the release it installed stays installed and inactive.
    drop(stop_web);
    let err = fails_with(&host.root.run(&["deploy", c.to_str().unwrap()]), 1);
    assert!(
        err.contains("gunicorn.pid")
            && err.contains(&format!("{b_id} is still current"))
            && err.contains("is installed and stays inactive"),
        "{err}"
    );
    assert_eq!(host.current(), b_id);
    let list = json_ok(&host.root.run(&["list", "--json"]));
    let c_row = &list[0];
    assert_eq!(c_row["state"], "inactive", "{list}");
    // One precision in `list`: both times to the second.
    let b_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == b_id.as_str())
        .unwrap();
    for key in ["installed_at", "last_activated_at"] {
        let t = b_row[key].as_str().unwrap();
        assert_eq!(t.len(), "2026-01-01T00:00:00Z".len(), "{key}: {t}");
    }
}

#[test]
fn a_first_deploy_lists_what_it_cannot_start_and_an_undone_one_claims_no_previous_release() {
    let host = Host::new();
    let artifact = &crate::host::artifacts().a;
    std::fs::create_dir_all(&host.root.path).unwrap();
    let pidfile = host.run.join("gunicorn.pid");
    let launch = "cd /srv/x/current/app && exec /srv/x/current/venv/bin/gunicorn mysite.wsgi";
    let sink = Sink::start();
    host.root.write_config(&format!(
        "[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"gunicorn-upgrade\"\nlaunch = \"{launch}\"\n\n[health]\nurl = \"http://127.0.0.1:{}/healthz\"\ntimeout = \"1s\"\n\n[hooks]\nnotify = \"{}\"\n",
        pidfile.display(),
        free_port(),
        sink.url()
    ));
    // Not running, no way to start it: activated all the same, exit 0, with
    // the launch line, and no health check (nothing would answer).
    let out = host
        .root
        .ok(&["deploy", "--json", artifact.to_str().unwrap()]);
    let err = stderr(&out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["activate"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        report["activate"]["not_running"],
        serde_json::json!(["web"])
    );
    assert!(
        err.contains(launch) && err.contains("health check"),
        "{err}"
    );
    wait_for("the notification", Duration::from_secs(10), || {
        !sink.bodies.lock().unwrap().is_empty()
    });
    assert!(!err.contains("warning: could not report"), "{err}");
    assert_eq!(host.current(), id);
    assert_eq!(host.root.journal().last().unwrap()["event"], "activated");

    // A start that never shows: undone, and exit 3 says there was no
    // previous release instead of claiming one is live again.
    let root2 = host.app.tmp.path().join("srv/other");
    std::fs::create_dir_all(&root2).unwrap();
    std::fs::write(
        root2.join("release.toml"),
        format!(
            "[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"hup\"\nstart = \"true\"\ntimeout = \"1s\"\n\n[hooks]\nnotify = \"http://127.0.0.1:{}/gone\"\n",
            host.run.join("never.pid").display(),
            free_port()
        ),
    )
    .unwrap();
    let out = release()
        .arg("--root")
        .arg(&root2)
        .arg("deploy")
        .arg(artifact)
        .output()
        .unwrap();
    let err = fails_with(&out, 3);
    assert!(
        err.contains("no release was live before") && !err.contains("live again"),
        "{err}"
    );
    assert!(
        err.contains("could not report the `failed` event")
            && err.contains("failed and was undone")
            && !err.contains("is live all the same"),
        "{err}"
    );
    assert!(std::fs::symlink_metadata(root2.join("current")).is_err());
}
