//! Process exit codes, as the design fixes them (§3).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything worked.
    Success = 0,
    /// The command failed and changed nothing.
    Failed = 1,
    /// Bad usage (clap reports its own errors with 2 as well).
    Usage = 2,
    /// Activation failed and the previous release was restored.
    RolledBack = 3,
    /// Another command holds the lock on the root.
    Locked = 4,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}
