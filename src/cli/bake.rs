//! `hoist bake --benchmark REF --agent REF [--gateway REF] --tag DEST`

use anyhow::Context as _;
use clap::Args;
use hoist::bake::{self, BakeInputs, Destination};
use hoist::exit::ExitStatus;
use hoist::registry::Client;

use super::materialize::pull_axes;
use super::run::static_binary;
use super::Global;

#[derive(Args)]
pub struct BakeArgs {
    /// The benchmark image: all its layers, unchanged.
    #[arg(long, value_name = "REF")]
    benchmark: String,
    /// The agent image: its /opt/agent, as one appended layer.
    #[arg(long, value_name = "REF")]
    agent: String,
    /// The gateway image: its /opt/gateway, as one appended layer.
    #[arg(long, value_name = "REF")]
    gateway: Option<String>,
    /// Where to write the image: oci:PATH:TAG (an OCI layout),
    /// HOST[:PORT]/REPO[:TAG] (a registry), or
    /// docker-archive:PATH[:NAME:TAG] (for `docker load`).
    #[arg(long, value_name = "DEST")]
    tag: Destination,
}

pub fn run(global: &Global, args: &BakeArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let mut refs = vec![args.benchmark.as_str(), args.agent.as_str()];
    refs.extend(args.gateway.as_deref());
    let pulled = pull_axes(global, &store, &refs)?;
    let hoist_binary = static_binary()?;
    let inputs = BakeInputs {
        benchmark: &pulled[0],
        agent: &pulled[1],
        gateway: pulled.get(2),
        hoist_binary: &hoist_binary,
        epoch: bake::source_date_epoch(),
    };
    let baked = bake::bake(&store, &inputs, Some(&args.tag.store_name()))
        .context("baking the combination image")?;
    let written = || format!("writing {}", args.tag);
    match &args.tag {
        Destination::Layout { path, tag } => {
            bake::write_layout(&store, &baked, path, tag).with_context(written)?;
        }
        Destination::DockerArchive { path, name } => {
            bake::write_docker_archive(&store, &baked, path, name.as_deref())
                .with_context(written)?;
        }
        Destination::Registry(r) => {
            let client = Client::new(global.registry_options()?)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(bake::push(&store, &client, &baked, r))?;
        }
    }
    if global.json {
        let mut v = serde_json::to_value(&baked)?;
        v["destination"] = serde_json::json!(args.tag.to_string());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !global.quiet {
        println!("{}", baked.manifest_digest);
    }
    Ok(ExitStatus::Success)
}
