//! `hoist gc [--docker]`

use clap::Args;
use hoist::exit::ExitStatus;

use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist gc
  hoist gc --docker --json | jq .
  hoist system df                                # what hoist gc would reclaim, removing nothing")]
pub struct GcArgs {
    /// Also remove container mode's combination images
    /// (hoist/combination:*) from Docker, except those a container uses.
    #[arg(long)]
    docker: bool,
}

pub fn run(global: &Global, args: &GcArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let report = hoist::rootfs::gc::gc(&store)?;
    let docker = if args.docker {
        let d = hoist::container::Docker::detect()?;
        Some(d.remove_combinations()?)
    } else {
        None
    };
    if global.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some((removed, kept)) = &docker {
            v["docker_images_removed"] = serde_json::json!(removed);
            v["docker_images_in_use"] = serde_json::json!(kept);
        }
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else if !global.quiet {
        outln!(
            "removed {} runs, {} layers, {} subtrees, {} blobs ({} bytes)",
            report.runs,
            report.layers,
            report.subtrees,
            report.blobs,
            report.bytes
        )?;
        if report.builds > 0 {
            outln!(
                "removed {} scratch directories of cut-off dockerfile: builds",
                report.builds
            )?;
        }
        if let Some((removed, kept)) = &docker {
            outln!(
                "removed {} combination images from Docker{}",
                removed.len(),
                if kept.is_empty() {
                    String::new()
                } else {
                    format!("; kept {} that containers use", kept.len())
                }
            )?;
        }
    }
    Ok(ExitStatus::Success)
}
