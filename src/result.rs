//! The task result, `hoist.result/v1` (docs/result.md): what one task run
//! produced, written by the supervisor to `/output/task/result.json` and
//! compared across modes by the conformance suite after [`normalise`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The value of the `schema` field.
pub const SCHEMA: &str = "hoist.result/v1";

/// One task's `result.json`. Field order is the order of docs/result.md, which
/// serde keeps when writing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub schema: String,
    pub task_id: String,
    pub resolved: bool,
    pub score: f64,
    pub agent: AgentOutcome,
    pub grade: GradeOutcome,
    pub images: Images,
    pub platform: String,
    pub infra_error: Option<InfraError>,
    pub mode: String,
    pub isolation: String,
    pub hoist_version: String,
    pub started_at: String,
    pub durations_ms: Durations,
}

/// How the agent phase (`install.sh`, then `run`) ended. `exit_code` is
/// null when the agent never ran; a death by signal N is `128 + N`, as a
/// shell reports it; a timeout is 124, as timeout(1) reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOutcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
}

/// How grading ended, and the per-test verdicts the grader reported.
/// `FAIL_TO_PASS` and `PASS_TO_PASS` are there only when the grader's
/// report gave them (SWE-bench's split of the tests a task names), so a
/// grader that does not know them leaves result.json as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradeOutcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub tests: BTreeMap<String, TestStatus>,
    #[serde(
        rename = "FAIL_TO_PASS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fail_to_pass: Option<TestSplit>,
    #[serde(
        rename = "PASS_TO_PASS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pass_to_pass: Option<TestSplit>,
}

/// One group of SWE-bench's split, as its `report.json` writes it: the
/// tests of the group that passed after the agent's change, and those
/// that did not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSplit {
    pub success: Vec<String>,
    pub failure: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TestStatus {
    Passed,
    Failed,
    Skipped,
    Error,
}

/// The three axes as run: the reference the user gave and the digest used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Images {
    pub benchmark: ImageRecord,
    pub agent: ImageRecord,
    pub gateway: Option<ImageRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: String,
}

/// A failure that is not the agent's: such a task is never counted as
/// merely unresolved (docs/result.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfraError {
    pub stage: Stage,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Pull,
    Unpack,
    Sandbox,
    Gateway,
    Grade,
    /// SIGINT, SIGTERM or SIGHUP stopped the run (its sandbox was killed).
    Interrupted,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durations {
    pub materialize: u64,
    pub agent: u64,
    pub grade: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result.json is not valid {SCHEMA} JSON")]
    Json(#[from] serde_json::Error),
    #[error("result.json has schema {found:?}, expected {SCHEMA:?}")]
    Schema { found: String },
}

impl TaskResult {
    /// Parse a `result.json`, refusing another schema version.
    pub fn from_json(text: &str) -> Result<TaskResult, ResultError> {
        let r: TaskResult = serde_json::from_str(text)?;
        if r.schema != SCHEMA {
            return Err(ResultError::Schema { found: r.schema });
        }
        Ok(r)
    }

    /// Pretty JSON with a trailing newline, as written to disk.
    pub fn json(&self) -> Result<String, crate::json::JsonError> {
        let mut s = crate::json::to_string_pretty(self, "result.json")?;
        s.push('\n');
        Ok(s)
    }

    /// [`TaskResult::json`], empty if it fails: kept only for `hoist
    /// eval`'s own result.json (`src/cli/eval.rs`), which should take the
    /// error from [`TaskResult::json`] instead, and then this goes.
    pub fn to_json(&self) -> String {
        self.json().unwrap_or_default()
    }
}

/// `1.0` for a resolved task, `0.0` otherwise.
pub fn score(resolved: bool) -> f64 {
    if resolved {
        1.0
    } else {
        0.0
    }
}

/// The result with the volatile fields (docs/result.md) blanked (`mode`,
/// `isolation`, `hoist_version`, `started_at`, `durations_ms`, each image's
/// `ref`), so that two runs of the same task compare equal.
pub fn normalise(r: &TaskResult) -> TaskResult {
    let mut n = r.clone();
    n.mode.clear();
    n.isolation.clear();
    n.hoist_version.clear();
    n.started_at.clear();
    n.durations_ms = Durations::default();
    n.images.benchmark.reference.clear();
    n.images.agent.reference.clear();
    if let Some(g) = &mut n.images.gateway {
        g.reference.clear();
    }
    n
}

/// [`normalise`] on untyped JSON, for comparing files that may not parse
/// as this version's [`TaskResult`]. Fields that are absent stay absent.
pub fn normalise_json(v: &mut serde_json::Value) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    for key in ["mode", "isolation", "hoist_version", "started_at"] {
        if let Some(field) = obj.get_mut(key) {
            *field = serde_json::Value::String(String::new());
        }
    }
    if let Some(d) = obj.get_mut("durations_ms") {
        *d = serde_json::json!({"materialize": 0, "agent": 0, "grade": 0});
    }
    if let Some(images) = obj.get_mut("images").and_then(|i| i.as_object_mut()) {
        for image in images.values_mut() {
            if let Some(r) = image.as_object_mut().and_then(|o| o.get_mut("ref")) {
                *r = serde_json::Value::String(String::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(r: &str, d: &str) -> ImageRecord {
        ImageRecord {
            reference: r.into(),
            digest: d.into(),
        }
    }

    fn sample() -> TaskResult {
        TaskResult {
            schema: SCHEMA.into(),
            task_id: "toy-add".into(),
            resolved: true,
            score: 1.0,
            agent: AgentOutcome {
                exit_code: Some(0),
                timed_out: false,
            },
            grade: GradeOutcome {
                exit_code: Some(0),
                timed_out: false,
                tests: [("test_add".to_string(), TestStatus::Passed)].into(),
                ..GradeOutcome::default()
            },
            images: Images {
                benchmark: image("oci:/b:latest", "sha256:aa"),
                agent: image("oci:/a:latest", "sha256:bb"),
                gateway: Some(image("oci:/g:latest", "sha256:cc")),
            },
            platform: "linux/amd64".into(),
            infra_error: None,
            mode: "crane".into(),
            isolation: "namespaces".into(),
            hoist_version: "0.1.0".into(),
            started_at: "2025-01-02T03:04:05.678Z".into(),
            durations_ms: Durations {
                materialize: 12,
                agent: 3400,
                grade: 560,
            },
        }
    }

    #[test]
    fn serialises_in_design_field_order() {
        let text = sample().json().unwrap();
        let keys: Vec<&str> = [
            "\"schema\"",
            "\"task_id\"",
            "\"resolved\"",
            "\"score\"",
            "\"agent\"",
            "\"grade\"",
            "\"images\"",
            "\"platform\"",
            "\"infra_error\"",
            "\"mode\"",
            "\"isolation\"",
            "\"hoist_version\"",
            "\"started_at\"",
            "\"durations_ms\"",
        ]
        .into();
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn serialises_design_spellings() {
        let v: serde_json::Value = serde_json::from_str(&sample().json().unwrap()).unwrap();
        assert_eq!(v["schema"], "hoist.result/v1");
        assert_eq!(v["score"], 1.0);
        assert_eq!(v["grade"]["tests"]["test_add"], "PASSED");
        assert_eq!(v["images"]["benchmark"]["ref"], "oci:/b:latest");
        assert_eq!(v["infra_error"], serde_json::Value::Null);
    }

    #[test]
    fn infra_error_stage_is_lowercase() {
        let mut r = sample();
        r.infra_error = Some(InfraError {
            stage: Stage::Gateway,
            message: "no /health".into(),
        });
        let v: serde_json::Value = serde_json::from_str(&r.json().unwrap()).unwrap();
        assert_eq!(v["infra_error"]["stage"], "gateway");
    }

    #[test]
    fn absent_gateway_is_null() {
        let mut r = sample();
        r.images.gateway = None;
        let v: serde_json::Value = serde_json::from_str(&r.json().unwrap()).unwrap();
        assert_eq!(v["images"]["gateway"], serde_json::Value::Null);
    }

    #[test]
    fn without_the_split_grade_has_only_its_three_fields() {
        let v: serde_json::Value = serde_json::from_str(&sample().json().unwrap()).unwrap();
        let mut keys: Vec<&String> = v["grade"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["exit_code", "tests", "timed_out"]);
    }

    #[test]
    fn the_split_is_written_under_swe_bench_names_and_read_back() {
        let mut r = sample();
        r.grade.fail_to_pass = Some(TestSplit {
            success: vec!["test_add".into()],
            failure: vec![],
        });
        r.grade.pass_to_pass = Some(TestSplit {
            success: vec![],
            failure: vec!["test_sub".into()],
        });
        let text = r.json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["grade"]["FAIL_TO_PASS"],
            serde_json::json!({"success": ["test_add"], "failure": []})
        );
        assert_eq!(
            v["grade"]["PASS_TO_PASS"],
            serde_json::json!({"success": [], "failure": ["test_sub"]})
        );
        assert_eq!(TaskResult::from_json(&text).unwrap(), r);
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(TaskResult::from_json(&r.json().unwrap()).unwrap(), r);
    }

    #[test]
    fn from_json_refuses_another_schema() {
        let text = sample()
            .json()
            .unwrap()
            .replace("hoist.result/v1", "hoist.result/v2");
        assert!(matches!(
            TaskResult::from_json(&text),
            Err(ResultError::Schema { .. })
        ));
    }

    #[test]
    fn from_json_refuses_unknown_test_status() {
        let text = sample().json().unwrap().replace("\"PASSED\"", "\"PASS\"");
        assert!(matches!(
            TaskResult::from_json(&text),
            Err(ResultError::Json(_))
        ));
    }

    #[test]
    fn score_follows_resolved() {
        assert_eq!(score(true), 1.0);
        assert_eq!(score(false), 0.0);
    }

    #[test]
    fn normalise_blanks_volatile_fields() {
        let n = normalise(&sample());
        assert_eq!(n.mode, "");
        assert_eq!(n.isolation, "");
        assert_eq!(n.hoist_version, "");
        assert_eq!(n.started_at, "");
        assert_eq!(n.durations_ms, Durations::default());
        assert_eq!(n.images.benchmark.reference, "");
        assert_eq!(n.images.agent.reference, "");
        assert_eq!(n.images.gateway.as_ref().unwrap().reference, "");
    }

    #[test]
    fn normalise_keeps_digests_and_verdict() {
        let r = sample();
        let n = normalise(&r);
        assert_eq!(n.images.benchmark.digest, "sha256:aa");
        assert_eq!(n.images.gateway.unwrap().digest, "sha256:cc");
        assert_eq!(n.task_id, r.task_id);
        assert_eq!(n.resolved, r.resolved);
        assert_eq!(n.grade, r.grade);
        assert_eq!(n.agent, r.agent);
        assert_eq!(n.platform, r.platform);
    }

    #[test]
    fn normalised_runs_in_two_modes_compare_equal() {
        let a = sample();
        let mut b = sample();
        b.mode = "container".into();
        b.isolation = "chroot".into();
        b.hoist_version = "0.2.0".into();
        b.started_at = "2030-01-01T00:00:00.000Z".into();
        b.durations_ms.agent = 1;
        b.images.agent.reference = "registry.example/agent@sha256:bb".into();
        assert_ne!(a, b);
        assert_eq!(normalise(&a), normalise(&b));
    }

    #[test]
    fn normalise_does_not_hide_a_digest_difference() {
        let a = sample();
        let mut b = sample();
        b.images.agent.digest = "sha256:ff".into();
        assert_ne!(normalise(&a), normalise(&b));
    }

    #[test]
    fn normalise_json_matches_typed_normalise() {
        let r = sample();
        let mut v: serde_json::Value = serde_json::from_str(&r.json().unwrap()).unwrap();
        normalise_json(&mut v);
        let typed: serde_json::Value =
            serde_json::from_str(&normalise(&r).json().unwrap()).unwrap();
        assert_eq!(v, typed);
    }

    #[test]
    fn normalise_json_tolerates_odd_shapes() {
        let mut v = serde_json::json!({"images": {"gateway": null, "agent": 3}, "mode": 1});
        normalise_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"images": {"gateway": null, "agent": 3}, "mode": ""})
        );
        let mut not_an_object = serde_json::json!([1, 2]);
        normalise_json(&mut not_an_object);
        assert_eq!(not_an_object, serde_json::json!([1, 2]));
    }
}
