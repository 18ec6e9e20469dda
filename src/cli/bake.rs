//! `hoist bake --benchmark REF --agent REF [--gateway REF] --tag DEST`

use anyhow::Context as _;
use clap::Args;
use hoist::bake::{self, BakeInputs, Destination};
use hoist::exit::{ExitStatus, UsageError};
use hoist::platform::Platform;
use hoist::registry::Client;

use super::checks;
use super::fetch::{pull_axes, PullFlags};
use super::run::static_binary;
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist bake --benchmark oci:target/hoist-test/samples/oci:pyfix --agent oci:target/hoist-test/samples/oci:agent-oracle --tag oci:/tmp/baked:pyfix-oracle
  hoist bake --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-oracle:latest --tag localhost:5000/baked/pyfix-oracle:v1
  hoist bake --benchmark localhost:5000/samples/pyfix:latest --agent localhost:5000/samples/agent-oracle:latest --tag docker-archive:/tmp/pyfix-oracle.tar && docker load -i /tmp/pyfix-oracle.tar")]
pub struct BakeArgs {
    #[arg(long, value_name = "REF", help = ref_help!("The benchmark image: all its layers, unchanged."))]
    benchmark: String,
    #[arg(long, value_name = "REF", help = ref_help!("The agent image: its /opt/agent, as one appended layer."))]
    agent: String,
    #[arg(long, value_name = "REF", help = ref_help!("The gateway image: its /opt/gateway, as one appended layer."))]
    gateway: Option<String>,
    /// Where to write the image: oci:PATH:TAG (an OCI layout),
    /// HOST[:PORT]/REPO[:TAG] (a registry), or
    /// docker-archive:PATH[:NAME:TAG] (for `docker load`).
    #[arg(long, value_name = "DEST")]
    tag: Destination,
    #[command(flatten)]
    pull: PullFlags,
}

pub fn run(global: &Global, args: &BakeArgs) -> anyhow::Result<ExitStatus> {
    // The cheap checks, before anything is pulled.
    let hoist_binary = static_binary()?;
    if let Some(p) = &args.pull.platform {
        binary_runs_on(&hoist_binary, p)?;
    }
    let store = global.store()?;
    let mut refs = vec![args.benchmark.as_str(), args.agent.as_str()];
    refs.extend(args.gateway.as_deref());
    let pulled = pull_axes(global, &store, &refs, &args.pull)?;
    let tasks = checks::benchmark_tasks(&store, &pulled[0])?;
    checks::require_tasks(&args.benchmark, &tasks)?;
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
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else if !global.quiet {
        outln!("{}", baked.manifest_digest)?;
    }
    Ok(ExitStatus::Success)
}

/// The supervisor baked in as `/.hoist/hoist` runs inside the image: it
/// must be built for the image's architecture (read from its ELF header).
fn binary_runs_on(binary: &std::path::Path, platform: &Platform) -> Result<(), UsageError> {
    let mut header = [0u8; 20];
    let read = std::fs::File::open(binary)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
    // e_machine, little-endian (every architecture below is).
    let arch = match (read, u16::from_le_bytes([header[18], header[19]])) {
        (Err(_), _) => None,
        (Ok(()), 62) => Some("amd64"),
        (Ok(()), 183) => Some("arm64"),
        (Ok(()), 3) => Some("386"),
        (Ok(()), 40) => Some("arm"),
        (Ok(()), 21) => Some("ppc64le"),
        (Ok(()), 22) => Some("s390x"),
        (Ok(()), 243) => Some("riscv64"),
        (Ok(()), _) => None,
    };
    match arch {
        Some(a) if a != platform.architecture => Err(UsageError::new(
            "--platform",
            format!(
                "{platform}: the hoist baked in as /.hoist/hoist ({}) is built for {a}; set HOIST_STATIC_BINARY to a static hoist built for {}",
                binary.display(),
                platform.architecture
            ),
        )),
        _ => Ok(()),
    }
}
