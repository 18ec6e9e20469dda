//! `hoist doctor [--registry HOST|REF]... [--json]`

use clap::Args;
use hoist::doctor::{examine, render, Options};
use hoist::exit::ExitStatus;
use hoist::store::Store;

use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist doctor
  hoist doctor --registry localhost:5000 --registry docker.io/library/alpine
  hoist doctor --json | jq .")]
pub struct DoctorArgs {
    /// Also check that this registry answers `GET /v2/` (200, or 401 for
    /// one that wants credentials): a host[:port] or an image reference.
    /// Repeatable.
    #[arg(long = "registry", value_name = "HOST|REF")]
    registries: Vec<String>,
}

/// Exit 0 when crane mode can run a task here, 1 when it cannot.
pub fn run(global: &Global, args: &DoctorArgs) -> anyhow::Result<ExitStatus> {
    let opts = Options {
        store: global.store.clone().unwrap_or_else(Store::default_root),
        self_exe: std::env::current_exe()?,
        static_binary: super::run::static_binary().map_err(|e| format!("{e:#}")),
        registries: args.registries.clone(),
        registry_options: global.registry_options()?,
    };
    let report = examine(&opts);
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else if !global.quiet {
        out!("{}", render(&report))?;
    }
    Ok(if report.crane_can_run() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
