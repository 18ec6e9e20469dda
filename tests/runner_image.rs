//! The generic runner image (runner-image/, DESIGN §5, §9) under a real
//! Docker Engine: crane mode inside one container, pulling the sample
//! images by digest from the test registry on the host (`--network host`,
//! since the registries listen on 127.0.0.1), in both security profiles,
//! and the per-task fan-out driven by environment variables. Every case is
//! asserted from the `result.json` and `run.json` the container writes to
//! a host directory mounted at /out.
//!
//! Needs root, a Docker Engine (`HOIST_TEST_DOCKER=1` from scripts/test-env)
//! and the static hoist (scripts/build-static; scripts/test builds it).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "hoist-runner:dev";
/// What the issue documents for namespaces inside the runner. (This host
/// lacks CAP_SYS_RESOURCE, so `--privileged` itself cannot start here.)
const NAMESPACES_PROFILE: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
];

struct Env {
    registry: String,
    pyfix_task: String,
    swe_tasks: Vec<String>,
}

fn env() -> Option<Env> {
    if !is_root() {
        skip("the runner image tests need root (docker, bind mounts owned by root)");
        return None;
    }
    if env_or_skip("HOIST_TEST_DOCKER")? != "1" {
        skip("HOIST_TEST_DOCKER is not 1: no Docker Engine");
        return None;
    }
    let words = |v: String| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let e = Env {
        registry: env_or_skip("HOIST_SAMPLES_REGISTRY")?,
        pyfix_task: words(env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?)[0].clone(),
        swe_tasks: words(env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?),
    };
    build_runner_image()?;
    Some(e)
}

/// Build `hoist-runner:dev` from the static hoist already built (never
/// cargo from inside a test); concurrent builds wait for each other.
fn build_runner_image() -> Option<()> {
    let Some(bin) = static_hoist() else {
        skip("no static hoist: run scripts/build-static");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-runner-image");
    ok(Command::new(script).arg("--binary").arg(bin));
    Some(())
}

impl Env {
    fn r(&self, tag: &str) -> String {
        format!("{}/{tag}@{}", self.registry, sample_digest(tag))
    }
}

/// One store on the host for every case, mounted at /store: the store is
/// safe to share between concurrent runs, and a volume is where the
/// runner keeps it (its own root is overlayfs).
fn host_store() -> PathBuf {
    let dir = std::env::var("HOIST_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let store = dir.join("runner-store");
    std::fs::create_dir_all(&store).unwrap();
    store
}

/// `docker run --rm --network host -v OUT:/out [-v STORE:/store] EXTRA…
/// hoist-runner:dev ARGS… --out /out`; returns OUT's run.json and
/// task/result.json.
fn docker_run(extra: &[&str], args: &[&str], with_store: bool) -> (Value, Value) {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(DOCKER);
    cmd.args(["run", "--rm", "--network", "host", "-v"])
        .arg(format!("{}:/out", out.path().display()));
    if with_store {
        cmd.arg("-v")
            .arg(format!("{}:/store", host_store().display()));
    }
    cmd.args(extra)
        .arg(IMAGE)
        .args(args)
        .args(["--out", "/out"]);
    ok(&mut cmd);
    let read = |rel: &str| -> Value {
        let bytes = std::fs::read(out.path().join(rel))
            .unwrap_or_else(|e| panic!("{rel} not written by {cmd:?}: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    (read("run.json"), read("task/result.json"))
}

fn pyfix_args(e: &Env) -> Vec<String> {
    [
        "run",
        "--mode",
        "crane",
        "--benchmark",
        &e.r("pyfix"),
        "--agent",
        &e.r("agent-oracle"),
        "--task",
        &e.pyfix_task,
    ]
    .map(str::to_string)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn default_profile_runs_chroot_and_matches_the_host() {
    let Some(e) = env() else { return };
    let (run, result) = docker_run(&[], &strs(&pyfix_args(&e)), true);
    assert_eq!(run["isolation"], "chroot", "{run}");
    assert_eq!(run["rootfs"], "copy", "{run}");
    assert!(
        run["not_isolated"]
            .as_array()
            .is_some_and(|a| a.iter().any(|g| g.as_str().unwrap().starts_with("pid"))),
        "chroot states what it does not isolate: {run}"
    );
    assert_eq!(run["supervisor_exit_code"], 0);
    assert_eq!(result["resolved"], true, "{result}");
    assert_eq!(result["isolation"], "chroot");
    assert_eq!(result["infra_error"], Value::Null);
    assert_eq!(result["task_id"], e.pyfix_task.as_str());
    assert_eq!(
        result["images"]["benchmark"]["digest"],
        sample_digest("pyfix")
    );

    // The same run on the host (namespaces, overlay): the same verdict,
    // field for field, once the volatile fields are dropped.
    let out = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut args = pyfix_args(&e);
    args.extend(["--out".to_string(), out.path().display().to_string()]);
    ok(hoist(store.path()).args(&args));
    let mut host: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("task/result.json")).unwrap())
            .unwrap();
    assert_eq!(host["isolation"], "namespaces");
    let mut inside = result.clone();
    hoist::result::normalise_json(&mut host);
    hoist::result::normalise_json(&mut inside);
    assert_eq!(inside, host);
}

#[test]
fn sys_admin_profile_runs_namespaces_on_an_overlay_store() {
    let Some(e) = env() else { return };
    let (run, result) = docker_run(NAMESPACES_PROFILE, &strs(&pyfix_args(&e)), true);
    assert_eq!(run["isolation"], "namespaces", "{run}");
    // Inside a container, /proc is masked, so the kernel refuses a procfs
    // mount from a nested user namespace: the sandbox runs without one and
    // run.json says what that costs.
    assert_eq!(run["user_namespace"], false, "{run}");
    assert_eq!(
        run["not_isolated"],
        serde_json::json!([hoist::sandbox::NO_USER_NAMESPACE])
    );
    // The store is a volume (a host directory), so overlay works there.
    assert_eq!(run["rootfs"], "overlay", "{run}");
    assert_eq!(result["resolved"], true, "{result}");
    assert_eq!(result["isolation"], "namespaces");
}

#[test]
fn sys_admin_profile_copies_when_the_store_is_on_the_containers_overlay_root() {
    let Some(e) = env() else { return };
    // No volume: the store is on the container's overlayfs root, which
    // cannot hold an overlay upper dir; --rootfs auto must copy.
    let mut extra = NAMESPACES_PROFILE.to_vec();
    extra.extend(["-e", "HOIST_STORE=/tmp/store"]);
    let (run, result) = docker_run(&extra, &strs(&pyfix_args(&e)), false);
    assert_eq!(run["isolation"], "namespaces", "{run}");
    assert_eq!(run["rootfs"], "copy", "{run}");
    assert_eq!(result["resolved"], true, "{result}");
}

#[test]
fn per_task_fan_out_by_environment() {
    let Some(e) = env() else { return };
    for task in e.swe_tasks.iter().take(2) {
        let bench = e.r(&format!("swe-mini-{task}"));
        let env_bench = format!("HOIST_BENCHMARK={bench}");
        let env_agent = format!("HOIST_AGENT={}", e.r("agent-oracle"));
        // No --benchmark, --agent or --task: the image is the task.
        let (run, result) = docker_run(&["-e", &env_bench, "-e", &env_agent], &["run"], true);
        assert_eq!(result["task_id"], task.as_str(), "{result}");
        assert_eq!(result["resolved"], true, "{task}: {result}");
        assert_eq!(
            result["images"]["benchmark"]["digest"],
            sample_digest(&format!("swe-mini-{task}"))
        );
        assert_eq!(run["images"]["benchmark"]["ref"], bench.as_str());
        assert_eq!(run["isolation"], "chroot");
    }
}
