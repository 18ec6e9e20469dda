//! `hoist conformance` end to end (conformance/README.md, issue 5): a small slice of
//! `conformance/matrix.toml` passes in both modes with every comparison
//! made, and the deliberately broken cases of `conformance/broken.toml`
//! make it fail, naming the changed path and the differing fields.
//!
//! Needs root, Docker (`HOIST_TEST_DOCKER`), the sample images
//! (`HOIST_SAMPLES_OCI`), the plain test registry, skopeo and tar: run
//! through scripts/test. Skips with the reason otherwise (fails under
//! CI's `HOIST_TEST_REQUIRE_ALL=1`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{
    docker, env_or_skip, have_docker, have_tool, hoist, is_root, ok, read_json, run, skip, stderr,
    stdout,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The 18 cases of conformance/matrix.toml, in order.
const MATRIX_CASES: &[&str] = &[
    "pyfix/ini-quoted-values/agent-oracle",
    "pyfix/ini-quoted-values/agent-noop",
    "pyfix/lru-get-recency/agent-oracle",
    "pyfix/lru-get-recency/agent-noop",
    "pyfix/paginate-last-page/agent-oracle",
    "pyfix/paginate-last-page/agent-noop",
    "swe-mini-add-months-clamp/agent-oracle",
    "swe-mini-add-months-clamp/agent-noop",
    "swe-mini-csv-escaped-quotes/agent-oracle",
    "swe-mini-csv-escaped-quotes/agent-noop",
    "swe-mini-normpath-dotdot/agent-oracle",
    "swe-mini-normpath-dotdot/agent-noop",
    "swe-mini-semver-prerelease/agent-oracle",
    "swe-mini-semver-prerelease/agent-noop",
    "pyfix/ini-quoted-values/agent-scripted+gateway-replay",
    "pyfix/lru-get-recency/agent-scripted+gateway-replay",
    "pyfix/paginate-last-page/agent-scripted+gateway-replay",
    "pyfix/ini-quoted-values/agent-probe",
];

struct Env {
    samples: String,
    registry: String,
    store: PathBuf,
}

fn env() -> Option<Env> {
    let samples = env_or_skip("HOIST_SAMPLES_OCI")?;
    let registry = env_or_skip("HOIST_TEST_REGISTRY_PLAIN")?;
    let dir = env_or_skip("HOIST_TEST_DIR")?;
    if !is_root() {
        skip("conformance needs root (crane sandbox, exact ownership in the trees, docker)");
        return None;
    }
    if !(have_docker() && have_tool("skopeo") && have_tool("tar")) {
        return None;
    }
    Some(Env {
        samples,
        registry,
        store: Path::new(&dir).join("conformance-store"),
    })
}

fn conformance(store: &Path) -> Command {
    let mut c = hoist(store);
    c.current_dir(REPO).arg("conformance");
    c
}

fn case<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name} in the report"))
}

fn paths(check: &Value) -> Vec<&str> {
    check["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect()
}

fn show(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o))
}

// ------------------------------------------------- no Docker needed

#[test]
fn matrix_lists_every_sample_combination() {
    let t = tempfile::tempdir().unwrap();
    let o = ok(conformance(t.path()).args(["--layout", "/samples", "--list"]));
    let text = stdout(&o);
    let names: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(names, MATRIX_CASES);
    // The matrix covers what the samples hold, when the samples are known.
    for (var, prefix) in [
        ("HOIST_SAMPLES_PYFIX_TASKS", "pyfix/"),
        ("HOIST_SAMPLES_SWE_MINI_TASKS", "swe-mini-"),
    ] {
        if let Ok(tasks) = std::env::var(var) {
            for task in tasks.split_whitespace() {
                for agent in ["agent-oracle", "agent-noop"] {
                    let name = format!("{prefix}{task}/{agent}");
                    assert!(MATRIX_CASES.contains(&name.as_str()), "{name} missing");
                }
            }
        }
    }
    if let Ok(tasks) = std::env::var("HOIST_SAMPLES_REPLAY_TASKS") {
        for task in tasks.split_whitespace() {
            let name = format!("pyfix/{task}/agent-scripted+gateway-replay");
            assert!(MATRIX_CASES.contains(&name.as_str()), "{name} missing");
        }
    }
}

#[test]
fn a_bad_matrix_is_a_usage_error_that_names_the_problem() {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("m.toml");
    std::fs::write(
        &m,
        "[[case]]\nbenchmark = \"oci:/s:pyfix\"\nagent = \"oci:/s:agent-noop\"\nexpect_differ = \"\"\n",
    )
    .unwrap();
    let o = run(conformance(t.path()).arg("--matrix").arg(&m));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        stderr(&o).contains("expect_differ needs a written reason"),
        "{}",
        show(&o)
    );
    let o = run(conformance(t.path()).args(["--layout", "/samples", "--cases", "no-such-case*"]));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("no-such-case*"), "{}", show(&o));
    let o = run(conformance(t.path())
        .env_remove("HOIST_SAMPLES_OCI")
        .arg("--list"));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("HOIST_SAMPLES_OCI"), "{}", show(&o));
}

#[test]
fn compare_names_every_differing_field() {
    let t = tempfile::tempdir().unwrap();
    let result = |mode: &str, resolved: bool| {
        serde_json::json!({
            "schema": "hoist.result/v1", "task_id": "t", "resolved": resolved,
            "score": if resolved { 1.0 } else { 0.0 },
            "grade": {"tests": {"test_a": if resolved { "PASSED" } else { "FAILED" }}},
            "mode": mode, "started_at": mode, "durations_ms": {"agent": mode.len()}
        })
        .to_string()
    };
    let (a, b) = (t.path().join("a.json"), t.path().join("b.json"));
    std::fs::write(&a, result("crane", true)).unwrap();
    std::fs::write(&b, result("container", true)).unwrap();
    let o = ok(conformance(t.path()).arg("--compare").arg(&a).arg(&b));
    assert!(stdout(&o).contains("match"), "{}", show(&o));
    std::fs::write(&b, result("container", false)).unwrap();
    let o = run(conformance(t.path()).arg("--compare").arg(&a).arg(&b));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    for line in [
        "grade.tests.test_a: \"PASSED\" | \"FAILED\"",
        "resolved: true | false",
        "score: 1.0 | 0.0",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(
        !out.contains("mode"),
        "a volatile field was compared:\n{out}"
    );
}

// ------------------------------------------------- both modes, Docker

/// Oracle and noop on one pyfix task, oracle on one swe-mini image and the
/// scripted agent with the replay gateway: all match, exit 0, and every
/// comparison was really made. Then a kept container result is tampered
/// with and `--compare` names the fields.
#[test]
fn small_matrix_passes_in_both_modes() {
    let Some(e) = env() else { return };
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("report.json");
    let keep = t.path().join("keep");
    let cases = [
        "pyfix/ini-quoted-values/agent-oracle",
        "pyfix/ini-quoted-values/agent-noop",
        "swe-mini-add-months-clamp/agent-oracle",
        "pyfix/ini-quoted-values/agent-scripted+gateway-replay",
    ];
    let mut cmd = conformance(&e.store);
    for c in cases {
        cmd.args(["--cases", c]);
    }
    let o = run(cmd.arg("--json-out").arg(&json).arg("--keep").arg(&keep));
    eprintln!("{}", show(&o));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let r = read_json(&json);
    assert_eq!(r["schema"], "hoist.conformance/v1");
    assert_eq!(r["passed"], true);
    assert_eq!(r["summary"]["cases"], 4);
    assert_eq!(r["summary"]["pass"], 4);
    for name in cases {
        let c = case(&r, name);
        assert_eq!(c["status"], "pass", "{name}: {c:#}");
        assert_eq!(c["result"]["status"], "match", "{name}");
        assert_eq!(c["rootfs"]["status"], "match", "{name}");
        assert!(c["container"]["docker_image_id"].is_string(), "{name}");
        assert!(c["benchmark"]
            .as_str()
            .unwrap()
            .starts_with(&format!("oci:{}:", e.samples)));
    }
    let verdict = |name: &str| case(&r, name)["crane"]["verdict"].clone();
    assert_eq!(verdict(cases[0]), "resolved");
    assert_eq!(verdict(cases[1]), "unresolved");
    assert_eq!(verdict(cases[2]), "resolved");
    assert_eq!(verdict(cases[3]), "resolved");
    let table = stdout(&o);
    for name in cases {
        assert!(table.contains(name), "{name} not in the table:\n{table}");
    }

    // docker build: one informational row per combination; the gateway
    // directory loses its 0700 under COPY --from, and the suite says so.
    let builds = r["docker_build"].as_array().unwrap();
    assert_eq!(builds.len(), 4, "{builds:#?}");
    let gw = builds
        .iter()
        .find(|b| b["gateway"].is_string())
        .expect("the gateway combination was built");
    assert_eq!(gw["rootfs"]["status"], "differ", "{gw:#}");
    let d = gw["rootfs"]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "/opt/gateway")
        .unwrap_or_else(|| panic!("/opt/gateway not named: {gw:#}"));
    assert!(
        d["crane"].as_str().unwrap().starts_with("d 0700 0 0"),
        "{d}"
    );
    assert!(
        d["container"].as_str().unwrap().starts_with("d 0755 "),
        "{d}"
    );
    assert!(
        table.contains("docker-build: pyfix + agent-scripted + gateway-replay"),
        "{table}"
    );

    // The kept outputs re-compare as equal; tampered, they differ by field.
    let dir = keep.join("cases/pyfix_ini-quoted-values_agent-oracle");
    let (crane, container) = (dir.join("crane"), dir.join("container"));
    ok(conformance(&e.store)
        .arg("--compare")
        .arg(&crane)
        .arg(&container));
    let file = container.join("task/result.json");
    let mut v: Value = read_json(&file);
    v["resolved"] = Value::Bool(false);
    v["images"]["benchmark"]["digest"] = "sha256:tampered".into();
    v["hoist_version"] = "99.0.0".into();
    std::fs::write(&file, v.to_string()).unwrap();
    let o = run(conformance(&e.store)
        .arg("--compare")
        .arg(&crane)
        .arg(&container));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("result.json differs in 2 fields"), "{out}");
    assert!(out.contains("images.benchmark.digest: "), "{out}");
    assert!(out.contains("resolved: true | false"), "{out}");
}

/// conformance/broken.toml: a combination image with one changed file
/// (the bake, then a `docker build` RUN step appending to a file) and a
/// container run with another agent are both mismatches, named; the same
/// difference marked `expect_differ` is reported but does not fail.
#[test]
fn broken_cases_fail_naming_paths_and_fields() {
    let Some(e) = env() else { return };
    let changed = changed_file_image(&e);
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("report.json");
    let o = run(conformance(&e.store)
        .env("HOIST_CONFORMANCE_CHANGED_IMAGE", &changed)
        .args(["--matrix", "conformance/broken.toml", "--no-docker-build"])
        .arg("--json-out")
        .arg(&json));
    eprintln!("{}", show(&o));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let r = read_json(&json);
    assert_eq!(r["passed"], false);
    assert_eq!(r["summary"]["fail"], 2, "{:#}", r["summary"]);
    assert_eq!(r["summary"]["expected_difference"], 1, "{:#}", r["summary"]);

    let c = case(&r, "broken/changed-file");
    assert_eq!(c["status"], "fail");
    assert_eq!(c["container_image_override"], changed.as_str());
    assert_eq!(c["rootfs"]["status"], "differ", "{c:#}");
    assert_eq!(paths(&c["rootfs"]), [CHANGED_PATH], "{c:#}");
    let d = &c["rootfs"]["differences"][0];
    assert_ne!(d["crane"], d["container"]);
    assert_eq!(
        c["result"]["status"], "match",
        "a README change grades the same: {c:#}"
    );

    let c = case(&r, "broken/other-agent");
    assert_eq!(c["status"], "fail");
    assert_eq!(c["crane"]["verdict"], "resolved");
    assert_eq!(c["container"]["verdict"], "unresolved");
    let fields = paths(&c["result"]);
    for f in ["resolved", "score", "images.agent.digest"] {
        assert!(fields.contains(&f), "{f} not named: {fields:?}");
    }
    assert!(
        fields.iter().any(|f| f.starts_with("grade.tests.")),
        "no test verdict named: {fields:?}"
    );
    let resolved = &c["result"]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "resolved")
        .unwrap();
    assert_eq!(resolved["crane"], true);
    assert_eq!(resolved["container"], false);
    assert!(
        paths(&c["rootfs"])
            .iter()
            .any(|p| p.starts_with("/opt/agent")),
        "the other agent's tree is named: {c:#}"
    );

    let c = case(&r, "broken/other-agent-expected");
    assert_eq!(c["status"], "expected-difference");
    assert_eq!(c["result"]["status"], "differ");
    assert!(c["expect_differ"].as_str().is_some_and(|s| !s.is_empty()));

    let text = stdout(&o);
    assert!(text.contains(CHANGED_PATH), "{text}");
    assert!(text.contains("resolved: true | false"), "{text}");
    assert!(text.contains("FAIL broken/changed-file"), "{text}");
    assert!(
        text.contains("EXPECTED broken/other-agent-expected"),
        "{text}"
    );
}

const CHANGED_PATH: &str = "/testbed/ini-quoted-values/README.md";

/// The bake of pyfix + oracle, pushed to the plain registry, with one file
/// appended to by a `docker build` step, pushed again: what the broken
/// case's container mode runs instead of the bake.
fn changed_file_image(e: &Env) -> String {
    let base = format!("{}/conformance-test/pyfix-oracle:latest", e.registry);
    let changed = format!(
        "{}/conformance-test/pyfix-oracle-changed:latest",
        e.registry
    );
    let layout = |tag: &str| format!("oci:{}:{tag}", e.samples);
    ok(hoist(&e.store)
        .args(["bake", "--benchmark"])
        .arg(layout("pyfix"))
        .arg("--agent")
        .arg(layout("agent-oracle"))
        .arg("--tag")
        .arg(&base));
    let ctx = tempfile::tempdir().unwrap();
    let dockerfile = format!("FROM {base}\nRUN echo changed-after-bake >> {CHANGED_PATH}\n");
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    ok(docker().args(["pull", "-q", &base]));
    ok(docker()
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &changed])
        .arg(ctx.path()));
    ok(docker().args(["push", &changed]));
    changed
}
