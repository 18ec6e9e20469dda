//! `hoist tasks REF`: the tasks an image holds (docs/eval.md).

use clap::Args;
use hoist::exit::ExitStatus;

use super::checks;
use super::fetch::{pull_axes, PullFlags};
use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist tasks oci:target/hoist-test/samples/oci:pyfix
  hoist tasks --json localhost:5000/samples/pyfix:latest | jq -r '.[]'")]
pub struct TasksArgs {
    #[arg(value_name = "REF", help = ref_help!("A benchmark image."))]
    image: String,
    #[command(flatten)]
    pull: PullFlags,
}

pub fn run(global: &Global, args: &TasksArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let pulled = pull_axes(global, &store, &[args.image.as_str()], &args.pull)?;
    // "Not a benchmark image" from the layers' headers, before anything
    // is unpacked; the listing itself unpacks them into the layer cache
    // (which tests/inspect.rs counts on).
    let scanned = checks::benchmark_tasks(&store, &pulled[0])?;
    checks::require_tasks(&args.image, &scanned).map_err(|mut e| {
        e.flag.clear();
        e
    })?;
    let ids = hoist::eval::list_tasks(&store, &pulled[0])?;
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&ids)?)?;
    } else {
        for id in &ids {
            outln!("{id}")?;
        }
    }
    Ok(ExitStatus::Success)
}
