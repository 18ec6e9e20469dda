//! `hoist gc`

use clap::Args;
use hoist::exit::ExitStatus;

use super::Global;

#[derive(Args)]
pub struct GcArgs {}

pub fn run(global: &Global, _args: &GcArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let report = hoist::rootfs::gc::gc(&store)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !global.quiet {
        println!(
            "removed {} runs, {} layers, {} subtrees, {} blobs ({} bytes)",
            report.runs, report.layers, report.subtrees, report.blobs, report.bytes
        );
    }
    Ok(ExitStatus::Success)
}
