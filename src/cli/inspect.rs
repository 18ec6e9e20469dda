//! `hoist inspect REF`: an image's digest, platform, layers, labels and
//! the axes it can serve, from its manifest and config (no layer download).

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use hoist::doctor::human_bytes;
use hoist::exit::ExitStatus;
use hoist::inspect::{inspect, Axes, AxesSource, InspectOptions, Inspection};
use hoist::platform::Platform;
use hoist::pull::{NoProgress, PullOptions, PullPolicy};
use hoist::reference::{LayoutRef, Reference};
use hoist::registry::Client;

use super::fetch::Wanted;
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist inspect oci:target/hoist-test/samples/oci:pyfix   # digest, layers, labels; tasks from the layers
  hoist inspect --json localhost:5000/samples/pyfix:latest | jq .axes
  hoist inspect --platform linux/arm64 --raw docker.io/library/alpine")]
pub struct InspectArgs {
    #[arg(value_name = "REF", help = ref_help!("The image to describe."))]
    image: String,
    /// Describe this platform's image of a multi-platform index
    /// (os/arch[/variant]) [default: this host's].
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<Platform>,
    /// Print the platform's image manifest exactly as stored, and nothing
    /// else (as `skopeo inspect --raw` does for a single-platform image).
    #[arg(long, conflicts_with = "config")]
    raw: bool,
    /// Print the image config exactly as stored, and nothing else (as
    /// `skopeo inspect --config --raw`).
    #[arg(long)]
    config: bool,
    /// Do not read layers already on this machine to find the axes; take
    /// them from the labels only (faster for a large image).
    #[arg(long)]
    no_layers: bool,
}

pub fn run(global: &Global, args: &InspectArgs) -> anyhow::Result<ExitStatus> {
    let wanted = Wanted::parse(&args.image)?;
    let store = global.store()?;
    let client = Client::new(global.registry_options()?)?;
    let opts = InspectOptions {
        platform: args.platform.clone(),
        read_layers: !args.no_layers,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let reference = match &wanted {
        Wanted::Image(r) => r.clone(),
        // Built (or found built for the same inputs) into the store,
        // then read from the store as the layout it is.
        Wanted::Built(_) => {
            let pull = PullOptions {
                platform: args.platform.clone(),
                policy: PullPolicy::Missing,
                ..PullOptions::default()
            };
            let built = rt.block_on(wanted.obtain(&store, &client, &pull, Arc::new(NoProgress)))?;
            Reference::Layout(LayoutRef {
                path: store.root().to_path_buf(),
                tag: None,
                digest: Some(built.digest),
            })
        }
    };
    let mut i = rt
        .block_on(inspect(&store, &client, &reference, &opts))
        .with_context(|| format!("inspecting {wanted}"))?;
    i.reference = wanted.to_string();
    if args.raw || args.config {
        let bytes = if args.raw {
            &i.raw_manifest
        } else {
            &i.raw_config
        };
        std::io::stdout().write_all(bytes)?;
    } else if global.json {
        outln!("{}", serde_json::to_string_pretty(&i)?)?;
    } else if !global.quiet {
        out!("{}", render(&i))?;
    }
    Ok(ExitStatus::Success)
}

fn render(i: &Inspection) -> String {
    let mut out = String::new();
    let mut field = |name: &str, lines: Vec<String>| {
        let lines = if lines.is_empty() {
            vec!["-".to_string()]
        } else {
            lines
        };
        for (k, line) in lines.iter().enumerate() {
            let label = if k == 0 { name } else { "" };
            out.push_str(&format!("{label:<12} {line}\n"));
        }
    };
    let one = |s: Option<String>| s.into_iter().collect::<Vec<_>>();
    field("Reference", vec![i.reference.clone()]);
    field("Digest", vec![i.manifest_digest.to_string()]);
    if let Some(platforms) = &i.index_platforms {
        let list: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        field("Index", vec![format!("{} ({})", i.digest, list.join(", "))]);
    }
    field("Platform", vec![i.platform.to_string()]);
    field("Created", one(i.created.clone()));
    field(
        "Size",
        vec![format!(
            "{} (config and {} layer{}, as downloaded)",
            human_bytes(i.size),
            i.layers.len(),
            if i.layers.len() == 1 { "" } else { "s" }
        )],
    );
    field("Axes", axes_lines(&i.axes));
    field(
        "Entrypoint",
        one(i.entrypoint.as_ref().map(|v| v.join(" "))),
    );
    field("Cmd", one(i.cmd.as_ref().map(|v| v.join(" "))));
    field("Workdir", one(i.working_dir.clone()));
    field("User", one(i.user.clone()));
    field("Env", i.env.clone());
    field(
        "Labels",
        i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    );
    field(
        "Layers",
        i.layers
            .iter()
            .map(|l| {
                format!(
                    "{}  {:>10}  {}",
                    l.digest,
                    human_bytes(l.size),
                    l.media_type
                )
            })
            .collect(),
    );
    out
}

/// `benchmark: yes (3 tasks: a, b, c), agent: no, gateway: no`, then where
/// that comes from.
fn axes_lines(a: &Axes) -> Vec<String> {
    let note = a.note.clone().unwrap_or_default();
    if a.source == AxesSource::Unknown {
        return vec![note];
    }
    let word = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    let mut bench = format!("benchmark: {}", word(a.benchmark));
    if let Some(tasks) = a.tasks.as_ref().filter(|t| !t.is_empty()) {
        const SHOWN: usize = 5;
        let mut list = tasks[..tasks.len().min(SHOWN)].join(", ");
        if tasks.len() > SHOWN {
            list.push_str(", …");
        }
        bench.push_str(&format!(" ({} tasks: {list})", tasks.len()));
    }
    let mut lines = vec![format!(
        "{bench}, agent: {}, gateway: {}",
        word(a.agent),
        word(a.gateway)
    )];
    lines.push(match a.source {
        AxesSource::Layers => "read from the layers".to_string(),
        _ => format!("from the labels, not checked; {note}"),
    });
    lines
}
