//! `hoist store verify`

use clap::{Args, Subcommand};
use hoist::exit::ExitStatus;

use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist store verify
  hoist --store /var/cache/hoist store verify --json | jq .dropped")]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-hash every blob and compare every cached layer and subtree with
    /// the tree digest recorded when it was unpacked; drop what differs.
    /// Exit 0 when everything verified, 1 when anything was dropped or
    /// could not be checked.
    #[command(after_help = "Examples:
  hoist store verify                             # one line per dropped entry, then the counts
  hoist store verify --json | jq .not_checked")]
    Verify,
}

pub fn run(global: &Global, args: &StoreArgs) -> anyhow::Result<ExitStatus> {
    match args.command {
        StoreCommand::Verify => verify(global),
    }
}

fn verify(global: &Global) -> anyhow::Result<ExitStatus> {
    // Verifying what is not a store would make an empty one and call it
    // clean: a mistyped --store must not pass.
    let root = global.store_root();
    if !root.join("oci-layout").is_file() {
        return Err(hoist::exit::UsageError::new(
            global.store_flag(),
            format!(
                "{} holds no store (no oci-layout file): nothing to verify",
                root.display()
            ),
        )
        .into());
    }
    let store = global.store()?;
    let report = hoist::rootfs::verify::verify(&store)?;
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for d in &report.dropped {
            outln!("{d}")?;
        }
        for n in &report.not_checked {
            outln!("not checked: {}: {}", n.path.display(), n.why)?;
        }
        if !global.quiet {
            outln!(
                "verified {} blobs, {} layers, {} subtrees: {} dropped, {} not checked",
                report.blobs,
                report.layers,
                report.subtrees,
                report.dropped.len(),
                report.not_checked.len()
            )?;
        }
    }
    Ok(if report.clean() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
