//! What an evaluation comes to: `summary.json` (`hoist.summary/v1`), the
//! table on stdout, and `junit.xml` (one test case per task, which GitHub
//! Actions and GitLab show as tests).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::result::TaskResult;

pub const SUMMARY_SCHEMA: &str = "hoist.summary/v1";

/// `summary.json`. Every task is in exactly one of `resolved`,
/// `unresolved`, `infra_error` and `not_run`; `timed_out` lists the
/// completed tasks whose agent or grader hit its timeout.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub schema: &'static str,
    pub total: usize,
    /// Ran to a verdict: resolved plus unresolved.
    pub completed: usize,
    pub resolved: usize,
    pub unresolved: usize,
    pub timed_out: usize,
    pub infra_error: usize,
    /// Not run: the evaluation was interrupted first.
    pub not_run: usize,
    /// Resolved over total.
    pub resolved_rate: f64,
    pub ids: Ids,
    /// The images the results were made from, each digest once.
    pub digests: Digests,
    /// Tasks kept from an earlier, interrupted or partial, evaluation.
    pub resumed: usize,
    pub wall_ms: u64,
    /// What this evaluation's pulls downloaded; absent in a summary of
    /// merged shards (`hoist report`), which cannot know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloaded: Option<Downloaded>,
}

/// Blobs downloaded, and their bytes (a blob found in the store, or
/// resumed, counts only what came over the network).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Downloaded {
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ids {
    pub resolved: Vec<String>,
    pub unresolved: Vec<String>,
    pub timed_out: Vec<String>,
    pub infra_error: Vec<String>,
    pub not_run: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Digests {
    pub benchmark: BTreeSet<String>,
    pub agent: BTreeSet<String>,
    pub gateway: BTreeSet<String>,
}

/// One task as the summary sees it.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub id: &'a str,
    pub result: Option<&'a TaskResult>,
    pub resumed: bool,
}

/// Sum the tasks up, in their order.
pub fn summarize<'a>(entries: impl IntoIterator<Item = Entry<'a>>, wall_ms: u64) -> Summary {
    let mut s = Summary {
        schema: SUMMARY_SCHEMA,
        wall_ms,
        ..Summary::default()
    };
    for e in entries {
        s.total += 1;
        s.resumed += usize::from(e.resumed);
        let id = e.id.to_string();
        let Some(r) = e.result else {
            s.ids.not_run.push(id);
            continue;
        };
        s.digests
            .benchmark
            .insert(r.images.benchmark.digest.clone());
        s.digests.agent.insert(r.images.agent.digest.clone());
        if let Some(g) = &r.images.gateway {
            s.digests.gateway.insert(g.digest.clone());
        }
        if r.infra_error.is_some() {
            s.ids.infra_error.push(id);
            continue;
        }
        if r.agent.timed_out || r.grade.timed_out {
            s.ids.timed_out.push(id.clone());
        }
        if r.resolved {
            s.ids.resolved.push(id);
        } else {
            s.ids.unresolved.push(id);
        }
    }
    s.resolved = s.ids.resolved.len();
    s.unresolved = s.ids.unresolved.len();
    s.timed_out = s.ids.timed_out.len();
    s.infra_error = s.ids.infra_error.len();
    s.not_run = s.ids.not_run.len();
    s.completed = s.resolved + s.unresolved;
    s.resolved_rate = if s.total == 0 {
        0.0
    } else {
        s.resolved as f64 / s.total as f64
    };
    s
}

/// The summary as a table, for a terminal or a log.
pub fn table(s: &Summary) -> String {
    let mut t = String::new();
    let pct = |n: usize| {
        if s.total == 0 {
            0.0
        } else {
            100.0 * n as f64 / s.total as f64
        }
    };
    let _ = writeln!(t, "{:<12} {:>6}", "tasks", s.total);
    for (name, n) in [
        ("resolved", s.resolved),
        ("unresolved", s.unresolved),
        ("timed out", s.timed_out),
        ("infra error", s.infra_error),
        ("not run", s.not_run),
    ] {
        let _ = writeln!(t, "{name:<12} {n:>6}  {:>5.1}%", pct(n));
    }
    if s.resumed > 0 {
        let _ = writeln!(
            t,
            "({} kept from an earlier run of this evaluation)",
            s.resumed
        );
    }
    for (what, ids) in [
        ("infra error", &s.ids.infra_error),
        ("not run", &s.ids.not_run),
    ] {
        if !ids.is_empty() {
            let _ = writeln!(t, "{what}: {}", ids.join(" "));
        }
    }
    t
}

/// One test case of a JUnit report.
pub struct Case {
    pub name: String,
    pub classname: String,
    pub seconds: f64,
    pub verdict: CaseVerdict,
}

pub enum CaseVerdict {
    Pass,
    /// The test ran and did not pass: message and detail text.
    Failure(String, String),
    /// It could not be run to a verdict: type and message.
    Error(String, String),
    Skipped(String),
}

/// A JUnit XML report: one suite named `suite` holding `cases`, in the
/// form GitHub Actions' and GitLab's test reports read.
pub fn junit_cases(suite: &str, cases: impl IntoIterator<Item = Case>) -> String {
    let mut body = String::new();
    let (mut tests, mut failures, mut errors, mut skipped) = (0, 0, 0, 0);
    let mut seconds = 0.0;
    for c in cases {
        tests += 1;
        seconds += c.seconds;
        let _ = write!(
            body,
            "  <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">",
            xml(&c.name),
            xml(&c.classname),
            c.seconds
        );
        match &c.verdict {
            CaseVerdict::Pass => {}
            CaseVerdict::Failure(message, text) => {
                failures += 1;
                let _ = write!(
                    body,
                    "<failure message=\"{}\">{}</failure>",
                    xml(message),
                    xml(text)
                );
            }
            CaseVerdict::Error(kind, message) => {
                errors += 1;
                let _ = write!(
                    body,
                    "<error type=\"{}\" message=\"{}\"/>",
                    xml(kind),
                    xml(message)
                );
            }
            CaseVerdict::Skipped(message) => {
                skipped += 1;
                let _ = write!(body, "<skipped message=\"{}\"/>", xml(message));
            }
        }
        body.push_str("</testcase>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{seconds:.3}\">\n{body} </testsuite>\n</testsuites>\n",
        xml(suite)
    )
}

/// `junit.xml` of an evaluation: one case per task, named by its id. A
/// resolved task passes; an unresolved one is a failure (listing the
/// tests that did not pass); an infrastructure error is an error; a task
/// not run is skipped.
pub fn junit<'a>(suite: &str, entries: impl IntoIterator<Item = Entry<'a>>) -> String {
    junit_cases(suite, entries.into_iter().map(task_case))
}

fn task_case(e: Entry<'_>) -> Case {
    let Some(r) = e.result else {
        return Case {
            name: e.id.to_string(),
            classname: String::new(),
            seconds: 0.0,
            verdict: CaseVerdict::Skipped("not run: the evaluation was interrupted".into()),
        };
    };
    let d = &r.durations_ms;
    let verdict = match &r.infra_error {
        Some(ie) => CaseVerdict::Error(
            serde_json::to_value(ie.stage)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            ie.message.clone(),
        ),
        None if r.resolved => CaseVerdict::Pass,
        None => {
            let why = if r.agent.timed_out {
                "unresolved (the agent timed out)"
            } else if r.grade.timed_out {
                "unresolved (grading timed out)"
            } else {
                "unresolved"
            };
            let failed: Vec<&str> = r
                .grade
                .tests
                .iter()
                .filter(|(_, s)| **s != crate::result::TestStatus::Passed)
                .map(|(n, _)| n.as_str())
                .collect();
            CaseVerdict::Failure(why.into(), failed.join("\n"))
        }
    };
    Case {
        name: e.id.to_string(),
        classname: r.images.benchmark.reference.clone(),
        seconds: (d.materialize + d.agent + d.grade) as f64 / 1000.0,
        verdict,
    }
}

/// Text for an XML attribute or element: the five markup characters
/// escaped, and characters XML 1.0 cannot hold replaced.
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{InfraError, Stage, TestStatus};

    fn result(id: &str, resolved: bool, timed_out: bool, infra: bool) -> TaskResult {
        let mut r: TaskResult = serde_json::from_value(serde_json::json!({
            "schema": "hoist.result/v1", "task_id": id, "resolved": resolved,
            "score": if resolved { 1.0 } else { 0.0 },
            "agent": {"exit_code": 0, "timed_out": timed_out},
            "grade": {"exit_code": 0, "timed_out": false, "tests": {"t1": "PASSED", "t2": "FAILED"}},
            "images": {"benchmark": {"ref": "r/b<&>", "digest": "sha256:b"},
                       "agent": {"ref": "r/a", "digest": "sha256:a"}, "gateway": null},
            "platform": "linux/amd64", "infra_error": null, "mode": "crane",
            "isolation": "namespaces", "hoist_version": "0", "started_at": "x",
            "durations_ms": {"materialize": 1000, "agent": 500, "grade": 250}
        }))
        .unwrap();
        if infra {
            r.infra_error = Some(InfraError {
                stage: Stage::Pull,
                message: "no \"such\" image".into(),
            });
        }
        r
    }

    #[test]
    fn every_task_counts_once_and_timeouts_are_listed_beside() {
        let rs = [
            result("a", true, false, false),
            result("b", false, true, false),
            result("c", false, false, true),
        ];
        let entries = [
            Entry {
                id: "a",
                result: Some(&rs[0]),
                resumed: true,
            },
            Entry {
                id: "b",
                result: Some(&rs[1]),
                resumed: false,
            },
            Entry {
                id: "c",
                result: Some(&rs[2]),
                resumed: false,
            },
            Entry {
                id: "d",
                result: None,
                resumed: false,
            },
        ];
        let s = summarize(entries, 7);
        assert_eq!(
            (
                s.total,
                s.completed,
                s.resolved,
                s.unresolved,
                s.timed_out,
                s.infra_error,
                s.not_run
            ),
            (4, 2, 1, 1, 1, 1, 1)
        );
        assert_eq!(s.ids.timed_out, ["b"]);
        assert_eq!(s.resumed, 1);
        assert_eq!(s.resolved_rate, 0.25);
        assert_eq!(s.digests.agent.iter().collect::<Vec<_>>(), ["sha256:a"]);
        let t = table(&s);
        assert!(t.contains("resolved          1   25.0%"), "{t}");
        assert!(t.contains("infra error: c"), "{t}");
        assert!(t.contains("not run: d"), "{t}");
        assert_eq!(TestStatus::Failed, rs[0].grade.tests["t2"]);
    }

    #[test]
    fn junit_has_one_case_per_task_and_escapes() {
        let rs = [
            result("a", true, false, false),
            result("b", false, false, false),
            result("c", false, false, true),
        ];
        let x = junit(
            "hoist eval",
            [
                Entry {
                    id: "a",
                    result: Some(&rs[0]),
                    resumed: false,
                },
                Entry {
                    id: "b",
                    result: Some(&rs[1]),
                    resumed: false,
                },
                Entry {
                    id: "c",
                    result: Some(&rs[2]),
                    resumed: false,
                },
                Entry {
                    id: "d",
                    result: None,
                    resumed: false,
                },
            ],
        );
        assert!(
            x.contains("tests=\"4\" failures=\"1\" errors=\"1\" skipped=\"1\""),
            "{x}"
        );
        assert!(x.contains("classname=\"r/b&lt;&amp;&gt;\""), "{x}");
        assert!(
            x.contains("<failure message=\"unresolved\">t2</failure>"),
            "{x}"
        );
        assert!(
            x.contains("<error type=\"pull\" message=\"no &quot;such&quot; image\"/>"),
            "{x}"
        );
        assert!(x.contains("time=\"1.750\""), "{x}");
        assert_eq!(xml("a\u{1}b"), "a\u{fffd}b");
    }
}
