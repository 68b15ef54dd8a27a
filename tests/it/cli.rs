//! The command line itself: help, completions, man page, usage errors.

use crate::common::*;

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for (shell, marker) in [
        ("bash", "_release()"),
        ("zsh", "#compdef release"),
        ("fish", "complete -c release"),
    ] {
        let out = release().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains(marker),
            "{shell}: {}",
            &text[..text.len().min(300)]
        );
        for sub in ["build", "install", "activate", "rollback"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = release().arg("man").output().unwrap();
    assert!(out.status.success());
    let man = stdout(&out);
    assert!(
        man.contains(".TH release 1") && man.contains("rollback"),
        "{man}"
    );
}

#[test]
fn help_lists_every_command_and_usage_errors_exit_2() {
    let out = release().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = stdout(&out);
    for cmd in [
        "build",
        "inspect",
        "install",
        "activate",
        "deploy",
        "rollback",
        "list",
        "status",
        "prune",
        "verify",
        "completions",
        "man",
    ] {
        assert!(
            help.contains(&format!("  {cmd}")),
            "--help lacks {cmd}:\n{help}"
        );
    }
    let out = release().args(["activate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A host command without a root names both ways to give one.
    let out = release().args(["list"]).output().unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("--root") && err.contains("RELEASE_ROOT"),
        "{err}"
    );
}

#[test]
fn init_writes_the_layout_and_a_commented_config_once() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv/mysite");
    let out = release()
        .arg("--root")
        .arg(&root)
        .args(["init", "--json"])
        .output()
        .unwrap();
    let report = json_ok(&out);
    assert_eq!(report["config_written"], true);
    for dir in ["", "releases", "shared"] {
        let mode = std::fs::metadata(root.join(dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "{dir:?}");
    }
    let text = std::fs::read_to_string(root.join("release.toml")).unwrap();
    for key in [
        "keep",
        "shared",
        "[[service]]",
        "pidfile",
        "reload",
        "timeout",
        "required",
        "[health]",
        "expect",
        "check",
        "after_activate",
        "notify",
    ] {
        assert!(text.contains(key), "release.toml lacks {key}");
    }
    // The commented file is a valid, empty configuration: list works.
    let out = release()
        .arg("--root")
        .arg(&root)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert_eq!(json_ok(&out), serde_json::json!([]));
    // A second init keeps the operator's edits.
    std::fs::write(root.join("release.toml"), "keep = 2\n").unwrap();
    let report = json_ok(
        &release()
            .arg("--root")
            .arg(&root)
            .args(["init", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(report["config_written"], false);
    assert_eq!(
        std::fs::read_to_string(root.join("release.toml")).unwrap(),
        "keep = 2\n"
    );
}

#[test]
fn progress_goes_to_a_terminal_on_stderr_and_never_to_stdout() {
    let app = App::new();
    let artifact = app.build_ok(&app.tmp.path().join("dist"), &[]);
    let root = app.tmp.path().join("root");
    let out_file = app.tmp.path().join("stdout.txt");
    let typescript = app.tmp.path().join("terminal.txt");
    // `script` gives the command a terminal; stdout alone is redirected to a file.
    let command = format!(
        "'{}' --root '{}' install '{}' > '{}'",
        BIN,
        root.display(),
        artifact.display(),
        out_file.display()
    );
    let status = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command])
        .arg(&typescript)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let data = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<&str> = data.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must hold only the release id: {data:?}"
    );
    assert!(lines[0].starts_with(&app.head()[..12]), "{data:?}");
    assert!(
        !data.contains('\u{1b}') && !data.contains("installing"),
        "{data:?}"
    );
    let terminal = std::fs::read_to_string(&typescript).unwrap();
    assert!(
        terminal.contains("installing"),
        "no progress on the terminal: {terminal:?}"
    );

    // Without a terminal (as here), stderr gets messages but no bar drawing.
    let out = release()
        .arg("--root")
        .arg(app.tmp.path().join("root2"))
        .arg("install")
        .arg(&artifact)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!stderr(&out).contains('\u{1b}'), "{}", stderr(&out));
}

/// Compare with a stored snapshot; `UPDATE_SNAPSHOTS=1` rewrites it.
fn snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(REPO)
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_SNAPSHOTS=1", path.display()));
    assert_eq!(
        actual, expected,
        "{name} changed: review, then UPDATE_SNAPSHOTS=1"
    );
}

fn keys(value: &serde_json::Value) -> Vec<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn help_and_json_shapes_match_their_snapshots_and_colour_follows_the_flag() {
    let help = stdout(
        &release()
            .env("COLUMNS", "100")
            .arg("--help")
            .output()
            .unwrap(),
    );
    snapshot("help.txt", &help);
    let build_help = stdout(
        &release()
            .env("COLUMNS", "100")
            .args(["build", "--help"])
            .output()
            .unwrap(),
    );
    snapshot("build-help.txt", &build_help);

    let app = App::new();
    let artifact = app.build_ok(&app.tmp.path().join("dist"), &[]);
    let root = app.tmp.path().join("root");
    let r = |args: &[&str]| {
        release()
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };
    let installed = json_ok(&r(&["install", "--json", artifact.to_str().unwrap()]));
    let id = installed["id"].as_str().unwrap().to_string();
    let activated = json_ok(&r(&["activate", "--json", &id]));
    let list = json_ok(&r(&["list", "--json"]));
    let status = json_ok(&r(&["status", "--json"]));
    let verify = json_ok(&r(&["verify", "--json"]));
    let inspect = json_ok(
        &release()
            .args(["inspect", "--json"])
            .arg(&artifact)
            .output()
            .unwrap(),
    );
    let shapes = format!(
        "install: {:?}\nactivate: {:?}\nlist[]: {:?}\nstatus: {:?}\nverify: {:?}\ninspect: {:?}\n",
        keys(&installed),
        keys(&activated),
        keys(&list[0]),
        keys(&status),
        keys(&verify),
        keys(&inspect)
    );
    snapshot("json-shapes.txt", &shapes);

    // Human list: an aligned table, coloured only when asked.
    let plain = stdout(&r(&["list"]));
    assert!(plain.starts_with("ID ") && plain.contains("current") && !plain.contains('\u{1b}'));
    let coloured = stdout(&r(&["list", "--color", "always"]));
    assert!(
        coloured.contains("\u{1b}[1;32mcurrent\u{1b}[0m"),
        "{coloured}"
    );
    let never = stdout(
        &release()
            .env("NO_COLOR", "1")
            .arg("--root")
            .arg(&root)
            .args(["list", "--color", "auto"])
            .output()
            .unwrap(),
    );
    assert!(!never.contains('\u{1b}'));

    // Errors under --json are JSON on stderr with the exit code's meaning.
    let out = r(&["activate", "--json", "nosuchrelease"]);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(err["exit_code"], 1);
    assert!(err["error"].as_str().unwrap().contains("nosuchrelease"));
}
