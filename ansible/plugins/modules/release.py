#!/usr/bin/python
# -*- coding: utf-8 -*-
# The `release` module: drives the `release` host binary through its --json
# output. Standard library only; runs on the managed host.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: release
short_description: Install, activate, roll back and prune releases with the C(release) host binary
description:
  - Runs the C(release) binary on the managed host against one root and returns the
    binary's C(--json) report.
  - C(changed) is what the binary did, not what was asked for. An install of a release
    that is already installed, an activation of the release that is already current,
    a rollback to the current release and a prune that removes nothing report
    C(changed=false), and the binary writes no journal line for them.
  - A failed command fails the task with the binary's message (C(msg)) and exit code
    (C(exit_code)). Exit 3 means the activation failed after the switch and the host
    switched back by itself; the task fails with C(rolled_back=true).
  - In check mode the module runs the binary's C(--dry-run), which changes nothing and
    takes no lock. When the artifact is not on the host yet (a check-mode run uploads
    nothing), C(installed) and C(active) report what they would do without running it.
  - With C(--diff) the module shows where C(current) pointed before and after.
version_added: "0.1.0"
author: the release authors
options:
  root:
    description: The host root (the binary's C(--root)).
    type: path
    required: true
  bin:
    description: The C(release) binary, a name on PATH or a path.
    type: str
    default: release
  state:
    description:
      - C(installed) installs I(artifact) (C(release install)); nothing live changes.
      - C(active) makes a release live. With I(artifact) it runs C(release deploy)
        (install if needed, activate, prune); with I(release) it runs
        C(release activate) on an installed release.
      - C(rolled_back) runs C(release rollback), to I(to) when given.
      - C(pruned) runs C(release prune), keeping I(keep) when given.
      - C(status) changes nothing and returns what a preflight needs (the binary's
        version, C(status), C(list), the lock holder and the free space).
    type: str
    choices: [installed, active, rolled_back, pruned, status]
    default: active
  artifact:
    description: Path of the artifact on the managed host (its C(.sha256) beside it is checked).
    type: path
  sha256:
    description: Expected sha256 of the artifact (the binary's C(--sha256)).
    type: str
  release:
    description: An installed release id or commit, or a unique prefix of one (C(state=active) without I(artifact)).
    type: str
  to:
    description: The release to roll back to (C(state=rolled_back)); default is the journal's rollback target.
    type: str
  keep:
    description: How many of the newest installs C(state=pruned) keeps (default C(keep) in release.toml).
    type: int
  wait:
    description: Seconds to wait for another command's lock on the root (the binary's C(--wait)); without it a held lock fails at once (exit 4).
    type: float
  python:
    description: Re-point the installed venv to this interpreter (the binary's C(--python)).
    type: path
  rebuild_venv:
    description: Rebuild the venv offline from the release's wheels (the binary's C(--rebuild-venv)).
    type: bool
    default: false
notes:
  - Supports check mode (the binary's C(--dry-run) flags) and diff mode (C(current) before and after).
  - Needs Python 3 on the managed host and the C(release) binary of the same version everywhere.
"""

EXAMPLES = r"""
- name: Stage an uploaded artifact (nothing live changes)
  release:
    root: /srv/mysite
    state: installed
    artifact: /srv/mysite/incoming/mysite-0123456789ab.tar.zst
  register: staged

- name: Switch to it (gunicorn and celery reload, health checked)
  release:
    root: /srv/mysite
    state: active
    release: "{{ staged.id }}"

- name: Back to a given release
  release:
    root: /srv/mysite
    state: rolled_back
    to: 65ff182f6265

- name: What a preflight needs (changes nothing)
  release:
    root: /srv/mysite
    state: status
  register: host
"""

RETURN = r"""
result:
  description: The binary's C(--json) report (see docs/host.md); for C(state=active) with I(artifact), the deploy report with C(install), C(activate) and C(prune).
  returned: success
  type: dict
id:
  description: The release id the command installed, activated or rolled back to.
  returned: states installed, active, rolled_back
  type: str
previous:
  description: The release that was live before (the activation's C(from)); null when none was.
  returned: states active, rolled_back
  type: str
switched:
  description: Whether C(current) moved to another release (then the configured services were reloaded and the health check passed).
  returned: states active, rolled_back
  type: bool
current_before:
  description: The release C(current) pointed to before the command (null when none).
  returned: always
  type: str
current_after:
  description: The release C(current) points to after the command (null when none).
  returned: always
  type: str
exit_code:
  description: The binary's exit code (0 ok, 1 failed with nothing changed, 2 usage, 3 activation failed and the previous release is live again, 4 the root is locked).
  returned: always
  type: int
rolled_back:
  description: True when the activation failed after the switch and the host switched back by itself (exit 3).
  returned: failure
  type: bool
dry_run:
  description: True in check mode.
  returned: always
  type: bool
version:
  description: The binary's version (C(state=status)).
  returned: state status
  type: str
status:
  description: C(release status --json) (C(state=status)); null when the root does not exist yet.
  returned: state status
  type: dict
releases:
  description: C(release list --json) (C(state=status)); empty when the root does not exist yet.
  returned: state status
  type: list
lock_holder:
  description: The pid holding the root's lock, from /proc/locks; null when free (C(state=status)).
  returned: state status
  type: int
free_bytes:
  description: Free bytes on the filesystem of the root, or of its nearest existing parent (C(state=status)).
  returned: state status
  type: int
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def current_release(root):
    """The release id `current` points to, or None."""
    try:
        target = os.readlink(os.path.join(root, "current"))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/")) or None


def parse_error(stderr):
    """The {"error", "exit_code"} object the binary prints under --json, if any."""
    for line in reversed(stderr.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "error" in obj:
                return obj
    return None


def lock_holder(root):
    """The pid holding an exclusive flock on <root>/.lock, from /proc/locks.

    Read passively: taking the lock to test it would make a real command that
    starts at that moment fail with exit 4."""
    try:
        st = os.stat(os.path.join(root, ".lock"))
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks waiters)
        if "->" in fields:
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None


def free_bytes(root):
    path = root
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        st = os.statvfs(path or "/")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Release(object):
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.root = self.params["root"]
        self.before = current_release(self.root)

    def command(self, args):
        cmd = [self.params["bin"], "--root", self.root, "--json", "-q"]
        if self.params["wait"] is not None:
            cmd += ["--wait", str(self.params["wait"])]
        return cmd + args

    def run(self, args, allow_fail=False):
        """Run the binary; its parsed stdout JSON, or fail the task with its error."""
        cmd = self.command(args)
        rc, out, err = self.module.run_command(cmd, environ_update={"LC_ALL": "C"})
        if rc != 0:
            if allow_fail:
                return None, rc, err
            self.fail(cmd, rc, out, err, args[0])
        try:
            return json.loads(out), rc, err
        except ValueError:
            self.module.fail_json(
                msg="%s printed no JSON report: %r" % (" ".join(cmd), out[:2000]),
                cmd=cmd, exit_code=rc, stdout=out, stderr=err, **self.currents())

    def fail(self, cmd, rc, out, err, sub=None):
        error = parse_error(err)
        if error is not None:
            msg = error["error"]
        elif rc == 127 or "No such file" in err:
            msg = "cannot run %s: %s (set release_bin, or put release on PATH)" % (
                self.params["bin"], err.strip())
        else:
            msg = err.strip() or out.strip() or "exit %d" % rc
        if rc == 2 and "--dry-run" in cmd and "--dry-run" in err:
            msg = ("`%s %s` has no --dry-run; check mode needs a release binary with --dry-run "
                   "on install, activate, deploy, rollback and prune" % (self.params["bin"], sub))
        self.module.fail_json(
            msg=msg, cmd=cmd, exit_code=rc, rolled_back=(rc == 3),
            stdout=out, stderr=err, **self.currents())

    def currents(self):
        return {"current_before": self.before, "current_after": current_release(self.root)}

    def finish(self, changed, result, **extra):
        after = current_release(self.root)
        if self.module.check_mode:
            after = extra.pop("predicted_after", after)
        else:
            extra.pop("predicted_after", None)
        out = dict(changed=changed, result=result, current_before=self.before,
                   current_after=after, exit_code=0, dry_run=self.module.check_mode)
        out.update(extra)
        if self.module._diff:
            out["diff"] = {
                "before_header": os.path.join(self.root, "current"),
                "after_header": os.path.join(self.root, "current"),
                "before": "current -> %s\n" % (self.before or "(none)"),
                "after": "current -> %s\n" % (after or "(none)"),
            }
        self.module.exit_json(**out)

    def install_args(self):
        args = [self.params["artifact"]]
        if self.params["sha256"]:
            args += ["--sha256", self.params["sha256"]]
        if self.params["python"]:
            args += ["--python", self.params["python"]]
        if self.params["rebuild_venv"]:
            args += ["--rebuild-venv"]
        return args

    def artifact_missing_in_check_mode(self, what):
        """In check mode the upload did not happen: say what would be done."""
        artifact = self.params["artifact"]
        if self.module.check_mode and not os.path.exists(artifact):
            self.finish(True, None, id=None, msg="would upload %s and %s it (not on the host "
                        "yet, so it was not read)" % (os.path.basename(artifact), what))

    # -- states ------------------------------------------------------------

    def installed(self):
        self.require("artifact")
        self.artifact_missing_in_check_mode("install")
        dry = ["--dry-run"] if self.module.check_mode else []
        report, _, _ = self.run(["install"] + self.install_args() + dry)
        self.finish(not report["already_installed"], report, id=report.get("id"))

    def active(self):
        if self.params["artifact"]:
            self.artifact_missing_in_check_mode("deploy")
            dry = ["--dry-run"] if self.module.check_mode else []
            report, _, _ = self.run(["deploy"] + self.install_args() + dry)
            install, activate, prune = report["install"], report["activate"], report["prune"]
            changed = (not install["already_installed"] or not activate["already_current"]
                       or bool(prune.get("removed")))
            self.finish(changed, report, id=activate.get("id"), previous=activate.get("from"),
                        switched=not activate["already_current"],
                        predicted_after=activate.get("id"))
        self.require("release")
        dry = ["--dry-run"] if self.module.check_mode else []
        report, _, _ = self.run(["activate", self.params["release"]] + dry)
        self.finish(not report["already_current"], report, id=report["id"],
                    previous=report.get("from"), switched=not report["already_current"],
                    predicted_after=report["id"])

    def rolled_back(self):
        args = ["rollback"]
        if self.params["to"]:
            args += ["--to", self.params["to"]]
        if self.module.check_mode:
            args.append("--dry-run")
        report, _, _ = self.run(args)
        self.finish(not report["already_current"], report, id=report["id"],
                    previous=report.get("from"), switched=not report["already_current"],
                    predicted_after=report["id"])

    def pruned(self):
        args = ["prune"]
        if self.params["keep"] is not None:
            args += ["--keep", str(self.params["keep"])]
        if self.module.check_mode:
            args.append("--dry-run")
        report, _, _ = self.run(args)
        self.finish(bool(report.get("removed")), report)

    def status(self):
        rc, out, err = self.module.run_command([self.params["bin"], "--version"])
        if rc != 0:
            self.fail([self.params["bin"], "--version"], rc, out, err)
        version = out.strip().split()[-1] if out.strip() else ""
        status = None
        releases = []
        if os.path.isdir(self.root):
            status, _, _ = self.run(["status"])
            releases, _, _ = self.run(["list"])
        self.module.exit_json(
            changed=False, version=version, status=status, releases=releases,
            lock_holder=lock_holder(self.root), free_bytes=free_bytes(self.root),
            exit_code=0, dry_run=self.module.check_mode, **self.currents())

    def require(self, name):
        if not self.params[name]:
            self.module.fail_json(msg="state=%s needs %s" % (self.params["state"], name),
                                  exit_code=2, **self.currents())


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            bin=dict(type="str", default="release"),
            state=dict(type="str", default="active",
                       choices=["installed", "active", "rolled_back", "pruned", "status"]),
            artifact=dict(type="path"),
            sha256=dict(type="str"),
            release=dict(type="str"),
            to=dict(type="str"),
            keep=dict(type="int"),
            wait=dict(type="float"),
            python=dict(type="path"),
            rebuild_venv=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("artifact", "release")],
        supports_check_mode=True,
    )
    r = Release(module)
    getattr(r, module.params["state"])()


if __name__ == "__main__":
    main()
