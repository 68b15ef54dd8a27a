//! Process ids, and what can be wrong with a pidfile: the data that the
//! `/proc` reader (`host::procs`) produces and the reload errors carry.

/// A process id, as `/proc` and kill(2) spell it.
pub type Pid = i32;

/// Why a pidfile could not give a live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidfileProblem {
    Missing,
    Garbage(String),
    /// The pid is not running (a stale pidfile from a crash or a stopped service).
    Dead(Pid),
}

impl std::fmt::Display for PidfileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidfileProblem::Missing => f.write_str("does not exist (is the service running?)"),
            PidfileProblem::Garbage(text) => write!(f, "does not hold a pid: {text:?}"),
            PidfileProblem::Dead(pid) => {
                write!(f, "names pid {pid}, which is not running (stale pidfile)")
            }
        }
    }
}
