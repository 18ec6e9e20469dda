//! `hoist materialize --benchmark REF [--agent REF] [--gateway REF] --out DIR`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use hoist::exit::ExitStatus;
use hoist::pull::{pull, NoProgress, PullOptions, Pulled};
use hoist::reference::Reference;
use hoist::registry::Client;
use hoist::rootfs::{materialize, Axes, RootfsMode};
use hoist::store::Store;

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
}

/// Pull (or find complete in the store) every axis image, all at once:
/// resolving tags costs a registry round trip each.
pub fn pull_axes(global: &Global, store: &Store, refs: &[&str]) -> anyhow::Result<Vec<Pulled>> {
    let client = Client::new(global.registry_options()?)?;
    let references = refs
        .iter()
        .map(|r| r.parse::<Reference>())
        .collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let pulls = references.iter().map(|reference| {
        let client = &client;
        async move {
            pull(
                store,
                client,
                reference,
                &PullOptions::default(),
                Arc::new(NoProgress),
            )
            .await
            .with_context(|| format!("pulling {reference}"))
        }
    });
    rt.block_on(futures_util::future::try_join_all(pulls))
}

pub fn run(global: &Global, args: &MaterializeArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let mut refs = vec![args.benchmark.as_str()];
    refs.extend(args.agent.as_deref());
    refs.extend(args.gateway.as_deref());
    let pulled = pull_axes(global, &store, &refs)?;
    let mut it = pulled.iter().skip(1);
    let axes = Axes {
        benchmark: &pulled[0],
        agent: args.agent.as_ref().and_then(|_| it.next()),
        gateway: args.gateway.as_ref().and_then(|_| it.next()),
    };
    let m = materialize(&store, &axes, &args.out, args.rootfs, true)
        .with_context(|| format!("materializing into {}", args.out.display()))?;
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
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else if !global.quiet {
        println!("{} ({:?})", m.root.display(), m.mode);
    }
    Ok(ExitStatus::Success)
}
