//! `hoist pull REF...`

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use hoist::exit::ExitStatus;
use hoist::platform::Platform;
use hoist::pull::{Progress, PullOptions, PullPolicy, Pulled};
use hoist::registry::Client;

use super::fetch::Wanted;
use super::progress::Bars;
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist pull docker.io/library/alpine:3.20 oci:target/hoist-test/samples/oci:pyfix
  hoist pull --platform linux/arm64 docker://docker.io/library/debian:bookworm
  hoist pull --json localhost:5000/samples/agent-oracle:latest | jq -r '.[].digest'")]
pub struct PullArgs {
    #[arg(required = true, value_name = "REF", help = ref_help!("The images to pull (always asking the registry for a tag)."))]
    refs: Vec<String>,
    /// The platform wanted (os/arch[/variant]): chosen from a
    /// multi-platform index; a single-platform image of another platform
    /// is an error [default: this host's].
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<Platform>,
    /// Blobs to download at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    jobs: usize,
}

pub fn run(global: &Global, args: &PullArgs) -> anyhow::Result<ExitStatus> {
    let refs = args
        .refs
        .iter()
        .map(|r| Wanted::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let store = global.store()?;
    let client = Client::new(global.registry_options()?)?;
    // `hoist pull` is asked to pull: every tag is resolved at the
    // registry, as `docker pull` does.
    let opts = PullOptions {
        platform: args.platform.clone(),
        jobs: args.jobs,
        policy: PullPolicy::Always,
    };
    let progress: Arc<dyn Progress> = Bars::for_terminal(global.quiet || global.json);
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut pulled = Vec::new();
    for r in &refs {
        let p = rt.block_on(r.obtain(&store, &client, &opts, progress.clone()))?;
        if !global.json && !global.quiet {
            print_human(&p)?;
        }
        pulled.push(p);
    }
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&pulled)?)?;
    }
    Ok(ExitStatus::Success)
}

fn print_human(p: &Pulled) -> anyhow::Result<()> {
    outln!("{} {} {}", p.reference, p.manifest_digest, p.platform)?;
    if p.digest != p.manifest_digest {
        outln!("  index {}", p.digest)?;
    }
    Ok(())
}
