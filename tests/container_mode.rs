//! `hoist run --mode container` on the sample images (docs/pipeline.md), against
//! the real Docker Engine: the oracle resolves a shared-environment task
//! and a per-task image, noop does not, the gateway case works, and each
//! normalised result.json equals crane mode's for the same case. The
//! container is gone afterwards (also after a timeout and after Ctrl-C),
//! run.json names the image Docker ran, a combination pushed to a registry
//! runs by digest and must carry the run's axes, and a missing or stopped
//! Docker is a clear error that points to crane mode.
//!
//! Needs root and Docker (`HOIST_TEST_DOCKER`, set by scripts/test-env),
//! the samples and the static hoist; skips with the reason otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;
use support::*;

struct Samples {
    oci: String,
    plain: String,
    pyfix_tasks: Vec<String>,
    swe_tasks: Vec<String>,
    replay_tasks: Vec<String>,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("container mode tests need root (crane mode for comparison, docker)");
        return None;
    }
    if !have_docker() {
        return None;
    }
    let words = |v: String| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        plain: env_or_skip("HOIST_TEST_REGISTRY_PLAIN")?,
        pyfix_tasks: words(env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?),
        swe_tasks: words(env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?),
        replay_tasks: words(env_or_skip("HOIST_SAMPLES_REPLAY_TASKS")?),
    })
}

impl Samples {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }
}

/// One store for the whole file, so layers and bakes are made once.
fn store() -> PathBuf {
    test_store("container-store")
}

fn hoist_cmd() -> Command {
    let mut c = hoist(&store());
    c.env("HOIST_DOCKER", docker_path());
    c
}

fn hoist_run(mode: &str, args: &[&str], out: &Path) -> Output {
    run(hoist_cmd()
        .args(["run", "--mode", mode])
        .args(args)
        .arg("--out")
        .arg(out))
}

/// Run in `mode`; the result.json and run.json.
fn run_ok(mode: &str, args: &[&str]) -> (tempfile::TempDir, Value, Value) {
    let out = tempfile::tempdir().unwrap();
    let o = hoist_run(mode, args, out.path());
    assert!(
        o.status.success(),
        "hoist run --mode {mode} {args:?} failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let result = read_json(&out.path().join("task/result.json"));
    let record = read_json(&out.path().join("run.json"));
    (out, result, record)
}

fn normalised(mut v: Value) -> Value {
    hoist::result::normalise_json(&mut v);
    v
}

/// `docker inspect NAME` fails: no such container, running or not.
fn assert_gone(container: &str) {
    let o = run(docker().args(["container", "inspect", container]));
    assert!(
        !o.status.success(),
        "container {container} still exists: {}",
        stdout(&o)
    );
}

/// Run the case in container mode, check the record, compare with crane.
fn compare_with_crane(args: &[&str]) -> Value {
    let (_c, container, record) = run_ok("container", args);
    assert_eq!(container["mode"], "container");
    assert_eq!(record["mode"], "container");
    assert_eq!(container["infra_error"], Value::Null, "{container}");
    let id = record["docker_image_id"].as_str().expect("docker_image_id");
    assert!(id.starts_with("sha256:"), "{record}");
    let image = record["docker_image"].as_str().unwrap();
    let inspected = stdout(&ok(
        docker().args(["image", "inspect", "--format", "{{.Id}}", image])
    ));
    assert_eq!(
        inspected.trim(),
        id,
        "run.json names another image than Docker has"
    );
    assert!(record["docker_repo_digests"].is_array(), "{record}");
    let containers = record["docker_containers"]
        .as_array()
        .expect("docker_containers");
    // The gateway's container (when there is a gateway), the agent's, then
    // grading's, all from the same image.
    let gateway = args.contains(&"--gateway");
    assert_eq!(containers.len(), 2 + usize::from(gateway), "{record}");
    for c in containers {
        assert_gone(c.as_str().unwrap());
    }

    let (_k, crane, crane_record) = run_ok("crane", args);
    // One record type for both modes: the same fields, container mode's
    // Docker facts besides.
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.retain(|k| !k.starts_with("docker_") && k != "combination_manifest_digest");
        k.sort();
        k
    };
    assert_eq!(keys(&record), keys(&crane_record));
    for field in ["schema", "images", "network", "not_isolated"] {
        assert_eq!(record[field], crane_record[field], "run.json {field}");
    }
    let sessions = |v: &Value| -> Vec<Value> {
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session"].clone())
            .collect()
    };
    assert_eq!(sessions(&record), sessions(&crane_record));
    assert_eq!(record["rootfs"], "docker");
    assert_eq!(
        normalised(container.clone()),
        normalised(crane),
        "normalised result.json differs between container and crane mode for {args:?}"
    );
    container
}

#[test]
fn oracle_resolves_like_crane_mode() {
    let Some(s) = samples() else { return };
    let task = &s.pyfix_tasks[0];
    let r = compare_with_crane(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-oracle"),
        "--task",
        task,
    ]);
    assert_eq!(r["resolved"], true, "{r}");
    assert_eq!(r["task_id"], task.as_str());
    // A per-task image: --task left out.
    let task = &s.swe_tasks[0];
    let r = compare_with_crane(&[
        "--benchmark",
        &s.r(&format!("swe-mini-{task}")),
        "--agent",
        &s.r("agent-oracle"),
    ]);
    assert_eq!(r["resolved"], true, "{r}");
    assert_eq!(r["task_id"], task.as_str());
}

#[test]
fn noop_does_not_resolve_like_crane_mode() {
    let Some(s) = samples() else { return };
    let r = compare_with_crane(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-noop"),
        "--task",
        &s.pyfix_tasks[0],
    ]);
    assert_eq!(r["resolved"], false, "{r}");
    assert_eq!(r["agent"]["exit_code"], 0);
}

#[test]
fn gateway_case_resolves_like_crane_mode() {
    let Some(s) = samples() else { return };
    let r = compare_with_crane(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-scripted"),
        "--gateway",
        &s.r("gateway-replay"),
        "--task",
        &s.replay_tasks[0],
    ]);
    assert_eq!(r["resolved"], true, "{r}");
    assert!(r["images"]["gateway"]["digest"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));
}

#[test]
fn agent_timeout_is_enforced_and_the_container_removed() {
    let Some(s) = samples() else { return };
    let t = Instant::now();
    let (_o, r, record) = run_ok(
        "container",
        &[
            "--benchmark",
            &s.r("pyfix"),
            "--agent",
            &s.r("agent-sleeper"),
            "--task",
            &s.pyfix_tasks[0],
            "--agent-timeout",
            "2",
        ],
    );
    assert_eq!(r["agent"]["timed_out"], true, "{r}");
    assert_eq!(r["agent"]["exit_code"], 124, "{r}");
    assert_eq!(r["resolved"], false);
    assert!(r["grade"]["exit_code"].is_number(), "still graded: {r}");
    for c in record["docker_containers"].as_array().unwrap() {
        assert_gone(c.as_str().unwrap());
    }
    eprintln!("sleeper with a 2 s timeout: {:.1?}", t.elapsed());
}

#[test]
fn a_pushed_combination_runs_by_digest_and_must_match_the_axes() {
    let Some(s) = samples() else { return };
    if !have_tool("skopeo") {
        return;
    }
    let image = format!("{}/hoist-container-test/combo:oracle", s.plain);
    let axes = [
        "--benchmark".to_string(),
        s.r("pyfix"),
        "--agent".to_string(),
        s.r("agent-oracle"),
    ];
    let digest = stdout(&ok(hoist_cmd()
        .arg("bake")
        .args(&axes)
        .args(["--tag", &image])))
    .trim()
    .to_string();
    let mut args: Vec<&str> = axes.iter().map(String::as_str).collect();
    args.extend(["--task", &s.pyfix_tasks[0], "--image", &image]);
    let (_o, r, record) = run_ok("container", &args);
    assert_eq!(r["resolved"], true, "{r}");
    let repo_digests: Vec<&str> = record["docker_repo_digests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        repo_digests.iter().any(|d| d.ends_with(&digest)),
        "Docker ran {repo_digests:?}, not {digest}"
    );

    // The same combination with another agent named: refused, naming it.
    let out = tempfile::tempdir().unwrap();
    let o = hoist_run(
        "container",
        &[
            "--benchmark",
            &s.r("pyfix"),
            "--agent",
            &s.r("agent-noop"),
            "--task",
            &s.pyfix_tasks[0],
            "--image",
            &image,
        ],
        out.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was baked with agent"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn no_docker_is_a_clear_error_that_points_to_crane_mode() {
    // Neither needs the samples: Docker is checked before anything else.
    let out = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "--mode",
        "container",
        "--benchmark",
        "oci:/nonexistent:b",
        "--agent",
        "oci:/nonexistent:a",
        "--out",
    ];
    let dead = t.path().join("dead.sock");
    let stopped = run(hoist(t.path())
        .env("DOCKER_HOST", format!("unix://{}", dead.display()))
        .env("HOIST_DOCKER", docker_path())
        .args(args)
        .arg(out.path()));
    let missing = run(hoist(t.path())
        .env("HOIST_DOCKER", t.path().join("no-such-docker"))
        .args(args)
        .arg(out.path()));
    for (what, o) in [("stopped daemon", stopped), ("missing CLI", missing)] {
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("crane mode (--mode crane) needs no daemon"),
            "{what}: {err}"
        );
        assert!(!out.path().join("task/result.json").exists());
    }
}
