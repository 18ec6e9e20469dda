//! Field-by-field comparison of two `result.json`s after the volatile
//! fields (docs/result.md) are blanked ([`crate::result::normalise_json`]).

use serde::Serialize;
use serde_json::Value;

/// One field that differs: its path (`grade.tests.test_add`,
/// `images.agent.digest`, `a[2]`) and both values, `None` when absent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldDiff {
    pub path: String,
    pub crane: Option<Value>,
    pub container: Option<Value>,
}

/// The differences between two results once both are normalised.
pub fn compare_results(crane: &Value, container: &Value) -> Vec<FieldDiff> {
    let (mut a, mut b) = (crane.clone(), container.clone());
    crate::result::normalise_json(&mut a);
    crate::result::normalise_json(&mut b);
    diff(&a, &b)
}

/// Every leaf where `a` and `b` differ, in key order. Objects are compared
/// key by key and arrays index by index; anything else (including a type
/// change) is one difference at its path.
pub fn diff(a: &Value, b: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk(String::new(), Some(a), Some(b), &mut out);
    out
}

fn walk(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<FieldDiff>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(join_key(&path, k), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                walk(format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        _ if a == b => {}
        _ => out.push(FieldDiff {
            path: if path.is_empty() {
                "(root)".into()
            } else {
                path
            },
            crane: a.cloned(),
            container: b.cloned(),
        }),
    }
}

/// `parent.key`, or `parent["odd key"]` when the key is not a plain word
/// (test names may hold dots, brackets or spaces).
fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{parent}.{key}"),
        // A JSON string literal is always a valid, unambiguous key.
        (false, _) => format!("{parent}[{}]", Value::String(key.to_string())),
    }
}

/// A value for a table cell: compact JSON, or `(absent)`.
pub fn show(v: &Option<Value>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "(absent)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(mode: &str, resolved: bool, digest: &str) -> Value {
        json!({
            "schema": "hoist.result/v1", "task_id": "t", "resolved": resolved,
            "score": if resolved { 1.0 } else { 0.0 },
            "agent": {"exit_code": 0, "timed_out": false},
            "grade": {"exit_code": 0, "timed_out": false,
                      "tests": {"test_a": if resolved { "PASSED" } else { "FAILED" }}},
            "images": {"benchmark": {"ref": format!("oci:/{mode}:b"), "digest": "sha256:aa"},
                       "agent": {"ref": "x", "digest": digest}, "gateway": null},
            "platform": "linux/amd64", "infra_error": null,
            "mode": mode, "isolation": if mode == "crane" { "namespaces" } else { "container" },
            "hoist_version": "0.1.0", "started_at": format!("{mode}-time"),
            "durations_ms": {"materialize": 3, "agent": 4, "grade": 5}
        })
    }

    #[test]
    fn volatile_fields_never_differ() {
        let mut b = result("container", true, "sha256:bb");
        b["durations_ms"]["agent"] = json!(99999);
        b["hoist_version"] = json!("9.9.9");
        b["images"]["benchmark"]["ref"] = json!("registry/x@sha256:aa");
        assert_eq!(
            compare_results(&result("crane", true, "sha256:bb"), &b),
            vec![]
        );
    }

    #[test]
    fn every_differing_field_is_named_with_both_values() {
        let d = compare_results(
            &result("crane", true, "sha256:bb"),
            &result("container", false, "sha256:cc"),
        );
        let paths: Vec<&str> = d.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "grade.tests.test_a",
                "images.agent.digest",
                "resolved",
                "score"
            ]
        );
        assert_eq!(d[0].crane, Some(json!("PASSED")));
        assert_eq!(d[0].container, Some(json!("FAILED")));
        assert_eq!(d[2].crane, Some(json!(true)));
        assert_eq!(d[2].container, Some(json!(false)));
    }

    #[test]
    fn absent_fields_and_type_changes() {
        let d = diff(
            &json!({"a": 1, "infra_error": null}),
            &json!({"infra_error": {"stage": "grade"}, "b": [1]}),
        );
        assert_eq!(
            d,
            vec![
                FieldDiff {
                    path: "a".into(),
                    crane: Some(json!(1)),
                    container: None
                },
                FieldDiff {
                    path: "b".into(),
                    crane: None,
                    container: Some(json!([1]))
                },
                FieldDiff {
                    path: "infra_error".into(),
                    crane: Some(json!(null)),
                    container: Some(json!({"stage": "grade"}))
                },
            ]
        );
        assert_eq!(show(&d[0].container), "(absent)");
        assert_eq!(show(&d[2].container), r#"{"stage":"grade"}"#);
    }

    #[test]
    fn arrays_compare_by_index() {
        let d = diff(&json!({"x": [1, 2, 3]}), &json!({"x": [1, 5]}));
        let paths: Vec<&str> = d.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["x[1]", "x[2]"]);
    }

    #[test]
    fn odd_keys_are_quoted() {
        let d = diff(
            &json!({"grade": {"tests": {"tests/test_x.py::test_a[1]": "PASSED"}}}),
            &json!({"grade": {"tests": {"tests/test_x.py::test_a[1]": "FAILED"}}}),
        );
        assert_eq!(d[0].path, r#"grade.tests["tests/test_x.py::test_a[1]"]"#);
    }

    #[test]
    fn a_whole_value_that_differs_is_the_root() {
        let d = diff(&json!(1), &json!("1"));
        assert_eq!(d[0].path, "(root)");
        assert!(diff(&json!({"a": [1, {"b": 2}]}), &json!({"a": [1, {"b": 2}]})).is_empty());
    }
}
