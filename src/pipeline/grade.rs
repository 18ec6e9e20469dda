//! The grader's report (docs/pipeline.md, "Grade"): `{"resolved": bool,
//! "tests": {"name": "PASSED"|"FAILED"|"SKIPPED"|"ERROR"}}` at
//! `HOIST_GRADE_OUT`. Both keys are required and typed strictly; other keys
//! are ignored, as in task.json, but for SWE-bench's split, `FAIL_TO_PASS`
//! and `PASS_TO_PASS` (each `{"success": [names], "failure": [names]}`, as
//! its report.json writes them), which are optional, typed as strictly,
//! and carried into result.json. The grader runs code from the agent's
//! workdir as root, so its report is read with a size bound and never
//! trusted to be well formed.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Deserialize;

use crate::result::{TestSplit, TestStatus};

/// A report larger than this is refused (1 MiB holds ~20 000 test names).
pub const MAX_GRADE_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GradeReport {
    pub resolved: bool,
    pub tests: BTreeMap<String, TestStatus>,
    #[serde(rename = "FAIL_TO_PASS", default)]
    pub fail_to_pass: Option<TestSplit>,
    #[serde(rename = "PASS_TO_PASS", default)]
    pub pass_to_pass: Option<TestSplit>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GradeError {
    #[error("the grader wrote no report to HOIST_GRADE_OUT")]
    Missing,
    #[error("the grader's report is larger than {MAX_GRADE_BYTES} bytes")]
    TooLarge,
    #[error("the grader's report is not a regular file")]
    NotAFile,
    #[error("cannot read the grader's report: {0}")]
    Read(String),
    #[error("the grader's report is invalid: {0}")]
    Invalid(String),
}

/// Parse a report's bytes.
pub fn parse_grade_report(bytes: &[u8]) -> Result<GradeReport, GradeError> {
    if bytes.len() > MAX_GRADE_BYTES {
        return Err(GradeError::TooLarge);
    }
    serde_json::from_slice(bytes).map_err(|e| GradeError::Invalid(e.to_string()))
}

/// Read and parse the report at `path`, reading at most one byte past the
/// bound, never through a symlink. O_NONBLOCK keeps a FIFO in its place
/// from blocking the open; the regular-file check then refuses it.
pub fn read_grade_report(path: &Path) -> Result<GradeReport, GradeError> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GradeError::Missing,
            _ => GradeError::Read(e.to_string()),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| GradeError::Read(e.to_string()))?;
    if !meta.is_file() {
        return Err(GradeError::NotAFile);
    }
    let mut bytes = Vec::new();
    file.take(MAX_GRADE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| GradeError::Read(e.to_string()))?;
    parse_grade_report(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GradeReport, GradeError> {
        parse_grade_report(text.as_bytes())
    }

    #[test]
    fn resolved_report_parses() {
        let r =
            parse(r#"{"resolved": true, "tests": {"test_add": "PASSED", "test_sub": "SKIPPED"}}"#)
                .unwrap();
        assert!(r.resolved);
        assert_eq!(r.tests["test_add"], TestStatus::Passed);
        assert_eq!(r.tests["test_sub"], TestStatus::Skipped);
    }

    #[test]
    fn all_statuses_parse() {
        let r = parse(r#"{"resolved": false, "tests": {"a": "PASSED", "b": "FAILED", "c": "SKIPPED", "d": "ERROR"}}"#)
            .unwrap();
        assert_eq!(r.tests.len(), 4);
        assert_eq!(r.tests["d"], TestStatus::Error);
    }

    #[test]
    fn empty_tests_parse() {
        assert!(parse(r#"{"resolved": false, "tests": {}}"#).is_ok());
    }

    #[test]
    fn extra_keys_are_ignored() {
        assert!(parse(r#"{"resolved": true, "tests": {}, "duration": 3.2}"#).is_ok());
    }

    #[test]
    fn a_report_without_the_split_has_none() {
        let r = parse(r#"{"resolved": true, "tests": {"a": "PASSED"}}"#).unwrap();
        assert_eq!(r.fail_to_pass, None);
        assert_eq!(r.pass_to_pass, None);
    }

    #[test]
    fn swe_bench_split_parses() {
        let r = parse(
            r#"{"resolved": false, "tests": {"t1": "PASSED", "t2": "FAILED", "t3": "PASSED"},
                "FAIL_TO_PASS": {"success": ["t1"], "failure": ["t2"]},
                "PASS_TO_PASS": {"success": ["t3"], "failure": []},
                "FAIL_TO_FAIL": {"success": [], "failure": []}}"#,
        )
        .unwrap();
        let f2p = r.fail_to_pass.unwrap();
        assert_eq!(f2p.success, ["t1"]);
        assert_eq!(f2p.failure, ["t2"]);
        let p2p = r.pass_to_pass.unwrap();
        assert_eq!(p2p.success, ["t3"]);
        assert!(p2p.failure.is_empty());
    }

    #[test]
    fn one_half_of_the_split_alone_parses() {
        let r = parse(
            r#"{"resolved": true, "tests": {}, "FAIL_TO_PASS": {"success": ["a"], "failure": []}}"#,
        )
        .unwrap();
        assert_eq!(r.fail_to_pass.unwrap().success, ["a"]);
        assert_eq!(r.pass_to_pass, None);
    }

    #[test]
    fn a_null_split_is_absent() {
        let r = parse(r#"{"resolved": true, "tests": {}, "PASS_TO_PASS": null}"#).unwrap();
        assert_eq!(r.pass_to_pass, None);
    }

    #[test]
    fn a_split_without_failure_is_refused() {
        assert!(matches!(
            parse(r#"{"resolved": true, "tests": {}, "FAIL_TO_PASS": {"success": []}}"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn a_split_of_other_than_names_is_refused() {
        for bad in [
            r#""t1""#,
            r#"["t1"]"#,
            r#"{"success": "t1", "failure": []}"#,
            r#"{"success": [1], "failure": []}"#,
        ] {
            let text = format!(r#"{{"resolved": true, "tests": {{}}, "PASS_TO_PASS": {bad}}}"#);
            assert!(
                matches!(parse(&text), Err(GradeError::Invalid(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn missing_resolved_is_refused() {
        assert!(matches!(
            parse(r#"{"tests": {}}"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn missing_tests_is_refused() {
        assert!(matches!(
            parse(r#"{"resolved": true}"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn resolved_as_string_is_refused() {
        assert!(matches!(
            parse(r#"{"resolved": "true", "tests": {}}"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn resolved_as_number_is_refused() {
        assert!(matches!(
            parse(r#"{"resolved": 1, "tests": {}}"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn unknown_status_is_refused() {
        assert!(matches!(
            parse(r#"{"resolved": true, "tests": {"a": "passed"}}"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn duplicate_resolved_is_refused() {
        assert!(matches!(
            parse(r#"{"resolved": false, "resolved": true, "tests": {}}"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn empty_output_is_refused() {
        assert!(matches!(parse(""), Err(GradeError::Invalid(_))));
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(matches!(
            parse(r#"{"resolved": true, "tests": {}} and more"#),
            Err(GradeError::Invalid(_))
        ));
    }

    #[test]
    fn ten_megabyte_output_is_refused_before_parsing() {
        let mut big = br#"{"resolved": true, "tests": {"a": ""#.to_vec();
        big.resize(10 << 20, b'x');
        big.extend_from_slice(br#""}}"#);
        assert_eq!(parse_grade_report(&big), Err(GradeError::TooLarge));
    }

    #[test]
    fn exactly_the_bound_is_accepted() {
        let head = br#"{"resolved": true, "tests": {}}"#;
        let mut text = head.to_vec();
        text.resize(MAX_GRADE_BYTES, b' ');
        assert!(parse_grade_report(&text).is_ok());
    }

    #[test]
    fn deeply_nested_output_is_an_error_not_a_crash() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse(&text), Err(GradeError::Invalid(_))));
    }

    #[test]
    fn read_missing_report() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_grade_report(&dir.path().join("grade.json")),
            Err(GradeError::Missing)
        );
    }

    #[test]
    fn read_refuses_a_symlinked_report() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.json");
        std::fs::write(&target, r#"{"resolved": true, "tests": {}}"#).unwrap();
        let link = dir.path().join("grade.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(read_grade_report(&link), Err(GradeError::Read(_))));
    }

    #[test]
    fn read_refuses_an_oversized_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grade.json");
        std::fs::write(&p, vec![b' '; 10 << 20]).unwrap();
        assert_eq!(read_grade_report(&p), Err(GradeError::TooLarge));
    }
}
