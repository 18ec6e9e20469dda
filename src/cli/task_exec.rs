//! `hoist task-exec [--task ID] [--context FILE]`: the supervisor, run inside
//! the sandbox as root (docs/pipeline.md). Hidden: users run `hoist run`.

use std::path::PathBuf;

use clap::Args;
use hoist::exit::ExitStatus;
use hoist::pipeline::{task_exec, TaskExecOptions};

#[derive(Args)]
pub struct TaskExecArgs {
    /// The task to run; may be left out when the image holds one task.
    #[arg(long, value_name = "ID")]
    task: Option<String>,
    /// The run context written by the host [default: /.hoist/context.json].
    #[arg(long, value_name = "FILE")]
    context: Option<PathBuf>,
    /// Resolve every sandbox path under DIR instead of `/` (tests only).
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    root: PathBuf,
    /// A procfs descriptor opened before the chroot (chroot isolation).
    #[arg(long, value_name = "FD", hide = true)]
    proc_fd: Option<i32>,
}

/// 0 when result.json (or, ending an agent session, agent.json) was
/// written, whatever the verdict; 1 when not. An infrastructure error is
/// said in result.json alone: the host reads it there and prints it once,
/// naming its stage (its stderr is the host's, in crane and container
/// mode alike).
pub fn run(args: &TaskExecArgs) -> anyhow::Result<ExitStatus> {
    task_exec(&TaskExecOptions {
        root: args.root.clone(),
        task: args.task.clone(),
        context: args.context.clone(),
        proc_fd: args.proc_fd,
    })?;
    Ok(ExitStatus::Success)
}
