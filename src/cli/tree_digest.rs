//! `hoist tree-digest DIR|REF [--list] [--exclude PATH]...`

use anyhow::Context as _;
use clap::Args;
use hoist::exit::ExitStatus;
use hoist::treedigest::{read_dir_tree, LayerTree, Tree};

use super::fetch::{pull_axes, PullFlags};
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist tree-digest /tmp/rootfs --exclude /proc --exclude /dev
  hoist tree-digest oci:target/hoist-test/samples/oci:pyfix   # from the layers, nothing unpacked
  hoist tree-digest --list /tmp/rootfs | head")]
pub struct TreeDigestArgs {
    #[arg(
        value_name = "DIR|REF",
        help = ref_help!("A directory (a rootfs, an unpacked export), or an image, whose tree is then computed from its layers without unpacking.")
    )]
    target: String,
    /// Print the canonical listing instead of the digest.
    #[arg(long)]
    list: bool,
    /// Leave out this path and everything under it (e.g. /proc).
    #[arg(long, value_name = "PATH")]
    exclude: Vec<String>,
}

impl TreeDigestArgs {
    /// Whether the target is a directory on disk (not an image reference).
    pub fn is_directory(&self) -> bool {
        std::path::Path::new(&self.target).is_dir()
    }
}

pub fn run(global: &Global, args: &TreeDigestArgs) -> anyhow::Result<ExitStatus> {
    let path = std::path::Path::new(&args.target);
    let mut tree = if path.is_dir() {
        read_dir_tree(path)?
    } else {
        image_tree(global, &args.target)?
    };
    for e in &args.exclude {
        tree.exclude(e);
    }
    if global.json {
        let mut v =
            serde_json::json!({"digest": tree.digest().to_string(), "entries": tree.entries.len()});
        if args.list {
            v["listing"] = tree.listing().lines().collect();
        }
        outln!("{v}")?;
    } else if args.list {
        out!("{}", tree.listing())?;
    } else {
        outln!("{}", tree.digest())?;
    }
    Ok(ExitStatus::Success)
}

/// The image's tree from its layers, streamed from the store.
fn image_tree(global: &Global, reference: &str) -> anyhow::Result<Tree> {
    let store = global.store()?;
    let pulled = pull_axes(global, &store, &[reference], &PullFlags::default())?;
    let image = &pulled[0];
    let mut tree = LayerTree::new();
    for layer in &image.manifest.layers {
        let blob = store.blob_path(&layer.digest);
        let file =
            std::fs::File::open(&blob).with_context(|| format!("opening {}", blob.display()))?;
        let reader =
            std::io::BufReader::with_capacity(1 << 20, std::io::Read::take(file, layer.size));
        tree.apply(reader, &layer.media_type)
            .with_context(|| format!("layer {} of {reference}", layer.digest))?;
    }
    Ok(tree.finish())
}
