//! Make a freshly installed venv relocatable, the way docs/design.md §1 requires:
//! console scripts start `python` from their own directory without resolving
//! directory symlinks, activate scripts find their own location, and
//! `pyvenv.cfg` forgets where the venv was built.

use std::path::Path;

use fs_err as fs;

use crate::error::Result;

/// The header that replaces a console script's absolute shebang.
///
/// To `/bin/sh` the second line is the command `true`, then the script finds
/// itself: it follows symlinks *to the script file itself* (a link in
/// /usr/local/bin), never directory symlinks such as `current`, makes the path
/// absolute with the logical `$PWD`, and execs the `python` beside it. To
/// Python, lines 2 to the closing quotes are one string literal, so the script
/// body that follows runs unchanged. The absolute path matters: gunicorn (USR2)
/// and celery (HUP) re-exec `sys.argv` after their own chdir.
pub const TRAMPOLINE: &str = r#"#!/bin/sh
'''true'
s=$0
while [ -h "$s" ]; do
  t=$(readlink -- "$s")
  case $t in /*) s=$t ;; *) s=$(dirname -- "$s")/$t ;; esac
done
case $s in /*) ;; *) s=$PWD/$s ;; esac
exec "$(dirname -- "$s")/python" "$s" "$@"
' '''
"#;

const ACTIVATE_SH: &str = r#"# Source this file from bash or zsh: `. venv/bin/activate`.
# Written by `release build`: it finds the venv from its own location, so it
# works wherever the release is unpacked (and through the `current` symlink).

deactivate () {
    if [ -n "${_RELEASE_OLD_PATH+x}" ]; then
        PATH=$_RELEASE_OLD_PATH
        export PATH
        unset _RELEASE_OLD_PATH
    fi
    if [ -n "${_RELEASE_OLD_PS1+x}" ]; then
        PS1=$_RELEASE_OLD_PS1
        export PS1
        unset _RELEASE_OLD_PS1
    fi
    unset VIRTUAL_ENV VIRTUAL_ENV_PROMPT
    hash -r 2>/dev/null
    if [ "${1-}" != "nondestructive" ]; then
        unset -f deactivate
    fi
}

deactivate nondestructive

if [ -n "${BASH_SOURCE-}" ]; then
    _release_here=${BASH_SOURCE[0]}
elif [ -n "${ZSH_VERSION-}" ]; then
    _release_here=${(%):-%x}
else
    _release_here=$0
fi
case $_release_here in /*) ;; *) _release_here=$PWD/$_release_here ;; esac
VIRTUAL_ENV=$(cd -- "$(dirname -- "$_release_here")/.." && pwd -L)
unset _release_here
export VIRTUAL_ENV

_RELEASE_OLD_PATH=$PATH
PATH=$VIRTUAL_ENV/bin:$PATH
export PATH

VIRTUAL_ENV_PROMPT="($(basename -- "$(dirname -- "$VIRTUAL_ENV")")) "
export VIRTUAL_ENV_PROMPT
if [ -z "${VIRTUAL_ENV_DISABLE_PROMPT-}" ]; then
    _RELEASE_OLD_PS1=${PS1-}
    PS1="$VIRTUAL_ENV_PROMPT${PS1-}"
    export PS1
fi
hash -r 2>/dev/null
"#;

const ACTIVATE_FISH: &str = r#"# Source this file from fish: `source venv/bin/activate.fish`.
# Written by `release build`: it finds the venv from its own location.

function deactivate -d "Leave the release's virtualenv"
    if set -q _release_old_path
        set -gx PATH $_release_old_path
        set -e _release_old_path
    end
    set -e VIRTUAL_ENV
    set -e VIRTUAL_ENV_PROMPT
    if test "$argv[1]" != "nondestructive"
        functions -e deactivate
    end
end

deactivate nondestructive

set -l here (status filename)
if not string match -q '/*' -- $here
    set here $PWD/$here
end
set -gx VIRTUAL_ENV (builtin cd (dirname $here)/..; and pwd)
set -g _release_old_path $PATH
set -gx PATH $VIRTUAL_ENV/bin $PATH
set -gx VIRTUAL_ENV_PROMPT "("(basename (dirname $VIRTUAL_ENV))") "
"#;

/// Activate scripts for shells we do not rewrite; they hard-code the build path.
const DROPPED: &[&str] = &[
    "activate.csh",
    "activate.nu",
    "activate.ps1",
    "Activate.ps1",
    "activate.bat",
    "deactivate.bat",
    "pydoc.bat",
    "activate_this.py",
    "activate.xsh",
];

/// Files installers leave that differ from run to run and serve nothing at
/// run time: uv's cache stamp (with a timestamp) and its venv lock file.
const DIST_INFO_NOISE: &[&str] = &["uv_cache.json"];
const VENV_NOISE: &[&str] = &[".lock"];

pub struct Report {
    /// Console scripts given the trampoline.
    pub scripts: usize,
    /// Files that still mention the build path (left alone, reported).
    pub leftovers: Vec<String>,
}

/// Rewrite the venv at `venv` (built at exactly that path) to be relocatable.
pub fn relocate(venv: &Path) -> Result<Report> {
    let venv_str = venv.to_string_lossy().into_owned();
    let bin = venv.join("bin");
    let mut rewritten = Vec::new();
    for entry in fs::read_dir(&bin)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file() {
            continue;
        }
        if DROPPED.contains(&name.as_str()) {
            fs::remove_file(&path)?;
            continue;
        }
        match name.as_str() {
            "activate" => fs::write(&path, ACTIVATE_SH)?,
            "activate.fish" => fs::write(&path, ACTIVATE_FISH)?,
            _ => {
                let bytes = fs::read(&path)?;
                if let Some(body) = script_body(&bytes, &venv_str) {
                    let mut text = TRAMPOLINE.as_bytes().to_vec();
                    text.extend_from_slice(body);
                    fs::write(&path, &text)?;
                    rewritten.push((name.clone(), text));
                }
            }
        }
    }
    rewrite_pyvenv_cfg(&venv.join("pyvenv.cfg"), &venv_str)?;
    for noise in VENV_NOISE {
        let path = venv.join(noise);
        if path.exists() {
            fs::remove_file(path)?;
        }
    }
    update_records(venv, &rewritten)?;
    let leftovers = files_mentioning(venv, venv_str.as_bytes())?;
    Ok(Report {
        scripts: rewritten.len(),
        leftovers,
    })
}

/// If `bytes` is a script whose interpreter is the build venv's python, return
/// the body after its interpreter header. Handles the plain shebang and the
/// `/bin/sh` + `'''exec'` form pip and uv use for long paths.
fn script_body<'a>(bytes: &'a [u8], venv: &str) -> Option<&'a [u8]> {
    if !bytes.starts_with(b"#!") {
        return None;
    }
    let first_end = bytes.iter().position(|b| *b == b'\n')?;
    let first = &bytes[..first_end];
    let python_prefix = format!("{venv}/bin/python");
    let mentions = |line: &[u8]| String::from_utf8_lossy(line).contains(&python_prefix);
    if first.starts_with(format!("#!{python_prefix}").as_bytes()) {
        return Some(&bytes[first_end + 1..]);
    }
    if first == b"#!/bin/sh" {
        // #!/bin/sh / '''exec' '<venv>/bin/python' "$0" "$@" / ' '''
        let rest = &bytes[first_end + 1..];
        let second_end = rest.iter().position(|b| *b == b'\n')?;
        let second = &rest[..second_end];
        if second.starts_with(b"'''exec'") && mentions(second) {
            let rest = &rest[second_end + 1..];
            let third_end = rest.iter().position(|b| *b == b'\n')?;
            if rest[..third_end].trim_ascii() == b"' '''" {
                return Some(&rest[third_end + 1..]);
            }
        }
    }
    None
}

/// Keep every `*.dist-info/RECORD` true: the rewritten scripts' hash and size
/// change (and differed between build paths before the rewrite), and the
/// installer noise files are removed along with their lines.
fn update_records(venv: &Path, rewritten: &[(String, Vec<u8>)]) -> Result<()> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    for entry in walkdir::WalkDir::new(venv.join("lib")).max_depth(4) {
        let entry = entry.map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = entry.path();
        let in_dist_info = path
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n.to_string_lossy().ends_with(".dist-info"));
        if entry.file_name() != "RECORD" || !in_dist_info {
            continue;
        }
        let dist_info = path.parent().expect("RECORD has a parent");
        let mut changed = false;
        for noise in DIST_INFO_NOISE {
            if dist_info.join(noise).exists() {
                fs::remove_file(dist_info.join(noise))?;
                changed = true;
            }
        }
        let text = fs::read_to_string(path)?;
        let lines: Vec<String> = text
            .lines()
            .filter(|line| {
                let file = line.split(',').next().unwrap_or_default();
                !DIST_INFO_NOISE
                    .iter()
                    .any(|n| file.ends_with(&format!(".dist-info/{n}")))
            })
            .map(|line| {
                let file = line.split(',').next().unwrap_or_default();
                let script = file.rsplit_once("/bin/").map(|(_, name)| name);
                match rewritten
                    .iter()
                    .find(|(name, _)| Some(name.as_str()) == script)
                {
                    Some((_, bytes)) if file.starts_with("../") => {
                        changed = true;
                        let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(Sha256::digest(bytes));
                        format!("{file},sha256={digest},{}", bytes.len())
                    }
                    _ => line.to_string(),
                }
            })
            .collect();
        if changed {
            fs::write(path, lines.join("\n") + "\n")?;
        }
    }
    Ok(())
}

fn rewrite_pyvenv_cfg(path: &Path, venv: &str) -> Result<()> {
    let text = fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or_default().trim();
            key != "command" && !line.contains(venv)
        })
        .collect();
    fs::write(path, kept.join("\n") + "\n")?;
    Ok(())
}

fn files_mentioning(dir: &Path, needle: &[u8]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| std::io::Error::other(e.to_string()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let bytes = fs::read(entry.path())?;
        if bytes.windows(needle.len()).any(|w| w == needle) {
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            found.push(rel.display().to_string());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_body_of_both_script_forms() {
        let plain = b"#!/b/venv/bin/python3.11\nimport sys\n";
        assert_eq!(script_body(plain, "/b/venv"), Some(&b"import sys\n"[..]));
        let long = b"#!/bin/sh\n'''exec' '/b/venv/bin/python' \"$0\" \"$@\"\n' '''\nimport sys\n";
        assert_eq!(script_body(long, "/b/venv"), Some(&b"import sys\n"[..]));
        assert_eq!(script_body(b"#!/usr/bin/env python\nx\n", "/b/venv"), None);
        assert_eq!(script_body(b"\x7fELF", "/b/venv"), None);
    }

    #[test]
    fn trampoline_is_one_python_string() {
        // No triple quote inside the shell part, no backslashes Python could
        // warn about: the whole header is `'''...'''` to Python.
        let inner = &TRAMPOLINE["#!/bin/sh\n'''".len()..TRAMPOLINE.len() - "'''\n".len()];
        assert!(!inner.contains("'''"));
        assert!(!TRAMPOLINE.contains('\\'));
    }
}
