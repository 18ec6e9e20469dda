//! `hoist lock --benchmark REF --agent REF [--gateway REF] [--lock-file FILE]`

use std::path::PathBuf;

use clap::Args;
use hoist::exit::ExitStatus;
use hoist::lock::{LockFile, Pin, DEFAULT_FILE};

use super::fetch::{pull_axes, PullFlags};
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist lock --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-oracle:latest
  hoist lock --pull always --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-oracle:latest --lock-file ci/hoist.lock
  hoist run --locked --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-oracle:latest --out runs/pinned")]
pub struct LockArgs {
    #[arg(long, value_name = "REF", help = ref_help!("The benchmark image to pin."))]
    benchmark: String,
    #[arg(long, value_name = "REF", help = ref_help!("The agent image to pin."))]
    agent: String,
    #[arg(long, value_name = "REF", help = ref_help!("The gateway image to pin, if any."))]
    gateway: Option<String>,
    /// The lock file to write (`hoist run --locked` reads it).
    #[arg(long = "lock-file", value_name = "FILE", default_value = DEFAULT_FILE)]
    lock_file: PathBuf,
    // `--pull always` pins what each tag names at the registry now; by
    // default a tag the store holds is pinned as stored (what a run uses).
    #[command(flatten)]
    pull: PullFlags,
}

pub fn run(global: &Global, args: &LockArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let mut axes = vec![
        ("benchmark", args.benchmark.as_str()),
        ("agent", args.agent.as_str()),
    ];
    if let Some(g) = &args.gateway {
        axes.push(("gateway", g.as_str()));
    }
    let refs: Vec<&str> = axes.iter().map(|(_, r)| *r).collect();
    let pulled = pull_axes(global, &store, &refs, &args.pull)?;
    let mut lock = LockFile {
        version: 1,
        ..Default::default()
    };
    for ((axis, reference), p) in axes.iter().zip(&pulled) {
        lock.axes.insert(
            axis.to_string(),
            Pin {
                reference: reference.to_string(),
                digest: p.digest.clone(),
                inputs: p.build_inputs.clone(),
            },
        );
    }
    lock.write(&args.lock_file)?;
    if global.json {
        let mut v = serde_json::to_value(&lock)?;
        v["path"] = serde_json::json!(args.lock_file);
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else if !global.quiet {
        for ((axis, reference), p) in axes.iter().zip(&pulled) {
            outln!("{axis}: {reference} {}", p.digest)?;
        }
    }
    Ok(ExitStatus::Success)
}
