//! `hoist system df`: the store's disk use, and what `hoist gc` would free.

use clap::{Args, Subcommand};
use hoist::doctor::human_bytes;
use hoist::exit::ExitStatus;
use hoist::inspect::{DiskUsage, Row};

use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist system df
  hoist system df --json | jq .gc")]
pub struct SystemArgs {
    #[command(subcommand)]
    command: SystemCommand,
}

#[derive(Subcommand)]
enum SystemCommand {
    /// Show the store's disk use by kind (blobs, unpacked layers, agent
    /// and gateway subtrees, run directories, the scratch of `dockerfile:`
    /// builds) and how much `hoist gc` would reclaim now, without removing
    /// anything.
    #[command(
        after_help = "ACTIVE entries are kept by gc: blobs, layers and subtrees an image in the \
store references or a live run reads, the run directories of live runs, and the scratch of \
builds still running. Sizes are bytes on disk.

Examples:
  hoist system df                                # the table, then what hoist gc would remove
  hoist system df --json | jq .gc                # the counts hoist gc --json would print"
    )]
    Df,
}

pub fn run(global: &Global, args: &SystemArgs) -> anyhow::Result<ExitStatus> {
    match args.command {
        SystemCommand::Df => df(global),
    }
}

fn df(global: &Global) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let usage = hoist::inspect::usage(&store)?;
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&usage)?)?;
    } else if !global.quiet {
        out!("{}", render(&usage))?;
    }
    Ok(ExitStatus::Success)
}

fn render(u: &DiskUsage) -> String {
    let rows: [(&str, &Row); 6] = [
        ("Blobs", &u.blobs),
        ("Layers", &u.layers),
        ("Subtrees", &u.subtrees),
        ("Runs", &u.runs),
        ("Builds", &u.builds),
        ("Total", &u.total),
    ];
    let mut out = format!(
        "store {} ({} images)\n{:<10} {:>6} {:>6} {:>11} {:>11}\n",
        u.store.display(),
        u.images,
        "TYPE",
        "TOTAL",
        "ACTIVE",
        "SIZE",
        "RECLAIMABLE"
    );
    for (name, r) in rows {
        out.push_str(&format!(
            "{name:<10} {:>6} {:>6} {:>11} {:>11}\n",
            r.count,
            r.active,
            human_bytes(r.size),
            human_bytes(r.reclaimable)
        ));
    }
    let g = &u.gc;
    out.push_str(&format!(
        "hoist gc would remove {} runs, {} builds, {} layers, {} subtrees, {} blobs: {} on disk\n",
        g.runs,
        g.builds,
        g.layers,
        g.subtrees,
        g.blobs,
        human_bytes(u.total.reclaimable)
    ));
    out
}
