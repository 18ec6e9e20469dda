//! `hoist eval --dry-run`: the plan's unique layers, the bytes to download
//! and the peak disk, from the manifests alone (`hoist::eval::dryrun`),
//! as a table or the `hoist.dryrun/v1` document.

use anyhow::Context as _;
use hoist::doctor::human_bytes;
use hoist::eval::dryrun::{dry_run, DryRun, DryRunOptions};
use hoist::eval::EvalPlan;
use hoist::exit::ExitStatus;
use hoist::registry::Client;
use hoist::store::Store;

use super::Global;

pub fn run(
    global: &Global,
    store: &Store,
    client: &Client,
    rt: &tokio::runtime::Runtime,
    plan: &EvalPlan,
    max_store_size: Option<u64>,
    jobs: usize,
) -> anyhow::Result<ExitStatus> {
    let opts = DryRunOptions {
        jobs,
        max_store_size,
    };
    let report = dry_run(store, client, rt, plan, opts)
        .context("hoist eval --dry-run: cannot read every image the plan needs")?;
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else if !global.quiet {
        out!("{}", table(&report))?;
    }
    Ok(ExitStatus::Success)
}

/// The report as a short table: the counts and download figures are exact
/// (from the manifests); each unpacked figure says how it is known.
fn table(r: &DryRun) -> String {
    let mut t = Table::default();
    let mut roles = Vec::new();
    for role in ["benchmark", "agent", "gateway"] {
        let n = r.images.iter().filter(|i| i.roles.contains(&role)).count();
        if n > 0 {
            roles.push(format!("{n} {role}"));
        }
    }
    let tasks = plural(r.tasks, "task");
    t.row(
        "images",
        format!("{} ({}), for {tasks}", r.images.len(), roles.join(", ")),
    );
    t.row(
        "unique layers",
        format!(
            "{}, {} compressed (and {}, {})",
            r.layers.count,
            human_bytes(r.layers.bytes),
            plural(r.configs.count, "config"),
            human_bytes(r.configs.bytes)
        ),
    );
    let blobs = r.layers.count + r.configs.count;
    t.row(
        "already stored",
        format!(
            "{} of {blobs} blobs, {}",
            r.stored.count,
            human_bytes(r.stored.bytes)
        ),
    );
    t.row(
        "to download",
        format!(
            "{}, {}",
            plural(r.download.count, "blob"),
            human_bytes(r.download.bytes)
        ),
    );
    unpacked_rows(&mut t, r);
    peak_rows(&mut t, r);
    t.row(
        "",
        "(images, layers, stored and to download are exact, from the manifests)".into(),
    );
    if r.mode == "container" {
        t.row(
            "",
            "(container mode: Docker also keeps each task's combination image, not counted)".into(),
        );
    }
    t.0
}

fn unpacked_rows(t: &mut Table, r: &DryRun) {
    let u = &r.unpacked;
    t.row(
        "unpacked",
        format!(
            "{}, {} of it unpacked already",
            human_bytes(u.bytes),
            human_bytes(u.present_bytes)
        ),
    );
    let parts = [
        (
            u.measured_bytes,
            "measured in the store's caches".to_string(),
        ),
        (
            u.tar_bytes,
            "tar size, from layer sizes and gzip trailers (disk use differs by headers and blocks)"
                .to_string(),
        ),
        (
            u.estimated_bytes,
            format!(
                "estimated: {:.1} × compressed, no trailer to read",
                u.estimate_ratio
            ),
        ),
        (
            u.bound_bytes,
            "at most: agent and gateway subtrees not yet extracted".to_string(),
        ),
    ];
    for (bytes, how) in parts {
        if bytes > 0 {
            t.row("", format!("  {:>10}  {how}", human_bytes(bytes)));
        }
    }
}

fn peak_rows(t: &mut Table, r: &DryRun) {
    let p = &r.peak_disk;
    let window = format!(
        "{} consecutive {} from {} need {} together",
        p.window_tasks,
        if p.window_tasks == 1 { "task" } else { "tasks" },
        p.window_first_task.as_deref().unwrap_or("-"),
        human_bytes(p.window_bytes)
    );
    match p.max_store_size {
        None => {
            t.row(
                "peak disk",
                format!(
                    "+{}: the store grows by the downloads and the new unpacked layers",
                    human_bytes(p.growth_bytes)
                ),
            );
        }
        Some(max) => {
            t.row(
                "peak disk",
                format!(
                    "{} at most for the whole store (--max-store-size {}; {window})",
                    human_bytes(p.bytes),
                    human_bytes(max)
                ),
            );
            t.row(
                "",
                format!(
                    "without the limit the store would grow by {}",
                    human_bytes(p.growth_bytes)
                ),
            );
        }
    }
    t.row("", format!("plus {}", p.not_counted));
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Two columns: a label and its figures.
#[derive(Default)]
struct Table(String);

impl Table {
    fn row(&mut self, label: &str, value: String) {
        self.0.push_str(&format!("{label:<16}{value}\n"));
    }
}
