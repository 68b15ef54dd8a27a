//! Python interpreters and the tools that install into a venv (both sides).

use std::fmt;
use std::path::PathBuf;

use super::Explain;

#[derive(Debug)]
pub enum PythonError {
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
            ToolFailed { .. } => return None,
            InterpreterNotFound { .. } => "install it, or pass --python /path/to/python3.X (or set `python` under [tool.release])".into(),
            NoPip { python } => format!("`{python} -m ensurepip`, or install python3-pip"),
            UvNotFound => "`pip install uv`, or use --installer pip".into(),
            RequirementFailed { .. } => "pin a version that has a wheel for this interpreter, make its build dependencies available (--find-links), or fix the package".into(),
            NotAWheel { .. } => "remove that file from the wheel directory".into(),
            BaseInterpreterUnknown { .. } => "build with an interpreter given by its path (--python /path/to/python3.X)".into(),
        };
        Some(fix)
    }
}
