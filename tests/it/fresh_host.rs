//! The README's "Deploying on a host" flow, literally, on a fresh root:
//! `release init` with the service options, the first `release deploy` with
//! the services configured and not running, gunicorn and celery (with redis)
//! started with the launch lines init generated, a second deploy that
//! reloads them, a rollback. No generated file is edited on the way. And the
//! README's example release.toml: its hooks succeed on the bundled app.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::running::*;
use crate::common::*;

#[test]
fn the_readme_fresh_host_flow_works_without_editing_a_generated_file() {
    // The CI side: two artifacts of the bundled app (built once for all tests).
    let art = crate::host::artifacts();
    let tmp = tempfile::Builder::new()
        .prefix("release-fresh-")
        .tempdir()
        .unwrap();
    let tmp = tmp.path();
    let root = tmp.join("srv/mysite");
    let run = tmp.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let port = free_port();
    let r = |args: &[&str]| {
        release()
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };

    // 1. release init, with the services.
    let bind = format!("127.0.0.1:{port}");
    let run_arg = run.to_str().unwrap();
    let init_args = [
        "init",
        "--wsgi",
        "mysite.wsgi:application",
        "--celery",
        "mysite",
        "--run-dir",
        run_arg,
        "--bind",
        &bind,
        "--health",
        "/healthz",
    ];
    let out = r(&init_args);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("mysite-web.service") && printed.contains("ExecReload="),
        "init prints the units:\n{printed}"
    );
    let config = std::fs::read_to_string(root.join("release.toml")).unwrap();
    assert!(config.contains("release help config"), "{config}");
    // The same options again (for the JSON): the file is kept, the lines are the same.
    let mut json_args = init_args.to_vec();
    json_args.push("--json");
    let init = json_ok(&r(&json_args));
    assert_eq!(init["config_written"], false);
    let web_line = launch_line(&init, "web");
    let worker_line = launch_line(&init, "worker");
    for line in [&web_line, &worker_line] {
        assert!(printed.contains(line.as_str()), "{line}\n{printed}");
    }
    let help = stdout(&release().args(["help", "config"]).output().unwrap());
    assert!(
        help.contains("launch =") && help.contains("after_activate"),
        "{help}"
    );

    // 2. The first deploy: both services configured, neither running.
    let out = r(&["deploy", art.a.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "first deploy failed:\n{err}");
    assert!(
        err.contains(&web_line) && err.contains(&worker_line),
        "the first deploy shows both launch lines:\n{err}"
    );
    assert!(err.contains("web, worker are not running"), "{err}");
    let a_id = stdout(&out).trim().to_string();
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        Path::new("releases").join(&a_id)
    );

    // The units init printed pass `systemd-analyze verify` (now that
    // current/venv/bin holds their executables) and run the launch lines.
    let units = tmp.join("units");
    std::fs::create_dir_all(&units).unwrap();
    for service in init["services"].as_array().unwrap() {
        let unit = service["unit"].as_str().unwrap();
        let launch = service["launch"].as_str().unwrap();
        let (cd, exec) = launch.split_once(" && exec ").unwrap();
        assert!(unit.contains(&format!("\nExecStart={exec}\n")), "{unit}");
        assert!(
            unit.contains(&format!("\nWorkingDirectory={}\n", &cd[3..])),
            "{unit}"
        );
        std::fs::write(units.join(service["unit_name"].as_str().unwrap()), unit).unwrap();
    }
    match Command::new("systemd-analyze")
        .arg("verify")
        .args(
            ["mysite-web.service", "mysite-worker.service"]
                .iter()
                .map(|u| units.join(u)),
        )
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && stderr(&out).trim().is_empty(),
            "systemd-analyze verify: {}{}",
            stdout(&out),
            stderr(&out)
        ),
        Err(e) => eprintln!("systemd-analyze not available ({e}): units not verified"),
    }

    // 3. Start them with the generated launch lines (redis for celery).
    let redis = Redis::start(&run);
    let web = Gunicorn::from_launch(&web_line, &run, port);
    let worker = Celery::from_launch(&worker_line, &run, &redis.url());
    assert_eq!(web.get("/healthz").1, a_id[..12]);
    let whoami = || -> Value {
        let child = send_task(&root, &redis.url(), "t.whoami.delay()", true).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(whoami()["release"], &a_id[..12]);

    // 4. The second deploy reloads both (gunicorn-upgrade, celery HUP).
    let out = r(&["deploy", art.b.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "second deploy failed:\n{err}");
    assert!(!err.contains("not running"), "{err}");
    let b_id = stdout(&out).trim().to_string();
    assert_eq!(web.get("/healthz").1, b_id[..12]);
    assert_eq!(whoami()["release"], &b_id[..12]);
    let status = json_ok(&r(&["status", "--json"]));
    for service in status["services"].as_array().unwrap() {
        assert_eq!(service["alive"], true, "{status}");
        assert_eq!(service["stale"], false, "{status}");
    }

    // 5. Rollback: both back on A.
    let out = r(&["rollback"]);
    assert!(out.status.success(), "rollback failed:\n{}", stderr(&out));
    assert_eq!(web.get("/healthz").1, a_id[..12]);
    wait_for(
        "the worker to answer from A",
        Duration::from_secs(60),
        || whoami()["release"] == a_id[..12],
    );

    // Nothing generated was edited.
    assert_eq!(
        std::fs::read_to_string(root.join("release.toml")).unwrap(),
        config
    );
    drop((worker, web, redis));
}

/// The ```toml block under "### `release.toml` for the example above".
fn readme_example() -> String {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let section = readme
        .split("### `release.toml` for the example above")
        .nth(1)
        .expect("README has the example release.toml");
    let block = section.split("```toml\n").nth(1).unwrap();
    block.split("\n```").next().unwrap().to_string()
}

#[test]
fn the_readme_example_hooks_succeed_on_the_bundled_app_on_deploy_and_rollback() {
    let example: toml::Table = toml::from_str(&readme_example()).unwrap();
    // Its keep, shared and check/before_activate hooks as written; its
    // services, health URL and notify URL name a host this test is not.
    let mut config = toml::Table::new();
    for key in ["keep", "shared"] {
        config.insert(key.into(), example[key].clone());
    }
    let mut hooks = example["hooks"].as_table().unwrap().clone();
    hooks.remove("notify");
    assert!(hooks["before_activate"]
        .as_str()
        .unwrap()
        .contains("migrate"));
    config.insert("hooks".into(), toml::Value::Table(hooks));

    let art = crate::host::artifacts();
    let tmp = tempfile::Builder::new()
        .prefix("release-hooks-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join("srv/mysite");
    let r = |args: &[&str]| {
        release()
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(r(&["init"]).status.success());
    std::fs::write(root.join("release.toml"), config.to_string()).unwrap();
    for args in [
        vec!["deploy", art.a.to_str().unwrap()],
        vec!["deploy", art.b.to_str().unwrap()],
        vec!["rollback"],
    ] {
        let out = r(&args);
        let err = stderr(&out);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(!err.contains("warning"), "{args:?} warned:\n{err}");
    }
    // migrate made the shared database, with Django's migrations applied.
    let db = root.join("shared/app/var/db.sqlite3");
    let out = Command::new(root.join("current/venv/bin/python"))
        .arg("-c")
        .arg("import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(\"select count(*) from django_migrations where app = 'contenttypes'\").fetchone()[0])")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        stdout(&out).trim(),
        "0",
        "no migrations in {}",
        db.display()
    );
}
