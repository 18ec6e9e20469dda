//! `hoist conformance [--matrix FILE] [--cases GLOB]... [--json-out FILE]
//! [--keep DIR]`, and `hoist conformance --compare CRANE_OUT CONTAINER_OUT`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use hoist::conformance::cases::{compare_outputs, run_cases, Event, Options};
use hoist::conformance::docker::default_docker;
use hoist::conformance::jsondiff::show;
use hoist::conformance::matrix::Matrix;
use hoist::conformance::report::{render_details, render_table};
use hoist::exit::ExitStatus;

use super::Global;

#[derive(Args)]
#[command(after_help = "Examples:
  hoist conformance --list
  hoist conformance --cases 'pyfix/*' --junit conformance.xml --keep /tmp/conformance
  hoist conformance --compare runs/crane runs/container")]
pub struct ConformanceArgs {
    /// The matrix of cases (see conformance/README.md).
    #[arg(long, value_name = "FILE", default_value = "conformance/matrix.toml")]
    matrix: PathBuf,
    /// Run only the cases whose name matches GLOB (`*`, `?`); repeatable.
    #[arg(long = "cases", value_name = "GLOB")]
    cases: Vec<String>,
    /// Write the report as JSON to FILE.
    #[arg(long = "json-out", value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// Write the report as JUnit XML to FILE (one test case per matrix
    /// case), for CI systems' test views.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Keep every run's OUT directory, the trees and their listings in DIR.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// The OCI layout `${layout}` stands for, instead of the matrix's
    /// `[defaults] layout`.
    #[arg(long, value_name = "DIR")]
    layout: Option<String>,
    /// Skip the informational `docker build` comparison.
    #[arg(long)]
    no_docker_build: bool,
    /// Print the selected cases and exit.
    #[arg(long)]
    list: bool,
    /// Compare two runs' result.json (OUT directories or the files) and
    /// exit; 1 when they differ.
    #[arg(
        long,
        num_args = 2,
        value_names = ["CRANE_OUT", "CONTAINER_OUT"],
        conflicts_with_all = ["cases", "json_out", "junit", "keep", "list"]
    )]
    compare: Option<Vec<PathBuf>>,
}

pub fn run(global: &Global, args: &ConformanceArgs) -> anyhow::Result<ExitStatus> {
    if let Some(pair) = &args.compare {
        return compare(global, &pair[0], &pair[1]);
    }
    let text = std::fs::read_to_string(&args.matrix)
        .with_context(|| format!("reading the matrix {}", args.matrix.display()))?;
    let env = |name: &str| std::env::var(name).ok();
    let usage = |e: hoist::conformance::matrix::MatrixError| {
        super::report(&anyhow::Error::new(e).context(format!("in {}", args.matrix.display())));
        ExitStatus::Usage
    };
    let matrix = match Matrix::parse(&text, &env, args.layout.as_deref()) {
        Ok(m) => m,
        Err(e) => return Ok(usage(e)),
    };
    let cases = match matrix.select(&args.cases) {
        Ok(c) => c,
        Err(e) => return Ok(usage(e)),
    };
    if args.list {
        if global.json {
            let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
            outln!("{}", serde_json::to_string_pretty(&names)?)?;
            return Ok(ExitStatus::Success);
        }
        for c in &cases {
            outln!("{}", c.name)?;
        }
        return Ok(ExitStatus::Success);
    }
    let opts = Options {
        hoist: std::env::current_exe().context("finding this hoist binary")?,
        hoist_args: global.forwarded(),
        docker: default_docker(),
        insecure: global.insecure.clone(),
        keep: args.keep.clone(),
        docker_build: !args.no_docker_build,
    };
    let progress = !global.quiet;
    let report = run_cases(
        &args.matrix.display().to_string(),
        &cases,
        &opts,
        &mut |e| {
            if progress {
                show_progress(&e);
            }
        },
    )?;
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, hoist::conformance::report::junit(&report))
            .with_context(|| format!("writing the JUnit report to {}", path.display()))?;
    }
    let details = render_details(&report);
    if global.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else if !global.quiet {
        out!("{}{details}", render_table(&report))?;
    }
    if report.passed {
        return Ok(ExitStatus::Success);
    }
    if global.quiet || global.json {
        hoist::err!("{details}");
    }
    Ok(ExitStatus::Failure)
}

fn show_progress(e: &Event<'_>) {
    let mut err = std::io::stderr().lock();
    // Progress lines are best effort: a closed stderr must not stop the run.
    let _ = match e {
        Event::Case { index, total, name } => write!(err, "[{index}/{total}] {name} ..."),
        Event::Step(s) => writeln!(err, "{s} ..."),
        Event::CaseDone(c) => writeln!(
            err,
            " crane {} {:.1}s, container {} {:.1}s, result {}, rootfs {}: {}",
            c.crane.verdict.text(),
            c.crane.seconds,
            c.container.verdict.text(),
            c.container.seconds,
            c.result.cell(),
            c.rootfs.cell(),
            c.status.text()
        ),
        Event::DockerBuildDone(_) => Ok(()),
    };
}

fn compare(
    global: &Global,
    crane: &std::path::Path,
    container: &std::path::Path,
) -> anyhow::Result<ExitStatus> {
    let diffs = compare_outputs(crane, container)?;
    if global.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "match": diffs.is_empty(),
                "differences": diffs,
            }))?
        )?;
        return Ok(if diffs.is_empty() {
            ExitStatus::Success
        } else {
            ExitStatus::Failure
        });
    }
    if diffs.is_empty() {
        outln!("result.json: match (after normalising the volatile fields)")?;
        return Ok(ExitStatus::Success);
    }
    outln!(
        "result.json differs in {} field{} (crane | container):",
        diffs.len(),
        if diffs.len() == 1 { "" } else { "s" }
    )?;
    for d in &diffs {
        outln!("  {}: {} | {}", d.path, show(&d.crane), show(&d.container))?;
    }
    Ok(ExitStatus::Failure)
}
