//! `hoist grade OUT`: grade a saved run again (docs/pipeline.md, "Grade"). The
//! benchmark is pulled by the digest the run recorded in `OUT/run.json`,
//! a fresh rootfs of it gets the agent's changes from
//! `OUT/task/changes.tar`, and the grading session runs as in the run
//! itself; no agent or gateway runs. The new `result.json` goes to
//! `--out` (the run's own `OUT` by default, its `run.json` kept; the
//! regrade's record is `regrade.json`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Args;
use hoist::crane::{run, Agents, Regrade, RunRequest};
use hoist::exit::ExitStatus;
use hoist::export::OutDir;
use hoist::pipeline::context::MAX_AGENT_PHASE_BYTES;
use hoist::pipeline::AgentPhase;
use hoist::reference::Reference;
use hoist::rootfs::RootfsMode;
use hoist::sandbox::cgroup::parse_size;
use hoist::sandbox::{Isolation, Network};

use super::fetch::{pull_axes, PullFlags};
use super::run::{print_result, static_binary};
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist grade runs/oracle                        # writes task/result.json again, keeps run.json
  hoist grade runs/oracle --out runs/oracle-regraded --grade-timeout 20m")]
pub struct GradeArgs {
    /// The `--out` of the run to grade again (it holds run.json and
    /// task/agent.json, task/changes.tar).
    #[arg(value_name = "OUT")]
    saved: PathBuf,
    /// Where the new task/result.json, task/grade.log and regrade.json go
    /// [default: OUT].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// How the sandbox isolates the grading, as `hoist run --isolation`.
    #[arg(long, value_enum, default_value = "auto")]
    isolation: Isolation,
    /// How the fresh root filesystem is fused, as `hoist run --rootfs`.
    #[arg(long, value_enum, default_value = "auto")]
    rootfs: RootfsMode,
    /// Override the task's grade timeout: seconds, or 90s, 10m, 1h
    /// [default: task.json's grade.timeout_sec, else 300 s].
    #[arg(long, value_name = "DURATION", value_parser = super::checks::parse_duration)]
    grade_timeout: Option<u64>,
    /// Limit the grading's memory, swap excluded (512M, 2G, bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
}

/// run.json and agent.json are small; anything larger is not one.
const MAX_RECORD_BYTES: u64 = 16 << 20;

pub fn run_cmd(global: &Global, args: &GradeArgs) -> anyhow::Result<ExitStatus> {
    // Opening would make a missing directory: name it instead.
    if !args.saved.is_dir() {
        return Err(hoist::exit::UsageError::new(
            "SAVED",
            format!(
                "{}: no such directory (a run's --out, holding run.json)",
                args.saved.display()
            ),
        )
        .into());
    }
    let saved = OutDir::open(&args.saved)?;
    let task_dir = saved.subdir("task")?;
    let record = read_json(&saved, "run.json", MAX_RECORD_BYTES)?;
    if record["schema"] != "hoist.run/v1" {
        bail!(
            "{}: not a hoist run record (schema {})",
            args.saved.join("run.json").display(),
            record["schema"]
        );
    }
    let phase_path = task_dir.path().join("agent.json");
    let phase_bytes = task_dir
        .read("agent.json", MAX_AGENT_PHASE_BYTES)?
        .with_context(|| format!("{} is missing: the run ended before grading (see its result.json), or was made by a hoist older than the two-session runs", phase_path.display()))?;
    let phase = AgentPhase::from_json(&phase_bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", phase_path.display()))?;
    let before = task_dir.read("result.json", MAX_RECORD_BYTES)?;

    let images = record["images"].clone();
    let (reference, digest) = match (
        images["benchmark"]["ref"].as_str(),
        images["benchmark"]["digest"].as_str(),
    ) {
        (Some(r), Some(d)) => (r, d),
        _ => bail!(
            "{}: no images.benchmark ref and digest",
            args.saved.join("run.json").display()
        ),
    };
    // The run graded in place, or --out: locked, so no other hoist writes
    // there meanwhile.
    let out = OutDir::lock(args.out.as_deref().unwrap_or(&args.saved))?;
    let store = global.store()?;
    let t = Instant::now();
    let pinned = pin(reference, digest)?;
    let pulled = pull_axes(global, &store, &[pinned.as_str()], &PullFlags::default())?;
    let benchmark = &pulled[0];
    if benchmark.digest.to_string() != digest {
        bail!("the benchmark {reference} now resolves to {}, but the run used {digest}; grading needs the image the run used", benchmark.digest);
    }
    let pull_ms = t.elapsed().as_millis() as u64;
    let network = match record["network"].as_str() {
        Some("host") => Network::Host,
        _ => Network::None,
    };
    let req = RunRequest {
        benchmark,
        task: Some(phase.task_id.clone()),
        agents: Agents::Regrade(Regrade {
            phase,
            saved: task_dir.path().to_path_buf(),
            images,
        }),
        out: &out,
        isolation: args.isolation,
        network,
        rootfs: args.rootfs,
        recordings: None,
        agent_timeout_sec: None,
        grade_timeout_sec: args.grade_timeout,
        memory: args.memory,
        hoist_binary: static_binary()?,
        lock_file: None,
        command_line: std::env::args().collect(),
        pull_ms,
        phase: None,
    };
    let (result, record) = run(&store, &req)?;
    if let Some(before) = before.and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        let same = before["resolved"] == result["resolved"] && before["grade"] == result["grade"];
        if !global.quiet && !global.json {
            outln!(
                "{}",
                if same {
                    "the same verdict and tests as the saved result.json"
                } else {
                    "the verdict or the tests differ from the saved result.json"
                }
            )?;
        }
    }
    print_result(global, &result, record.isolation)
}

/// `reference` pinned to `digest`: a registry reference gets `@digest`
/// (the registry serves exactly those bytes); a layout is pulled as named
/// and its digest checked by the caller.
fn pin(reference: &str, digest: &str) -> anyhow::Result<String> {
    Ok(match reference.parse::<Reference>()? {
        Reference::Registry(mut r) => {
            r.digest = Some(
                digest
                    .parse()
                    .with_context(|| format!("the recorded digest {digest}"))?,
            );
            r.tag = None;
            r.to_string()
        }
        Reference::Layout(_) => reference.to_string(),
    })
}

fn read_json(dir: &OutDir, name: &str, max: u64) -> anyhow::Result<serde_json::Value> {
    let path = dir.path().join(name);
    let bytes = dir
        .read(name, max)?
        .with_context(|| format!("{} is missing", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}
