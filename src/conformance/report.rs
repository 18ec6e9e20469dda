//! What a conformance run found, as JSON (`--json-out`) and as the table a
//! user reads. The verdict of a case and the rendering are pure.
//!
//! The renderers `write!` into a `String`, which cannot fail; their
//! `let _ =` discards an always-`Ok` result.

use std::fmt::Write as _;

use serde::Serialize;

use super::jsondiff::{show, FieldDiff};
use super::listing::PathDiff;

/// The value of the report's `schema` field.
pub const SCHEMA: &str = "hoist.conformance/v1";

/// Differences listed per section in the text report; the JSON has all.
pub const SHOWN_DIFFERENCES: usize = 40;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: String,
    pub matrix: String,
    /// No case failed (expected differences and docker build rows do not
    /// count).
    pub passed: bool,
    pub summary: Summary,
    pub cases: Vec<CaseReport>,
    /// Informational: the combination built by `docker build` against the
    /// crane (bake) tree. Never a failure: docker build is not the
    /// reference.
    pub docker_build: Vec<DockerBuildReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub cases: usize,
    pub pass: usize,
    pub fail: usize,
    pub expected_difference: usize,
    pub stale_expectation: usize,
    pub docker_build_combinations: usize,
    pub docker_build_differ: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub benchmark: String,
    pub agent: String,
    pub gateway: Option<String>,
    pub task: Option<String>,
    /// Set only by the deliberately broken cases.
    pub container_image_override: Option<String>,
    pub container_agent_override: Option<String>,
    pub expect_differ: Option<String>,
    pub crane: ModeRun,
    pub container: ModeRun,
    pub result: Check<FieldDiff>,
    pub rootfs: Check<PathDiff>,
    pub status: Status,
}

/// One `hoist run` of a case.
#[derive(Clone, Debug, Serialize)]
pub struct ModeRun {
    pub verdict: Verdict,
    pub exit_code: Option<i32>,
    pub seconds: f64,
    /// The run's OUT directory (gone afterwards unless `--keep`).
    pub out: String,
    /// Why the run did not complete: the infra_error, or hoist's stderr.
    pub error: Option<String>,
    /// Container mode: the image Docker ran (`run.json`).
    pub docker_image_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Resolved,
    Unresolved,
    /// result.json has an `infra_error`.
    InfraError,
    /// No readable result.json at all.
    NoResult,
}

impl Verdict {
    /// From a result.json, if there is one.
    pub fn of(result: Option<&serde_json::Value>) -> Verdict {
        match result {
            None => Verdict::NoResult,
            Some(r) if !r["infra_error"].is_null() => Verdict::InfraError,
            Some(r) if r["resolved"] == true => Verdict::Resolved,
            Some(_) => Verdict::Unresolved,
        }
    }

    pub fn completed(self) -> bool {
        matches!(self, Verdict::Resolved | Verdict::Unresolved)
    }

    pub fn text(self) -> &'static str {
        match self {
            Verdict::Resolved => "resolved",
            Verdict::Unresolved => "unresolved",
            Verdict::InfraError => "infra-error",
            Verdict::NoResult => "no-result",
        }
    }
}

/// A comparison: it matched, it found differences, or it could not be made.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check<D> {
    pub status: CheckStatus,
    pub differences: Vec<D>,
    /// Why it could not be made.
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    Match,
    Differ,
    NotCompared,
}

impl<D> Check<D> {
    pub fn of(differences: Vec<D>) -> Check<D> {
        let status = if differences.is_empty() {
            CheckStatus::Match
        } else {
            CheckStatus::Differ
        };
        Check {
            status,
            differences,
            reason: None,
        }
    }

    pub fn not_compared(reason: impl Into<String>) -> Check<D> {
        Check {
            status: CheckStatus::NotCompared,
            differences: Vec::new(),
            reason: Some(reason.into()),
        }
    }

    /// `match`, `DIFFERS(N)` or `n/a`, as the table shows it.
    pub fn cell(&self) -> String {
        match self.status {
            CheckStatus::Match => "match".into(),
            CheckStatus::Differ => format!("DIFFERS({})", self.differences.len()),
            CheckStatus::NotCompared => "n/a".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    /// It differs, and the matrix says why (`expect_differ`).
    ExpectedDifference,
    /// Marked `expect_differ` but everything matched: the mark can go.
    StaleExpectation,
}

impl Status {
    pub fn text(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::ExpectedDifference => "expected",
            Status::StaleExpectation => "pass (stale expect_differ)",
        }
    }
}

/// A case passes when both modes completed (no infra error), their
/// normalised results match and so do their trees.
pub fn case_status(
    crane: &ModeRun,
    container: &ModeRun,
    result: &Check<FieldDiff>,
    rootfs: &Check<PathDiff>,
    expect_differ: Option<&str>,
) -> Status {
    let clean = crane.verdict.completed()
        && container.verdict.completed()
        && result.status == CheckStatus::Match
        && rootfs.status == CheckStatus::Match;
    match (clean, expect_differ.is_some()) {
        (true, false) => Status::Pass,
        (true, true) => Status::StaleExpectation,
        (false, true) => Status::ExpectedDifference,
        (false, false) => Status::Fail,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DockerBuildReport {
    pub combination: String,
    pub benchmark: String,
    pub agent: String,
    pub gateway: Option<String>,
    pub dockerfile: String,
    /// `crane` is the bake/crane tree, `container` the docker build one.
    pub rootfs: Check<PathDiff>,
    pub seconds: f64,
}

impl Report {
    pub fn new(
        matrix: String,
        cases: Vec<CaseReport>,
        docker_build: Vec<DockerBuildReport>,
    ) -> Report {
        let count = |s: Status| cases.iter().filter(|c| c.status == s).count();
        let summary = Summary {
            cases: cases.len(),
            pass: count(Status::Pass),
            fail: count(Status::Fail),
            expected_difference: count(Status::ExpectedDifference),
            stale_expectation: count(Status::StaleExpectation),
            docker_build_combinations: docker_build.len(),
            docker_build_differ: docker_build
                .iter()
                .filter(|d| d.rootfs.status != CheckStatus::Match)
                .count(),
        };
        Report {
            schema: SCHEMA.into(),
            matrix,
            passed: summary.fail == 0,
            summary,
            cases,
            docker_build,
        }
    }
}

const HEADER: [&str; 8] = [
    "CASE",
    "CRANE",
    "CONTAINER",
    "RESULT",
    "ROOTFS",
    "CRANE TIME",
    "CONTAINER TIME",
    "STATUS",
];

/// The table: one row per case, then one informational row per
/// `docker build` combination.
pub fn render_table(report: &Report) -> String {
    let mut rows: Vec<[String; 8]> = vec![HEADER.map(str::to_string)];
    for c in &report.cases {
        rows.push([
            c.name.clone(),
            c.crane.verdict.text().into(),
            c.container.verdict.text().into(),
            c.result.cell(),
            c.rootfs.cell(),
            seconds(c.crane.seconds),
            seconds(c.container.seconds),
            c.status.text().into(),
        ]);
    }
    for d in &report.docker_build {
        rows.push([
            format!("docker-build: {}", d.combination),
            "-".into(),
            "-".into(),
            "-".into(),
            d.rootfs.cell(),
            "-".into(),
            seconds(d.seconds),
            "info".into(),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn seconds(s: f64) -> String {
    format!("{s:.1}s")
}

/// The differences behind every row that is not a clean pass, then the
/// summary line.
/// The report as JUnit XML (`hoist conformance --junit FILE`): one case
/// per matrix case; a case whose modes differ unexpectedly is a failure
/// naming the fields and paths that differ.
pub fn junit(report: &Report) -> String {
    use crate::eval::report::{junit_cases, Case, CaseVerdict};
    let cases = report.cases.iter().map(|c| {
        let verdict = match c.status {
            Status::Fail => {
                let mut text = String::new();
                for (mode, run) in [("crane", &c.crane), ("container", &c.container)] {
                    if let Some(e) = &run.error {
                        let _ = writeln!(text, "{mode} run ({}): {e}", run.verdict.text());
                    }
                }
                for d in &c.result.differences {
                    let _ = writeln!(
                        text,
                        "result.json {}: {} | {}",
                        d.path,
                        show(&d.crane),
                        show(&d.container)
                    );
                }
                for d in &c.rootfs.differences {
                    let _ = writeln!(text, "rootfs {}", path_line(d));
                }
                CaseVerdict::Failure("crane and container mode differ".into(), text)
            }
            Status::Pass | Status::ExpectedDifference | Status::StaleExpectation => {
                CaseVerdict::Pass
            }
        };
        Case {
            name: c.name.clone(),
            classname: report.matrix.clone(),
            seconds: c.crane.seconds + c.container.seconds,
            verdict,
        }
    });
    junit_cases("hoist conformance", cases)
}

pub fn render_details(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.cases {
        if c.status == Status::Pass {
            continue;
        }
        let _ = writeln!(out, "\n{} {}", c.status.text().to_uppercase(), c.name);
        if let Some(r) = &c.expect_differ {
            let _ = writeln!(out, "  expected to differ: {r}");
        }
        for (mode, run) in [("crane", &c.crane), ("container", &c.container)] {
            if let Some(e) = &run.error {
                let _ = writeln!(out, "  {mode} run ({}): {}", run.verdict.text(), indent(e));
            }
        }
        let fields = c
            .result
            .differences
            .iter()
            .map(|d| format!("{}: {} | {}", d.path, show(&d.crane), show(&d.container)));
        section(
            &mut out,
            "result.json",
            "field",
            &c.result,
            fields,
            "crane | container",
        );
        let paths = c.rootfs.differences.iter().map(path_line);
        section(
            &mut out,
            "rootfs",
            "path",
            &c.rootfs,
            paths,
            "crane | container export",
        );
    }
    for d in &report.docker_build {
        if d.rootfs.status == CheckStatus::Match {
            continue;
        }
        let _ = writeln!(
            out,
            "\nINFO docker build of {} (not a failure: bake is the reference)",
            d.combination
        );
        let paths = d.rootfs.differences.iter().map(path_line);
        section(
            &mut out,
            "tree",
            "path",
            &d.rootfs,
            paths,
            "bake/crane | docker build",
        );
    }
    let s = &report.summary;
    let stale = match s.stale_expectation {
        0 => String::new(),
        n => format!(", {n} marked expect_differ but matched"),
    };
    let builds = match (s.docker_build_combinations, s.docker_build_differ) {
        (0, _) => "not run".to_string(),
        (1, d) => format!("1 combination, {d} differ from bake (informational)"),
        (n, d) => format!("{n} combinations, {d} differ from bake (informational)"),
    };
    let _ = writeln!(
        out,
        "\n{} cases: {} pass, {} fail, {} expected to differ{stale}; docker build: {builds}",
        s.cases,
        s.pass + s.stale_expectation,
        s.fail,
        s.expected_difference,
    );
    out
}

fn path_line(d: &PathDiff) -> String {
    let side = |s: &Option<String>| s.clone().unwrap_or_else(|| "(absent)".into());
    format!("{}: {} | {}", d.path, side(&d.crane), side(&d.container))
}

fn section<D>(
    out: &mut String,
    what: &str,
    unit: &str,
    check: &Check<D>,
    lines: impl Iterator<Item = String>,
    sides: &str,
) {
    match check.status {
        CheckStatus::Match => {}
        CheckStatus::NotCompared => {
            let reason = check.reason.as_deref().unwrap_or("?");
            let _ = writeln!(out, "  {what} not compared: {}", indent(reason));
        }
        CheckStatus::Differ => {
            let n = check.differences.len();
            let s = if n == 1 { "" } else { "s" };
            let _ = writeln!(out, "  {what} differs in {n} {unit}{s} ({sides}):");
            for l in lines.take(SHOWN_DIFFERENCES) {
                let _ = writeln!(out, "    {l}");
            }
            if n > SHOWN_DIFFERENCES {
                let _ = writeln!(
                    out,
                    "    ... and {} more (all in the JSON report)",
                    n - SHOWN_DIFFERENCES
                );
            }
        }
    }
}

fn indent(s: &str) -> String {
    s.trim_end().replace('\n', "\n    ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(verdict: Verdict, seconds: f64) -> ModeRun {
        ModeRun {
            verdict,
            exit_code: Some(0),
            seconds,
            out: "/tmp/x".into(),
            error: None,
            docker_image_id: None,
        }
    }

    fn case(
        name: &str,
        result: Check<FieldDiff>,
        rootfs: Check<PathDiff>,
        expect: Option<&str>,
    ) -> CaseReport {
        let crane = run(Verdict::Resolved, 9.04);
        let container = run(Verdict::Resolved, 12.36);
        let status = case_status(&crane, &container, &result, &rootfs, expect);
        CaseReport {
            name: name.into(),
            benchmark: "oci:/s:pyfix".into(),
            agent: "oci:/s:agent-oracle".into(),
            gateway: None,
            task: Some("t".into()),
            container_image_override: None,
            container_agent_override: None,
            expect_differ: expect.map(str::to_string),
            crane,
            container,
            result,
            rootfs,
            status,
        }
    }

    fn sample() -> Report {
        let changed = PathDiff {
            path: "/testbed/t/README.md".into(),
            crane: Some("f 0644 0 0 size=1 sha256=aa".into()),
            container: Some("f 0644 0 0 size=3 sha256=bb".into()),
        };
        let resolved = FieldDiff {
            path: "resolved".into(),
            crane: Some(json!(true)),
            container: Some(json!(false)),
        };
        let gateway = PathDiff {
            path: "/opt/gateway".into(),
            crane: Some("d 0700 0 0".into()),
            container: Some("d 0755 0 0".into()),
        };
        Report::new(
            "conformance/matrix.toml".into(),
            vec![
                case(
                    "pyfix/t/agent-oracle",
                    Check::of(vec![]),
                    Check::of(vec![]),
                    None,
                ),
                case(
                    "broken/changed",
                    Check::of(vec![]),
                    Check::of(vec![changed]),
                    None,
                ),
                case(
                    "broken/agent",
                    Check::of(vec![resolved]),
                    Check::not_compared("no docker_image_id in run.json"),
                    Some("known"),
                ),
            ],
            vec![DockerBuildReport {
                combination: "pyfix + agent-scripted + gateway-replay".into(),
                benchmark: "oci:/s:pyfix".into(),
                agent: "oci:/s:agent-scripted".into(),
                gateway: Some("oci:/s:gateway-replay".into()),
                dockerfile: String::new(),
                rootfs: Check::of(vec![gateway]),
                seconds: 3.0,
            }],
        )
    }

    #[test]
    fn table_golden() {
        let expected = "\
CASE                                                   CRANE     CONTAINER  RESULT      ROOTFS      CRANE TIME  CONTAINER TIME  STATUS
pyfix/t/agent-oracle                                   resolved  resolved   match       match       9.0s        12.4s           pass
broken/changed                                         resolved  resolved   match       DIFFERS(1)  9.0s        12.4s           FAIL
broken/agent                                           resolved  resolved   DIFFERS(1)  n/a         9.0s        12.4s           expected
docker-build: pyfix + agent-scripted + gateway-replay  -         -          -           DIFFERS(1)  -           3.0s            info
";
        assert_eq!(render_table(&sample()), expected);
    }

    #[test]
    fn details_golden() {
        let expected = "
FAIL broken/changed
  rootfs differs in 1 path (crane | container export):
    /testbed/t/README.md: f 0644 0 0 size=1 sha256=aa | f 0644 0 0 size=3 sha256=bb

EXPECTED broken/agent
  expected to differ: known
  result.json differs in 1 field (crane | container):
    resolved: true | false
  rootfs not compared: no docker_image_id in run.json

INFO docker build of pyfix + agent-scripted + gateway-replay (not a failure: bake is the reference)
  tree differs in 1 path (bake/crane | docker build):
    /opt/gateway: d 0700 0 0 | d 0755 0 0

3 cases: 1 pass, 1 fail, 1 expected to differ; docker build: 1 combination, 1 differ from bake (informational)
";
        assert_eq!(render_details(&sample()), expected);
    }

    #[test]
    fn junit_fails_only_the_unexpected_difference() {
        let x = junit(&sample());
        assert!(
            x.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"0\""),
            "{x}"
        );
        assert!(x.contains("<testcase name=\"broken/changed\""), "{x}");
        assert!(
            x.contains(
                "<failure message=\"crane and container mode differ\">rootfs /testbed/t/README.md"
            ),
            "{x}"
        );
    }

    #[test]
    fn summary_and_passed() {
        let r = sample();
        assert!(!r.passed);
        assert_eq!(
            r.summary,
            Summary {
                cases: 3,
                pass: 1,
                fail: 1,
                expected_difference: 1,
                stale_expectation: 0,
                docker_build_combinations: 1,
                docker_build_differ: 1,
            }
        );
        let ok = Report::new("m".into(), r.cases[..1].to_vec(), r.docker_build.clone());
        assert!(ok.passed, "docker build rows never fail the run");
    }

    #[test]
    fn status_rules() {
        let ok = run(Verdict::Unresolved, 1.0);
        let infra = run(Verdict::InfraError, 1.0);
        let m: Check<FieldDiff> = Check::of(vec![]);
        let t: Check<PathDiff> = Check::of(vec![]);
        assert_eq!(case_status(&ok, &ok, &m, &t, None), Status::Pass);
        assert_eq!(
            case_status(&ok, &infra, &m, &t, None),
            Status::Fail,
            "an infra error is never a pass"
        );
        assert_eq!(
            case_status(&ok, &ok, &m, &Check::not_compared("x"), None),
            Status::Fail
        );
        assert_eq!(
            case_status(&ok, &ok, &m, &t, Some("r")),
            Status::StaleExpectation
        );
        assert_eq!(
            case_status(&ok, &infra, &m, &t, Some("r")),
            Status::ExpectedDifference
        );
    }

    #[test]
    fn verdict_of_result() {
        assert_eq!(Verdict::of(None), Verdict::NoResult);
        assert_eq!(
            Verdict::of(Some(&json!({"resolved": true, "infra_error": null}))),
            Verdict::Resolved
        );
        assert_eq!(
            Verdict::of(Some(&json!({"resolved": false, "infra_error": null}))),
            Verdict::Unresolved
        );
        assert_eq!(
            Verdict::of(Some(
                &json!({"resolved": false, "infra_error": {"stage": "grade"}})
            )),
            Verdict::InfraError
        );
    }

    #[test]
    fn long_difference_lists_are_cut_in_text_only() {
        let many: Vec<PathDiff> = (0..SHOWN_DIFFERENCES + 5)
            .map(|i| PathDiff {
                path: format!("/f{i}"),
                crane: None,
                container: Some("f 0644 0 0 size=0 sha256=e3".into()),
            })
            .collect();
        let r = Report::new(
            "m".into(),
            vec![case("c", Check::of(vec![]), Check::of(many), None)],
            vec![],
        );
        let text = render_details(&r);
        assert!(text.ends_with("; docker build: not run\n"), "{text}");
        assert!(
            text.contains("... and 5 more (all in the JSON report)"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["cases"][0]["rootfs"]["differences"]
                .as_array()
                .unwrap()
                .len(),
            SHOWN_DIFFERENCES + 5
        );
        assert_eq!(json["cases"][0]["rootfs"]["status"], "differ");
        assert_eq!(json["schema"], SCHEMA);
    }
}
