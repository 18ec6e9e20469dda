//! `hoist tasks REF`: the tasks an image holds (DESIGN §10).

use clap::Args;
use hoist::exit::ExitStatus;

use super::materialize::pull_axes;
use super::Global;

#[derive(Args)]
pub struct TasksArgs {
    /// A benchmark image (registry reference or oci:PATH:TAG).
    #[arg(value_name = "REF")]
    image: String,
}

pub fn run(global: &Global, args: &TasksArgs) -> anyhow::Result<ExitStatus> {
    let store = global.store()?;
    let pulled = pull_axes(global, &store, &[args.image.as_str()])?;
    let ids = hoist::eval::list_tasks(&store, &pulled[0])?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&ids)?);
    } else {
        for id in &ids {
            println!("{id}");
        }
    }
    if ids.is_empty() {
        anyhow::bail!("{} has no task under /tasks", args.image);
    }
    Ok(ExitStatus::Success)
}
