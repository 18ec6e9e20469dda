//! `hoist conformance` (conformance/README.md): every case of a matrix runs in
//! crane mode and in container mode, and the two must agree — the normalised
//! `result.json` field by field, and the crane rootfs path by path with
//! Docker's own export of the combination container. A combination built by
//! `docker build` is compared too, for information only.
//!
//! The pure parts — [`matrix`] parsing and selection, [`jsondiff`],
//! [`listing`] comparison and the [`report`] table — are apart from the
//! I/O in [`run`] and [`docker`], which drive `hoist`, `docker`, `skopeo`
//! and `tar` as subprocesses (the same commands a user would type).

pub mod cases;
pub mod docker;
pub mod jsondiff;
pub mod listing;
pub mod matrix;
pub mod report;

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::reference::ReferenceError;
use crate::treedigest::TreeError;

#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("could not start {program} (is it installed?): {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{what} failed ({status}):\n{stderr}")]
    Command {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("listing the tree: {0}")]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl ConformanceError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ConformanceError {
        let path = path.into();
        move |source| ConformanceError::Io { path, source }
    }
}

/// Lines of a failed command's stderr kept in a report.
const STDERR_TAIL: usize = 20;

/// The last [`STDERR_TAIL`] lines of `bytes`.
pub(crate) fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL)..].join("\n")
}

/// Run `cmd` (stdin closed) and collect its output, whatever its status.
pub(crate) fn output(cmd: &mut Command) -> Result<Output, ConformanceError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| ConformanceError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })
}

/// Run `cmd` and require success; `what` names it in the error.
pub(crate) fn checked(cmd: &mut Command, what: &str) -> Result<Output, ConformanceError> {
    let o = output(cmd)?;
    if !o.status.success() {
        return Err(ConformanceError::Command {
            what: what.to_string(),
            status: o.status.to_string(),
            stderr: tail(&o.stderr),
        });
    }
    Ok(o)
}

/// A file or directory name from any text: `[A-Za-z0-9._-]` kept, every
/// other character `_`.
pub(crate) fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_plain_names() {
        assert_eq!(slug("pyfix/t/agent-oracle+gw"), "pyfix_t_agent-oracle_gw");
        assert_eq!(slug("a b:c"), "a_b_c");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let t = tail(text.as_bytes());
        assert!(t.starts_with("line 10\n"), "{t}");
        assert!(t.ends_with("line 29"), "{t}");
    }

    #[test]
    fn checked_reports_status_and_stderr() {
        let err = checked(
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
            "the thing",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("the thing failed"), "{text}");
        assert!(text.contains("boom"), "{text}");
        assert!(matches!(
            output(&mut Command::new("/nonexistent/tool")),
            Err(ConformanceError::Spawn { .. })
        ));
    }
}
