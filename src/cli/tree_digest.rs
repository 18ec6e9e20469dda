//! `hoist tree-digest DIR [--list] [--exclude PATH]...`

use std::path::PathBuf;

use clap::Args;
use hoist::exit::ExitStatus;
use hoist::treedigest::read_dir_tree;

use super::Global;

#[derive(Args)]
pub struct TreeDigestArgs {
    /// A directory (a rootfs, an unpacked export).
    dir: PathBuf,
    /// Print the canonical listing instead of the digest.
    #[arg(long)]
    list: bool,
    /// Leave out this path and everything under it (e.g. /proc).
    #[arg(long, value_name = "PATH")]
    exclude: Vec<String>,
}

pub fn run(global: &Global, args: &TreeDigestArgs) -> anyhow::Result<ExitStatus> {
    let mut tree = read_dir_tree(&args.dir)?;
    for e in &args.exclude {
        tree.exclude(e);
    }
    if args.list {
        print!("{}", tree.listing());
    } else if global.json {
        println!(
            "{}",
            serde_json::json!({"digest": tree.digest().to_string(), "entries": tree.entries.len()})
        );
    } else {
        println!("{}", tree.digest());
    }
    Ok(ExitStatus::Success)
}
