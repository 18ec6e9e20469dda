//! `hoist run --mode crane` end to end on the sample images (benchmarks/,
//! agents/, models/), as root, with the real kernel: namespaces and chroot
//! isolation, the task pipeline, result.json field by field, timeouts,
//! the hostile probe agent, the lock file, and images pulled from the test
//! registry by digest.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

struct Samples {
    oci: String,
    registry: String,
    pyfix_tasks: Vec<String>,
    swe_tasks: Vec<String>,
    replay_tasks: Vec<String>,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("hoist run tests need root (namespaces, overlay mounts)");
        return None;
    }
    let words = |v: String| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        registry: env_or_skip("HOIST_SAMPLES_REGISTRY")?,
        pyfix_tasks: words(env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?),
        swe_tasks: words(env_or_skip("HOIST_SAMPLES_SWE_MINI_TASKS")?),
        replay_tasks: words(env_or_skip("HOIST_SAMPLES_REPLAY_TASKS")?),
    })
}

/// One store for the whole file, so the layer cache is filled once.
fn store() -> PathBuf {
    test_store("run-store")
}

impl Samples {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }
}

fn hoist_run(args: &[&str], out: &Path) -> Output {
    run(hoist(&store()).arg("run").args(args).arg("--out").arg(out))
}

fn result(out: &Path) -> Value {
    let bytes = std::fs::read(out.join("task/result.json")).expect("result.json written");
    serde_json::from_slice(&bytes).expect("result.json is JSON")
}

fn run_ok(args: &[&str]) -> (tempfile::TempDir, Value) {
    let out = tempfile::tempdir().unwrap();
    let o = hoist_run(args, out.path());
    assert!(
        o.status.success(),
        "hoist run {args:?} failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let r = result(out.path());
    (out, r)
}

#[test]
fn oracle_resolves_every_sample_task() {
    let Some(s) = samples() else { return };
    // One task checked field by field.
    let task = &s.pyfix_tasks[0];
    let (out, r) = run_ok(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-oracle"),
        "--task",
        task,
    ]);
    assert_eq!(r["schema"], "hoist.result/v1");
    assert_eq!(r["task_id"], task.as_str());
    assert_eq!(r["resolved"], true);
    assert_eq!(r["score"], 1.0);
    assert_eq!(r["agent"]["exit_code"], 0);
    assert_eq!(r["agent"]["timed_out"], false);
    assert_eq!(r["grade"]["exit_code"], 0);
    assert_eq!(r["grade"]["timed_out"], false);
    let tests = r["grade"]["tests"].as_object().unwrap();
    assert!(
        !tests.is_empty() && tests.values().all(|v| v == "PASSED"),
        "{tests:?}"
    );
    assert_eq!(r["images"]["benchmark"]["digest"], sample_digest("pyfix"));
    assert_eq!(
        r["images"]["agent"]["digest"],
        sample_digest("agent-oracle")
    );
    assert_eq!(r["images"]["gateway"], Value::Null);
    assert_eq!(r["platform"], "linux/amd64");
    assert_eq!(r["infra_error"], Value::Null);
    assert_eq!(r["mode"], "crane");
    assert_eq!(r["isolation"], "namespaces");
    assert!(r["started_at"].as_str().unwrap().ends_with('Z'));
    for f in ["agent.log", "grade.log", "result.json"] {
        assert!(out.path().join("task").join(f).is_file(), "{f} missing");
    }
    // The workdir is a git repository: the agent's change is saved as the
    // patch the oracle applied (benchmarks/pyfix/tasks/ID/fix.diff).
    let patch = std::fs::read_to_string(out.path().join("task/patch.diff")).unwrap();
    let fix = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("benchmarks/pyfix/tasks/{task}/fix.diff")),
    )
    .unwrap();
    let added = |d: &str| -> Vec<String> {
        d.lines()
            .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
            .map(str::to_string)
            .collect()
    };
    assert!(!added(&fix).is_empty());
    assert_eq!(added(&patch), added(&fix), "patch.diff:\n{patch}");
    let run_json: Value = read_json(&out.path().join("run.json"));
    assert_eq!(run_json["isolation"], "namespaces");
    assert_eq!(run_json["not_isolated"], serde_json::json!([]));
    // Root in the sandbox is root of its own user namespace, not the host's.
    assert_eq!(run_json["user_namespace"], true);
    assert!(run_json["host"]["kernel"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));

    for task in &s.pyfix_tasks[1..] {
        let (_, r) = run_ok(&[
            "--benchmark",
            &s.r("pyfix"),
            "--agent",
            &s.r("agent-oracle"),
            "--task",
            task,
        ]);
        assert_eq!(r["resolved"], true, "pyfix {task}: {r}");
    }
    // Per-task images: --task may be left out.
    for task in &s.swe_tasks {
        let (_, r) = run_ok(&[
            "--benchmark",
            &s.r(&format!("swe-mini-{task}")),
            "--agent",
            &s.r("agent-oracle"),
        ]);
        assert_eq!(r["resolved"], true, "swe-mini {task}: {r}");
        assert_eq!(r["task_id"], task.as_str());
    }
}

#[test]
fn noop_resolves_nothing() {
    let Some(s) = samples() else { return };
    let (_, r) = run_ok(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-noop"),
        "--task",
        &s.pyfix_tasks[0],
    ]);
    assert_eq!(r["resolved"], false);
    assert_eq!(r["score"], 0.0);
    assert_eq!(r["agent"]["exit_code"], 0);
    assert_eq!(
        r["infra_error"],
        Value::Null,
        "an unresolved task is not an infra error"
    );
    assert!(r["grade"]["tests"]
        .as_object()
        .unwrap()
        .values()
        .any(|v| v == "FAILED"));
    let task = &s.swe_tasks[0];
    let (_, r) = run_ok(&[
        "--benchmark",
        &s.r(&format!("swe-mini-{task}")),
        "--agent",
        &s.r("agent-noop"),
    ]);
    assert_eq!(r["resolved"], false);
}

#[test]
fn scripted_agent_with_replay_gateway_resolves() {
    let Some(s) = samples() else { return };
    let task = &s.replay_tasks[0];
    let (out, r) = run_ok(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-scripted"),
        "--gateway",
        &s.r("gateway-replay"),
        "--task",
        task,
    ]);
    assert_eq!(r["resolved"], true, "{r}");
    assert_eq!(
        r["images"]["gateway"]["digest"],
        sample_digest("gateway-replay")
    );
    let gw_log = std::fs::read_to_string(out.path().join("task/gateway.log")).unwrap();
    assert!(gw_log.contains("chat/completions"), "gateway log: {gw_log}");
}

/// chroot shares the runner's network: a fixed gateway port would be taken
/// by the first run (or anything else) and the next run's gateway could not
/// bind it, or its agent would talk to another run's gateway. With the
/// default port busy, the run still reaches a gateway of its own.
#[test]
fn chroot_run_with_a_gateway_beside_a_busy_default_port() {
    let Some(s) = samples() else { return };
    // Busy either way: held here, or by whatever already has it.
    let _held = std::net::TcpListener::bind(("127.0.0.1", 8377));
    let task = &s.replay_tasks[0];
    let (out, r) = run_ok(&[
        "--isolation",
        "chroot",
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-scripted"),
        "--gateway",
        &s.r("gateway-replay"),
        "--task",
        task,
    ]);
    assert_eq!(r["infra_error"], Value::Null, "{r}");
    assert_eq!(r["resolved"], true, "{r}");
    let gw_log = std::fs::read_to_string(out.path().join("task/gateway.log")).unwrap();
    assert!(gw_log.contains("chat/completions"), "gateway log: {gw_log}");
}

#[test]
fn probe_agent_is_denied_everything() {
    let Some(s) = samples() else { return };
    adopt_orphans();
    let sentinel = Path::new("/tmp/hoist-probe-sentinel");
    let _ = std::fs::remove_file(sentinel);
    let (out, r) = run_ok(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-probe"),
        "--task",
        &s.pyfix_tasks[0],
    ]);
    assert_eq!(r["infra_error"], Value::Null);
    let attempts = assert_probe_denied(out.path());
    // From the host: no process of the agent uid outlives the run, and the
    // probe's attempts to write outside left nothing on the host.
    let left = processes_of(1000, "");
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(!out.path().join("task/probe-was-here").exists());
    let write_attempt = attempts
        .iter()
        .find(|a| a["attempt"] == "write-output-result")
        .expect("probe tried /output");
    assert_eq!(write_attempt["denied"], true);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(out.path().join("task/result.json")).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o644),
        "result.json is root's alone"
    );
}

#[test]
fn probe_agent_and_its_install_sh_are_denied_in_chroot_isolation() {
    let Some(s) = samples() else { return };
    adopt_orphans();
    let (out, r) = run_ok(&[
        "--isolation",
        "chroot",
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-probe"),
        "--task",
        &s.pyfix_tasks[0],
    ]);
    assert_eq!(r["infra_error"], Value::Null, "{r}");
    assert_eq!(r["isolation"], "chroot");
    // chroot shares the network namespace: the probe sees the host's
    // interface names, but Landlock's TCP rules and hoist's seccomp filter
    // keep it from connecting anywhere (the net-* attempts are denied).
    let attempts = assert_probe_denied_but(out.path(), &["net-interfaces"]);
    for net in [
        "net-tcp-1.1.1.1-53",
        "net-udp-dns-8.8.8.8",
        "net-raw-socket",
    ] {
        let a = attempts.iter().find(|a| a["attempt"] == net).expect(net);
        assert_eq!(a["denied"], true, "{a}");
    }
    let left = processes_of(1000, "");
    assert!(left.is_empty(), "left running: {left:?}");
}

/// A run on this kernel with Landlock pinned to an older ABI, as a CI
/// runner on Linux 6.5 (ABI 3) would have it.
fn run_pinned(abi: &str, args: &[&str]) -> (tempfile::TempDir, Output) {
    let out = tempfile::tempdir().unwrap();
    let o = run(hoist(&store())
        .env("HOIST_LANDLOCK_ABI", abi)
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out.path()));
    (out, o)
}

#[test]
fn an_older_landlock_abi_is_recorded_in_not_isolated_and_refused_by_strict() {
    let Some(s) = samples() else { return };
    let pyfix = s.r("pyfix");
    let oracle = s.r("agent-oracle");
    let task = &s.pyfix_tasks[0];
    let base = ["--benchmark", &pyfix, "--agent", &oracle, "--task", task];
    let chroot = [&base[..], &["--isolation", "chroot"]].concat();
    let (out, o) = run_pinned("3", &chroot);
    assert!(o.status.success(), "{}", stderr(&o));
    let run_json: Value = read_json(&out.path().join("run.json"));
    let gaps: Vec<&str> = run_json["not_isolated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(
        gaps[0].starts_with("network: Landlock ABI 3 has no TCP rules"),
        "{gaps:?}"
    );
    assert!(
        gaps[1].starts_with("signals and abstract unix sockets: Landlock ABI 3"),
        "{gaps:?}"
    );
    assert_eq!(result(out.path())["resolved"], true);

    // The run's own namespaces make up for what ABI 3 lacks...
    let strict = [&base[..], &["--isolation", "strict"]].concat();
    let (out, o) = run_pinned("3", &strict);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(result(out.path())["isolation"], "namespaces");
    // ...but not for a shared network, and nothing makes up for no
    // Landlock at all: strict refuses before anything runs.
    let host_net = [&strict[..], &["--network", "host"]].concat();
    for (abi, args, gap) in [
        ("3", &host_net, "network: Landlock ABI 3"),
        ("0", &strict, "landlock: not available"),
    ] {
        let (out, o) = run_pinned(abi, args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("--isolation strict") && err.contains(gap),
            "{err}"
        );
        assert!(!out.path().join("task/result.json").exists());
    }
}

#[test]
fn timeout_kills_the_agent_tree_and_still_grades() {
    let Some(s) = samples() else { return };
    adopt_orphans();
    let start = Instant::now();
    let (_, r) = run_ok(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-sleeper"),
        "--task",
        &s.pyfix_tasks[0],
        "--agent-timeout",
        "2",
    ]);
    assert_eq!(r["agent"]["timed_out"], true);
    assert_eq!(r["agent"]["exit_code"], 124);
    assert_eq!(r["grade"]["exit_code"], 0, "grading ran: {r}");
    assert_eq!(r["resolved"], false);
    // timeout 2 s + kill grace 10 s + materialize and grading.
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    let left = processes_of(1000, "");
    assert!(left.is_empty(), "left running: {left:?}");
}

#[test]
fn probe_answers_are_cached_in_the_store() {
    let Some(s) = samples() else { return };
    let store = tempfile::tempdir().unwrap();
    let run_in = |store: &Path| {
        let out = tempfile::tempdir().unwrap();
        ok(hoist(store)
            .arg("run")
            .args(["--benchmark", &s.r("pyfix"), "--agent", &s.r("agent-noop")])
            .args(["--task", &s.pyfix_tasks[0], "--out"])
            .arg(out.path()));
        let bytes = std::fs::read(out.path().join("run.json")).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["isolation"].clone()
    };
    assert_eq!(run_in(store.path()), "namespaces");
    // The next run takes the answer from probe.json, without probing: one
    // that says namespaces are refused sends `auto` to chroot.
    let cache = store.path().join("probe.json");
    let mut entry: Value = read_json(&cache);
    assert_eq!(
        entry["probed"]["namespaces"],
        serde_json::json!({"Ok": null}),
        "{entry}"
    );
    entry["probed"]["namespaces"] = serde_json::json!({"Err": "refused, says the cache"});
    std::fs::write(&cache, entry.to_string()).unwrap();
    assert_eq!(run_in(store.path()), "chroot");
    // A cache written for another situation is not trusted.
    entry["key"] = "another boot".into();
    std::fs::write(&cache, entry.to_string()).unwrap();
    assert_eq!(run_in(store.path()), "namespaces");
}

#[test]
fn chroot_isolation_runs_the_same_pipeline() {
    let Some(s) = samples() else { return };
    // chroot shares the host's pid namespace: a uid-1000 process that is
    // not the run's (another run's agent, the host's user 1000) must
    // outlive the run's sweeps of the agent's processes.
    let mut bystander = std::process::Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups"])
        .args(["sleep", "600"])
        .spawn()
        .expect("setpriv (util-linux)");
    let (out, r) = run_ok(&[
        "--isolation",
        "chroot",
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-oracle"),
        "--task",
        &s.pyfix_tasks[1],
    ]);
    let outlived = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(outlived, "the run killed a uid-1000 process not its own");
    assert_eq!(r["resolved"], true, "{r}");
    assert_eq!(r["isolation"], "chroot");
    let run_json: Value = read_json(&out.path().join("run.json"));
    assert_eq!(run_json["rootfs"], "copy");
    // Landlock ABI 7 here: TCP rules and scopes make up for the shared
    // network and pid namespace (see chroot_on_an_older_landlock_*).
    assert_eq!(
        run_json["not_isolated"],
        serde_json::json!([]),
        "{run_json}"
    );
}

#[test]
fn same_run_twice_gives_identical_normalised_results() {
    let Some(s) = samples() else { return };
    let args = [
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-oracle"),
        "--task",
        &s.pyfix_tasks[2],
    ];
    let (_, mut a) = run_ok(&args);
    let (_, mut b) = run_ok(&args);
    assert_ne!(a["started_at"], Value::Null);
    hoist::result::normalise_json(&mut a);
    hoist::result::normalise_json(&mut b);
    assert_eq!(a, b);
}

#[test]
fn pulls_from_the_registry_by_digest_and_locked_detects_retagging() {
    let Some(s) = samples() else { return };
    let reg = |tag: &str| format!("{}/{tag}@{}", s.registry, sample_digest(tag));
    let (_, r) = run_ok(&[
        "--benchmark",
        &reg("pyfix"),
        "--agent",
        &reg("agent-oracle"),
        "--task",
        &s.pyfix_tasks[0],
    ]);
    assert_eq!(r["resolved"], true);
    assert_eq!(r["images"]["benchmark"]["digest"], sample_digest("pyfix"));

    // A tag that moves: lock it, re-tag it, run --locked: exit 3.
    if !have_tool("skopeo") {
        return;
    }
    let host = s.registry.split('/').next().unwrap();
    let moving = format!("{host}/relock/agent:latest");
    let push = |tag: &str| {
        ok(Command::new("skopeo").args([
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", s.oci),
            &format!("docker://{moving}"),
        ]))
    };
    push("agent-oracle");
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("hoist.lock");
    let lock_s = lock.to_str().unwrap();
    ok(hoist(&store()).args([
        "lock",
        "--pull",
        "always",
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &moving,
        "--lock-file",
        lock_s,
    ]));
    // `hoist run --locked` of the moving agent, its tag resolved at the
    // registry (by default a pin the store holds runs as stored).
    let run_locked = || {
        let out = tempfile::tempdir().unwrap();
        let args = [
            "--benchmark",
            &s.r("pyfix"),
            "--agent",
            &moving,
            "--task",
            &s.pyfix_tasks[0],
            "--locked",
            "--pull",
            "always",
            "--lock-file",
            lock_s,
        ];
        let o = hoist_run(&args, out.path());
        (out, o)
    };
    let (_, o) = run_locked();
    assert!(o.status.success(), "{}", stderr(&o));
    push("agent-noop");
    let (out, o) = run_locked();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("agent")
            && err.contains(&sample_digest("agent-oracle"))
            && err.contains(&sample_digest("agent-noop")),
        "{err}"
    );
    assert!(!out.path().join("task/result.json").exists(), "nothing ran");
}

#[test]
fn missing_task_is_a_usage_error_naming_the_tasks() {
    let Some(s) = samples() else { return };
    let out = tempfile::tempdir().unwrap();
    let o = hoist_run(
        &[
            "--benchmark",
            &s.r("pyfix"),
            "--agent",
            &s.r("agent-noop"),
            "--task",
            "no-such-task",
        ],
        out.path(),
    );
    // Checked against the image's task list before anything runs.
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let msg = stderr(&o);
    assert!(
        msg.contains("--task") && msg.contains("no-such-task") && msg.contains(&s.pyfix_tasks[0]),
        "{msg}"
    );
    assert!(!out.path().join("task/result.json").exists(), "nothing ran");
}

/// The leftover check the tests above rely on: an orphan that a child of
/// this test left behind, detached with setsid, is found; the host's other
/// processes of the same uid are not.
#[test]
fn leftover_check_finds_an_orphan_of_this_test_and_nothing_else() {
    adopt_orphans();
    let uid = rustix::process::getuid().as_raw();
    // Of the host's many processes of this uid, none is this test's yet.
    assert_eq!(processes_of(uid, ""), Vec::<String>::new());
    let mut detacher = std::process::Command::new("setsid")
        .args(["-f", "sleep", "4711"])
        .spawn()
        .unwrap();
    detacher.wait().unwrap();
    // setsid -f forks, and its child is orphaned, to this test; it may
    // not have exec'd sleep yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = processes_of(uid, "sleep 4711");
    while found.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        found = processes_of(uid, "sleep 4711");
    }
    let _ = std::process::Command::new("pkill")
        .args(["-f", "^sleep 4711$"])
        .status();
    assert_eq!(found.len(), 1, "{found:?}");
}

/// docs/pipeline.md (grading): a run is an agent session, then grading in a fresh
/// rootfs; `hoist grade OUT` runs that grading session again from the
/// saved run (the benchmark by the digest in run.json, its changes.tar and
/// agent.json) and gives the same result, in either isolation.
#[test]
fn a_saved_run_is_graded_again_to_the_same_result() {
    let Some(s) = samples() else { return };
    let task = &s.replay_tasks[0];
    let (out, mut first) = run_ok(&[
        "--benchmark",
        &s.r("pyfix"),
        "--agent",
        &s.r("agent-scripted"),
        "--gateway",
        &s.r("gateway-replay"),
        "--task",
        task,
    ]);
    assert_eq!(first["resolved"], true, "{first}");
    let run_json = read_json(&out.path().join("run.json"));
    let sessions: Vec<&str> = run_json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions, ["agent", "grade"], "{run_json}");
    for f in ["agent.json", "changes.tar", "patch.diff", "gateway.log"] {
        assert!(out.path().join("task").join(f).is_file(), "no task/{f}");
    }
    let phase = read_json(&out.path().join("task/agent.json"));
    assert!(
        phase["changes"]["changed"].as_u64().unwrap() >= 1,
        "{phase}"
    );

    // Again, into the run's own OUT: run.json stays, regrade.json is new.
    let o = run(hoist(&store()).arg("grade").arg(out.path()));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("the same verdict and tests"),
        "{}",
        stdout(&o)
    );
    assert_eq!(read_json(&out.path().join("run.json")), run_json);
    let regrade = read_json(&out.path().join("regrade.json"));
    assert_eq!(
        regrade["sessions"].as_array().unwrap().len(),
        1,
        "{regrade}"
    );
    let mut again = result(out.path());
    assert_eq!(again["started_at"], first["started_at"]);
    hoist::result::normalise_json(&mut first);
    hoist::result::normalise_json(&mut again);
    assert_eq!(again, first);

    // Elsewhere, in chroot isolation: the same.
    let other = tempfile::tempdir().unwrap();
    let o = run(hoist(&store())
        .arg("grade")
        .arg(out.path())
        .args(["--isolation", "chroot", "--out"])
        .arg(other.path()));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let mut elsewhere = result(other.path());
    assert_eq!(elsewhere["isolation"], "chroot");
    hoist::result::normalise_json(&mut elsewhere);
    assert_eq!(elsewhere, first);
    assert!(other.path().join("task/grade.log").is_file());

    // Without its hand-over, a run cannot be graded, and says why.
    std::fs::remove_file(out.path().join("task/changes.tar")).unwrap();
    let o = run(hoist(&store()).arg("grade").arg(out.path()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("changes.tar"), "{}", stderr(&o));
    std::fs::remove_file(out.path().join("task/agent.json")).unwrap();
    let o = run(hoist(&store()).arg("grade").arg(out.path()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("agent.json"), "{}", stderr(&o));
}
