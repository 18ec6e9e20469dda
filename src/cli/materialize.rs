//! `hoist materialize --benchmark REF [--agent REF] [--gateway REF] --out DIR`

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use hoist::exit::ExitStatus;
use hoist::rootfs::{materialize_counting, Axes, RootfsMode};

use super::fetch::{pull_showing, stored_notes, PullFlags};
use super::progress::LayerLine;
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist materialize --benchmark oci:target/hoist-test/samples/oci:pyfix --agent oci:target/hoist-test/samples/oci:agent-oracle --out /tmp/rootfs
  hoist materialize --benchmark docker.io/library/debian:bookworm --rootfs copy --out /tmp/debian && hoist tree-digest /tmp/debian")]
pub struct MaterializeArgs {
    #[arg(long, value_name = "REF", help = ref_help!("The benchmark image: its whole root filesystem."))]
    benchmark: String,
    #[arg(long, value_name = "REF", help = ref_help!("The agent image: only its /opt/agent."))]
    agent: Option<String>,
    #[arg(long, value_name = "REF", help = ref_help!("The gateway image: only its /opt/gateway."))]
    gateway: Option<String>,
    /// Where to build the rootfs (absent or empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How the root filesystem is fused from the images' layers.
    #[arg(long, value_enum, default_value = "auto")]
    rootfs: RootfsMode,
    #[command(flatten)]
    pull: PullFlags,
}

pub fn run(global: &Global, args: &MaterializeArgs) -> anyhow::Result<ExitStatus> {
    super::checks::out_dir(&args.out)?;
    let store = global.store()?;
    let mut refs = vec![args.benchmark.as_str()];
    refs.extend(args.agent.as_deref());
    refs.extend(args.gateway.as_deref());
    let progress = LayerLine::new(global.quiet || global.json);
    let pulled = pull_showing(global, &store, &refs, &args.pull, progress.bars())?;
    for line in stored_notes(global, &pulled) {
        progress.note(&line);
    }
    let mut it = pulled.iter().skip(1);
    let axes = Axes {
        benchmark: &pulled[0],
        agent: args.agent.as_ref().and_then(|_| it.next()),
        gateway: args.gateway.as_ref().and_then(|_| it.next()),
    };
    let told = |d| progress.layers(d);
    let m = materialize_counting(&store, &axes, &args.out, args.rootfs, true, &told)
        .with_context(|| format!("materializing into {}", args.out.display()))?;
    progress.finish();
    if !m.not_reproduced.is_exact() {
        let f = &m.not_reproduced;
        tracing::warn!(
            "not reproduced here: {} entries' owners, {} device nodes, {} xattrs (see `hoist doctor` for what an unprivileged user needs)",
            f.ownership_not_reproduced,
            f.devices_not_created,
            f.xattrs_not_set
        );
    }
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&m)?)?;
    } else if !global.quiet {
        outln!("{} ({:?})", m.root.display(), m.mode)?;
    }
    Ok(ExitStatus::Success)
}
