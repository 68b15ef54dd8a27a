//! Python interpreters and the tools that install into a venv (both sides).

use std::fmt;
use std::path::PathBuf;

use super::Explain;

#[derive(Debug)]
pub enum PythonError {
    /// The interpreter given misses what the app asks for.
    NotWhatTheAppAsks {
        missed: String,
        version: String,
        executable: PathBuf,
        suggestion: String,
    },
    NoMatchingInterpreter {
        needs: String,
        /// What was tried, and what each is.
        tried: Vec<String>,
        suggestion: String,
    },
    BadRequiresPython {
        spec: String,
    },
    PipReportUnreadable {
        error: String,
        pip: String,
        executable: PathBuf,
    },
    InterpreterNotFound {
        python: String,
        detail: String,
    },
    NoPip {
        python: String,
    },
    UvNotFound,
    RequirementFailed {
        requirement: String,
        tail: String,
    },
    /// Every version of `requirement` needs another Python (`needs`).
    RequirementNeedsPython {
        requirement: String,
        needs: String,
        version: String,
        executable: PathBuf,
    },
    NotAWheel {
        path: PathBuf,
    },
    ToolFailed {
        tool: String,
        command: String,
        status: String,
        tail: String,
    },
    BaseInterpreterUnknown {
        link: PathBuf,
    },
}

impl Explain for PythonError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PythonError::*;
        match self {
            NotWhatTheAppAsks {
                missed,
                version,
                executable,
                ..
            } => write!(
                f,
                "the app asks for {missed}, but this build uses Python {version} at {}",
                executable.display()
            ),
            NoMatchingInterpreter { needs, tried, .. } => {
                write!(f, "the app asks for {needs}, and no interpreter on PATH matches (")?;
                if tried.is_empty() {
                    f.write_str("none of python3, python3.N could be run)")
                } else {
                    write!(f, "tried: {})", tried.join("; "))
                }
            }
            BadRequiresPython { spec } => write!(
                f,
                "requires-python in pyproject.toml is not a version specifier: {spec}"
            ),
            PipReportUnreadable { error, pip, .. } => write!(
                f,
                "pip's resolution report could not be read ({error}); pip {pip} may be too old for --report"
            ),
            InterpreterNotFound { python, detail } => {
                write!(f, "Python interpreter `{python}` not found{detail}")
            }
            NoPip { python } => write!(
                f,
                "Python interpreter {python} has no pip, which builds the wheels"
            ),
            UvNotFound => f.write_str("--installer uv was asked for, but `uv` is not on PATH"),
            RequirementFailed { requirement, tail } => write!(
                f,
                "requirement `{requirement}` failed to build or download:\n{tail}"
            ),
            RequirementNeedsPython {
                requirement,
                needs,
                version,
                executable,
            } => write!(
                f,
                "`{requirement}` needs Python {needs}; this build uses Python {version} at {}",
                executable.display()
            ),
            NotAWheel { path } => write!(f, "{}: not a wheel file name", path.display()),
            ToolFailed {
                tool,
                command,
                status,
                tail,
            } => write!(
                f,
                "{tool} failed: `{command}` exited with {status}:\n{tail}"
            ),
            BaseInterpreterUnknown { link } => write!(
                f,
                "{}: cannot find the base interpreter the venv links to",
                link.display()
            ),
        }
    }

    fn fix(&self) -> Option<String> {
        use PythonError::*;
        let fix = match self {
            NotWhatTheAppAsks { suggestion, .. } => format!(
                "pass --python naming a matching interpreter (e.g. --python {suggestion}), or set `python` under [tool.release]"
            ),
            NoMatchingInterpreter { suggestion, .. } => format!(
                "install a matching Python and pass --python /path/to/python{suggestion} (or set `python` under [tool.release]), or change what the app declares"
            ),
            BadRequiresPython { .. } => {
                "write it as a PEP 440 specifier, e.g. requires-python = \">=3.11\"".into()
            }
            PipReportUnreadable { executable, .. } => format!(
                "upgrade pip in the build interpreter (`{} -m pip install -U pip`)",
                executable.display()
            ),
            ToolFailed { .. } => return None,
            InterpreterNotFound { .. } => "install it, or pass --python /path/to/python3.X (or set `python` under [tool.release])".into(),
            NoPip { python } => format!("`{python} -m ensurepip`, or install python3-pip"),
            UvNotFound => "`pip install uv`, or use --installer pip".into(),
            RequirementFailed { .. } => "pin a version that has a wheel for this interpreter, make its build dependencies available (--find-links), or fix the package".into(),
            RequirementNeedsPython {
                requirement,
                version,
                ..
            } => format!(
                "build with a matching interpreter: --python python3.X, `python` under [tool.release], or declare it in the app (requires-python in pyproject.toml, .python-version or runtime.txt) so the build picks it; or pin a version of `{requirement}` that supports Python {version}"
            ),
            NotAWheel { .. } => "remove that file from the wheel directory".into(),
            BaseInterpreterUnknown { .. } => "build with an interpreter given by its path (--python /path/to/python3.X)".into(),
        };
        Some(fix)
    }
}
