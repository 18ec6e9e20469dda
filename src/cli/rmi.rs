//! `hoist rmi REF...`: forget images and sweep what nothing references.

use std::collections::BTreeSet;

use clap::Args;
use hoist::doctor::human_bytes;
use hoist::exit::ExitStatus;

use super::Global;

#[derive(Args)]
#[command(
    after_help = "Each REF is a name as `hoist images` shows it, a reference as `hoist pull` \
takes it, or a digest (or at least 4 hex characters of one), which removes every name of that image. \
Blobs, unpacked layers and subtrees another image still uses stay. As podman does, the images \
found are removed even when another REF is not known; that one is reported and the exit status is 1.

Examples:
  hoist rmi oci:target/hoist-test/samples/oci:pyfix localhost:5000/samples/agent-oracle:latest
  hoist rmi 3f2a9c81d0e4                         # by the DIGEST column of hoist images"
)]
pub struct RmiArgs {
    #[arg(
        required = true,
        value_name = "REF",
        help = ref_help!("Images to remove: a name as `hoist images` shows it, a digest (at least 4 hex characters of one), or a REF.")
    )]
    refs: Vec<String>,
}

pub fn run(global: &Global, args: &RmiArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let mut names = BTreeSet::new();
    let mut unknown = Vec::new();
    for r in &args.refs {
        let found = hoist::inspect::names_for(&store, r)?;
        if found.is_empty() {
            unknown.push(r.clone());
        }
        names.extend(found);
    }
    let (gone, report) = hoist::rootfs::gc::remove_images(&store, |d| {
        hoist::store::ref_name_of(d).is_some_and(|n| names.contains(n))
    })?;
    let untagged: Vec<&str> = gone.iter().filter_map(hoist::store::ref_name_of).collect();
    if global.json {
        let v = serde_json::json!({
            "untagged": untagged,
            "not_known": unknown,
            "removed": report,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else if !global.quiet {
        for n in &untagged {
            outln!("untagged {n}")?;
        }
        if !gone.is_empty() {
            outln!(
                "removed {} blobs, {} layers, {} subtrees ({} of blobs)",
                report.blobs,
                report.layers,
                report.subtrees,
                human_bytes(report.bytes)
            )?;
        }
    }
    for r in &unknown {
        hoist::errln!("error: {r}: image not known (`hoist images` lists the store's)");
    }
    Ok(if unknown.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
