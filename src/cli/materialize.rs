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
pub struct MaterializeArgs {
    /// The benchmark image: its whole root filesystem.
    #[arg(long, value_name = "REF")]
    benchmark: String,
    /// The agent image: only its /opt/agent.
    #[arg(long, value_name = "REF")]
    agent: Option<String>,
    /// The gateway image: only its /opt/gateway.
    #[arg(long, value_name = "REF")]
    gateway: Option<String>,
    /// Where to build the rootfs (absent or empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// overlay: mount cached layers (root only); copy: apply layers onto a
    /// plain directory; auto: overlay when permitted.
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
