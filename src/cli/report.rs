//! `hoist report DIR... [--out DIR]`: evaluations (the shards of one, on
//! many machines) summed up as one (docs/eval.md).

use std::path::PathBuf;

use clap::Args;
use hoist::eval::report::{self, Entry, Summary};
use hoist::exit::ExitStatus;
use hoist::export::{self, OutDir};

use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist report runs/pyfix/shards/*               # the shards of one --shard-dir evaluation
  hoist report --out runs/all runs/machine-a runs/machine-b
  hoist report --partial --json runs/pyfix/shards/* | jq .resolved")]
pub struct ReportArgs {
    /// Evaluation directories (each a `hoist eval --out`).
    #[arg(value_name = "DIR", required = true)]
    dirs: Vec<PathBuf>,
    /// Write summary.json and junit.xml here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Sum up what the directories hold even when shards of the plan are
    /// missing (a job that never wrote its shard); said on stderr.
    #[arg(long)]
    partial: bool,
}

pub fn run(global: &Global, args: &ReportArgs) -> anyhow::Result<ExitStatus> {
    let tasks = match hoist::eval::gather(&args.dirs, false) {
        Err(e @ hoist::eval::EvalError::Incomplete { .. }) if args.partial => {
            hoist::errln!(
                "hoist report: {}",
                e.to_string().split("; give").next().unwrap_or_default()
            );
            hoist::eval::gather(&args.dirs, true)?
        }
        other => other?,
    };
    // The shards ran side by side: the longest is the evaluation's.
    let wall_ms = args
        .dirs
        .iter()
        .filter_map(|d| std::fs::read(d.join("summary.json")).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter_map(|v| v["wall_ms"].as_u64())
        .max()
        .unwrap_or(0);
    let entries: Vec<Entry<'_>> = tasks
        .iter()
        .map(|t| Entry {
            id: &t.id,
            result: t.result.as_ref(),
            resumed: false,
        })
        .collect();
    let out = args.out.as_deref().map(OutDir::lock).transpose()?;
    let summary = publish(global, out.as_ref(), &entries, wall_ms, None)?;
    Ok(if summary.infra_error > 0 {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

/// Sum `entries` up: `summary.json` and `junit.xml` into `out` (when
/// given), and the table (or, with `--json`, the document) on stdout.
pub fn publish(
    global: &Global,
    out: Option<&OutDir>,
    entries: &[Entry<'_>],
    wall_ms: u64,
    downloaded: Option<report::Downloaded>,
) -> anyhow::Result<Summary> {
    let summary = Summary {
        downloaded,
        ..report::summarize(entries.iter().copied(), wall_ms)
    };
    if let Some(dir) = out {
        export::write_file(dir, "summary.json", &serde_json::to_vec_pretty(&summary)?)?;
        export::write_file(
            dir,
            "junit.xml",
            report::junit("hoist eval", entries.iter().copied()).as_bytes(),
        )?;
    }
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
    } else if !global.quiet {
        out!("{}", report::table(&summary))?;
    }
    Ok(summary)
}
