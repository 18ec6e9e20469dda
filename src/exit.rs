//! Process exit codes (docs/exit-codes.md), one place so the CLI and the docs
//! agree.

use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The command completed (a run completed, whatever its verdict).
    Success,
    /// An infrastructure error: pull, unpack, sandbox, gateway or grade.
    Failure,
    /// Bad usage: a malformed flag or reference.
    Usage,
    /// A pinned digest did not match what was found (`--locked`, `@digest`).
    DigestMismatch,
    /// SIGINT, SIGTERM or SIGHUP: `128 + signal`, after the sandbox was
    /// taken down.
    Interrupted(crate::interrupt::Interrupted),
}

impl From<ExitStatus> for ExitCode {
    fn from(s: ExitStatus) -> ExitCode {
        ExitCode::from(match s {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::DigestMismatch => 3,
            ExitStatus::Interrupted(sig) => sig.exit_code(),
        })
    }
}

/// Bad usage found by a check on one flag (or variable) before anything
/// costly runs: exit 2, the flag named first (when there is one).
#[derive(Debug, thiserror::Error)]
#[error("{flag}{}{message}", if flag.is_empty() { "" } else { ": " })]
pub struct UsageError {
    pub flag: String,
    pub message: String,
}

impl UsageError {
    pub fn new(flag: impl Into<String>, message: impl Into<String>) -> UsageError {
        UsageError {
            flag: flag.into(),
            message: message.into(),
        }
    }
}
