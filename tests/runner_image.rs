//! The generic runner image (runner-image/, docs/isolation.md) under a real
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

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::*;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = RUNNER_IMAGE;
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
    // Docker's default profile allows Landlock (ABI 7 on this kernel) and
    // seccomp filters: the confinement makes up for the shared namespaces.
    assert_eq!(run["not_isolated"], serde_json::json!([]), "{run}");
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
    let mut host: Value = read_json(&out.path().join("task/result.json"));
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
    // mount from a nested user namespace: the sandbox runs without one; its
    // root phases keep only confine::caps::KEPT of the runner's
    // capabilities, so nothing is missing from the confinement.
    assert_eq!(run["user_namespace"], false, "{run}");
    assert_eq!(run["not_isolated"], serde_json::json!([]), "{run}");
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

/// Removes the named container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER).args(["rm", "-f", &self.0]).output();
    }
}

/// Fan-out inside one runner: three chroot runs at once in one container
/// (the first started by `docker run`, two more by `docker exec`), sharing
/// its pid namespace, its network and its store. Each must get its own
/// verdict: the sleeper's agent is still running when both neighbours are
/// done (their sweeps of uid 1000 did not reach it), and ends only by the
/// SIGINT the runner gets then (exit 130, `interrupted`); the gateway run
/// reaches its own gateway, not a port another run holds.
#[test]
fn concurrent_runs_in_one_runner_keep_to_their_own_processes_and_gateways() {
    let Some(e) = env() else { return };
    let replay_task = words_of(env_or_skip("HOIST_SAMPLES_REPLAY_TASKS").unwrap())[0].clone();
    let out = tempfile::tempdir().unwrap();
    let name = format!("hoist-fanout-{}", std::process::id());
    let c = Container(name.clone());
    let _ = Command::new(DOCKER).args(["rm", "-f", &c.0]).output();
    let run_args = |agent: &str, dir: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "run",
            "--benchmark",
            &e.r("pyfix"),
            "--agent",
            &e.r(agent),
            "--out",
            dir,
        ]
        .map(str::to_string)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // The sleeper holds the container up (it is its main process) until
    // the two other runs are done: then a SIGINT ends it, as Ctrl-C or a
    // CI's cancel would. (With a short agent timeout it ended first under
    // load, and Docker killed the runs still going with its container.)
    ok(Command::new(DOCKER)
        .args(["run", "-d", "--name", &name, "--network", "host", "-v"])
        .arg(format!("{}:/out", out.path().display()))
        .arg("-v")
        .arg(format!("{}:/store", host_store().display()))
        .arg(IMAGE)
        .args(run_args(
            "agent-sleeper",
            "/out/sleeper",
            &["--task", &e.pyfix_task, "--agent-timeout", "600"],
        )));
    let exec = |args: Vec<String>| {
        let mut cmd = Command::new(DOCKER);
        cmd.args(["exec", &name, "/usr/local/bin/hoist"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("docker exec")
    };
    // Once the sleeper's agent runs (chroot mode copies agent.log out only
    // at the end, so `docker top` is where to look), so the two overlap it.
    let started = std::time::Instant::now();
    loop {
        let top = run(Command::new(DOCKER).args(["top", &name]));
        if stdout(&top).contains("sleep 100000") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the sleeper's agent never started: {}{}",
            stdout(&top),
            stderr(&top)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let oracle = exec(run_args(
        "agent-oracle",
        "/out/oracle",
        &["--task", &e.pyfix_task],
    ));
    let scripted = exec(run_args(
        "agent-scripted",
        "/out/scripted",
        &["--gateway", &e.r("gateway-replay"), "--task", &replay_task],
    ));
    ok_child(oracle, "the oracle run");
    ok_child(scripted, "the scripted run");
    let top = run(Command::new(DOCKER).args(["top", &name]));
    assert!(
        stdout(&top).contains("sleep 100000"),
        "a neighbour's run ended the sleeper's agent: {}",
        stdout(&top)
    );
    ok(Command::new(DOCKER).args(["kill", "--signal", "INT", &name]));
    let waited = ok(Command::new(DOCKER).args(["wait", &name]));
    assert_eq!(
        stdout(&waited).trim(),
        "130",
        "the sleeper's run did not end as interrupted"
    );

    let result = |dir: &str| -> Value {
        let p = out.path().join(dir).join("task/result.json");
        read_json(&p)
    };
    let sleeper = result("sleeper");
    assert_eq!(sleeper["isolation"], "chroot", "{sleeper}");
    assert_eq!(sleeper["infra_error"]["stage"], "interrupted", "{sleeper}");
    assert_host_clean_output(&out.path().join("sleeper"));
    let oracle = result("oracle");
    assert_eq!(oracle["infra_error"], Value::Null, "{oracle}");
    assert_eq!(oracle["resolved"], true, "{oracle}");
    let scripted = result("scripted");
    assert_eq!(scripted["infra_error"], Value::Null, "{scripted}");
    assert_eq!(scripted["resolved"], true, "{scripted}");
    let gw_log = std::fs::read_to_string(out.path().join("scripted/task/gateway.log")).unwrap();
    assert!(gw_log.contains("chat/completions"), "gateway log: {gw_log}");
}

fn words_of(v: String) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}
