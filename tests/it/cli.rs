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
