//! `hoist lock --benchmark REF --agent REF [--gateway REF] [--lock-file FILE]`

use std::path::PathBuf;

use clap::Args;
use hoist::exit::ExitStatus;
use hoist::lock::{LockFile, Pin, DEFAULT_FILE};

use super::fetch::{pull_axes, PullFlags};
use super::Global;

#[derive(Args)]
pub struct LockArgs {
    #[arg(long, value_name = "REF")]
    benchmark: String,
    #[arg(long, value_name = "REF")]
    agent: String,
    #[arg(long, value_name = "REF")]
    gateway: Option<String>,
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
