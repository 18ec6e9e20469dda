//! The task pipeline (docs/pipeline.md): `hoist task-exec`, the supervisor that
//! runs inside the sandbox as root and takes one task from task.json to
//! `/output/task/result.json`.
//!
//! Pure rules live in their own modules with their tests ([`task`],
//! [`users`], [`grade`], [`clock`], [`context`]); [`supervisor`] holds the
//! steps that start processes, and this file the entry point and the
//! assembly of the result.
//!
//! Decisions the design leaves open, made here:
//! - `HOIST_MODEL_URL` is always in the agent's environment, empty when no
//!   gateway runs, so the set of variable names is the same in every run.
//! - The agent timeout is one budget for `install.sh` and `run` together,
//!   and `durations_ms.agent` covers both.
//! - A failing, unstartable or timed-out `install.sh` is the agent's
//!   failure: its code is `agent.exit_code` (126 when it cannot be
//!   executed), `run` is skipped, the task is still graded.
//! - Every path the supervisor touches or hands to a child is resolved
//!   under the root (`--root`, `/` in the sandbox), including the
//!   program of an absolute grade command.

pub mod changes;
pub mod clock;
pub mod context;
pub mod grade;
pub mod guard;
mod health;
pub mod jail;
pub mod killuid;
pub mod process;
pub mod root;
mod supervisor;
pub mod task;
pub mod users;

use std::path::PathBuf;
use std::time::SystemTime;

pub use context::{AgentPhase, Isolation, Mode, Network, RunContext, Session, CONTEXT_PATH};

use crate::result::{
    self, AgentOutcome, Durations, GradeOutcome, InfraError, Stage, TaskResult, SCHEMA,
};
use root::Root;
use supervisor::Supervisor;

/// Where the task's logs and result.json go.
pub const OUTPUT_DIR: &str = "/output/task";

/// What `hoist task-exec` was asked to do.
#[derive(Clone, Debug)]
pub struct TaskExecOptions {
    /// The root all sandbox paths are resolved under: `/` in the sandbox,
    /// a scratch tree in tests.
    pub root: PathBuf,
    /// The task id; may be left out when the image holds one task.
    pub task: Option<String>,
    /// The run context file; default [`CONTEXT_PATH`] under the root.
    pub context: Option<PathBuf>,
    /// A descriptor of the pid namespace's procfs, opened by the chroot
    /// stage before the chroot (there is no `/proc` inside).
    pub proc_fd: Option<i32>,
}

/// Only a failure to write result.json itself is an error of task-exec;
/// everything else is recorded in the result.
#[derive(Debug, thiserror::Error)]
pub enum TaskExecError {
    #[error("cannot create the output directory {path}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the steps found out, gathered into the result at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub task_id: String,
    pub agent: AgentOutcome,
    pub grade: GradeOutcome,
    /// The grader's verdict; only counts when there is no infra error.
    pub resolved: bool,
    pub agent_ms: u64,
    pub grade_ms: u64,
}

/// What task-exec left in [`OUTPUT_DIR`] for the host.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    /// `result.json`: the run's last word (a whole run, a grading session,
    /// or an agent session that failed).
    Result(Box<TaskResult>),
    /// `agent.json` and `changes.tar`: an agent session that ended well;
    /// the host grades in a fresh rootfs next.
    AgentPhase(AgentPhase),
    /// Only `gateway.log`: a gateway session, whose end (the gateway
    /// exited, or could not start) the agent session reports.
    GatewayLog,
}

/// Run the session the context names and write what it ends with (see
/// [`Written`]). Only one of `result.json` and `agent.json` is left in
/// the output: whatever install.sh or the image put there under those
/// names is replaced or removed, so the host can tell a finished run from
/// one to grade by which of the two it finds.
pub fn task_exec(opts: &TaskExecOptions) -> Result<Written, TaskExecError> {
    let started = SystemTime::now();
    let root = Root::new(&opts.root);
    let out = root.path(OUTPUT_DIR);
    root::ensure_root_dir(&out, 0o755).map_err(|source| TaskExecError::Output {
        path: out.clone(),
        source,
    })?;
    let ctx_path = opts
        .context
        .clone()
        .unwrap_or_else(|| root.path(CONTEXT_PATH));
    let (ctx, ctx_error) = match context::load_context(&ctx_path) {
        Ok(c) => (c, None),
        Err(e) => (RunContext::default(), Some(infra(Stage::Sandbox, &e))),
    };
    // Opened for this process by the chroot stage; nothing here has
    // touched that number.
    let procfs = opts.proc_fd.map(crate::confine::procfs::Procfs::inherited);
    let scope = killuid::Scope::detect(&root.path("/proc"), procfs);
    let mut sup = Supervisor::new(&root, &ctx, out.clone(), scope);
    sup.rec.task_id = opts.task.clone().unwrap_or_default();
    let mut started_at = clock::rfc3339(started);
    if let Session::Grade(phase) = &ctx.session {
        // One result for the two sessions: the agent's part is the first
        // session's.
        sup.rec.task_id = phase.task_id.clone();
        sup.rec.agent = phase.agent.clone();
        sup.rec.agent_ms = phase.agent_ms;
        started_at = phase.started_at.clone();
    }
    let outcome = match ctx_error {
        Some(e) => Err(e),
        None => sup.execute(opts.task.as_deref()),
    };
    sup.cleanup();
    if ctx.session == Session::Gateway {
        if let Err(e) = outcome {
            crate::errln!("task-exec: gateway session: {}", e.message);
        }
        return Ok(Written::GatewayLog);
    }
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        root::write_atomic(&path, bytes).map_err(|source| TaskExecError::Write { path, source })
    };
    let remove = |name: &str| {
        let path = out.join(name);
        root::remove_if_present(&path).map_err(|source| TaskExecError::Write { path, source })
    };
    if let (Ok(Some(changes)), Session::Agent) = (&outcome, &ctx.session) {
        let phase = AgentPhase {
            schema: context::AGENT_PHASE_SCHEMA.to_string(),
            task_id: sup.rec.task_id.clone(),
            agent: sup.rec.agent.clone(),
            agent_ms: sup.rec.agent_ms,
            started_at,
            changes: changes.clone(),
        };
        remove("result.json")?;
        let json =
            crate::json::to_vec_pretty(&phase, "agent.json").map_err(|e| TaskExecError::Write {
                path: out.join("agent.json"),
                source: e.into(),
            })?;
        write("agent.json", &json)?;
        return Ok(Written::AgentPhase(phase));
    }
    let result = build_result(&ctx, &sup.rec, outcome.err(), started_at);
    remove("agent.json")?;
    let json = result.json().map_err(|e| TaskExecError::Write {
        path: out.join("result.json"),
        source: e.into(),
    })?;
    write("result.json", json.as_bytes())?;
    Ok(Written::Result(Box::new(result)))
}

/// The result of a run from its parts. An infra error makes the task
/// unresolved whatever the grader said.
pub fn build_result(
    ctx: &RunContext,
    rec: &Record,
    infra_error: Option<InfraError>,
    started_at: String,
) -> TaskResult {
    let resolved = rec.resolved && infra_error.is_none();
    TaskResult {
        schema: SCHEMA.to_string(),
        task_id: rec.task_id.clone(),
        resolved,
        score: result::score(resolved),
        agent: rec.agent.clone(),
        grade: rec.grade.clone(),
        images: ctx.images.clone(),
        platform: ctx.platform.clone(),
        infra_error,
        mode: ctx.mode.as_str().to_string(),
        isolation: ctx.isolation.as_str().to_string(),
        hoist_version: ctx.hoist_version.clone(),
        started_at,
        durations_ms: Durations {
            materialize: ctx.materialize_ms,
            agent: rec.agent_ms,
            grade: rec.grade_ms,
        },
    }
}

/// An infra error whose message is `err` and each of its causes.
pub(crate) fn infra(stage: Stage, err: &dyn std::error::Error) -> InfraError {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    InfraError { stage, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::TestStatus;

    fn graded(resolved: bool) -> Record {
        Record {
            task_id: "t".into(),
            agent: AgentOutcome {
                exit_code: Some(0),
                timed_out: false,
            },
            grade: GradeOutcome {
                exit_code: Some(0),
                timed_out: false,
                tests: [("a".to_string(), TestStatus::Passed)].into(),
                ..GradeOutcome::default()
            },
            resolved,
            agent_ms: 5,
            grade_ms: 6,
        }
    }

    #[test]
    fn resolved_run_scores_one() {
        let r = build_result(&RunContext::default(), &graded(true), None, "now".into());
        assert!(r.resolved);
        assert_eq!(r.score, 1.0);
        assert_eq!(r.schema, SCHEMA);
        assert_eq!(r.task_id, "t");
        assert_eq!(r.started_at, "now");
    }

    #[test]
    fn unresolved_run_scores_zero() {
        let r = build_result(&RunContext::default(), &graded(false), None, "now".into());
        assert!(!r.resolved);
        assert_eq!(r.score, 0.0);
        assert_eq!(r.infra_error, None);
    }

    #[test]
    fn infra_error_overrides_a_resolved_verdict() {
        let e = InfraError {
            stage: Stage::Sandbox,
            message: "x".into(),
        };
        let r = build_result(
            &RunContext::default(),
            &graded(true),
            Some(e.clone()),
            "now".into(),
        );
        assert!(!r.resolved);
        assert_eq!(r.score, 0.0);
        assert_eq!(r.infra_error, Some(e));
    }

    #[test]
    fn context_facts_are_copied() {
        let mut ctx = RunContext {
            mode: Mode::Container,
            isolation: Isolation::Chroot,
            hoist_version: "7.0.0".into(),
            platform: "linux/arm64".into(),
            materialize_ms: 77,
            ..RunContext::default()
        };
        ctx.images.agent.digest = "sha256:bb".into();
        let r = build_result(&ctx, &graded(true), None, "now".into());
        assert_eq!(r.mode, "container");
        assert_eq!(r.isolation, "chroot");
        assert_eq!(r.hoist_version, "7.0.0");
        assert_eq!(r.platform, "linux/arm64");
        assert_eq!(r.images.agent.digest, "sha256:bb");
        assert_eq!(
            r.durations_ms,
            Durations {
                materialize: 77,
                agent: 5,
                grade: 6
            }
        );
    }

    #[test]
    fn infra_message_carries_the_causes() {
        let e = context::ContextError::Read {
            path: "/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let i = infra(Stage::Sandbox, &e);
        assert_eq!(i.message, "cannot read the run context /x: disk on fire");
    }
}
