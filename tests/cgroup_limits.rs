//! The run's cgroup (src/sandbox/cgroup.rs) on the real kernel, with the
//! sample images: `--memory` gets an agent that allocates more OOM-killed
//! and the task is still graded; a fork bomb stops at `pids.max`; no
//! `hoist-*` cgroup outlives a run and a stale one from a killed run is
//! cleared; without any cgroup, `--memory` fails naming why and a plain
//! run goes on with rlimits, run.json saying so.
//!
//! The agents are commands replayed to `agent-scripted` by
//! `gateway-replay` from recordings written here (`--recordings`).
//! Needs root and a writable cgroupfs; skipped with a reason otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hoist::sandbox::cgroup::{self, own_path};
use serde_json::{json, Value};
use support::*;

struct Env {
    oci: String,
    /// A pyfix task the replay gateway may serve.
    task: String,
}

fn env() -> Option<Env> {
    if !is_root() {
        skip("cgroup tests need root (hoist run, a writable cgroupfs)");
        return None;
    }
    let oci = env_or_skip("HOIST_SAMPLES_OCI")?;
    let tasks = env_or_skip("HOIST_SAMPLES_REPLAY_TASKS")?;
    let task = tasks.split_whitespace().next()?.to_string();
    // The test and the hoist it starts share a cgroup: what the probe
    // makes here, a run can.
    for (c, r) in cgroup::probe() {
        if let Err(why) = r {
            skip(&format!("no {} cgroup here: {why}", c.name()));
            return None;
        }
    }
    Some(Env { oci, task })
}

fn store() -> PathBuf {
    test_store("cgroup-store")
}

/// `hoist run` of the scripted agent replaying `rec`, plus `extra`.
fn run_command(e: &Env, rec: &Path, out: &Path, extra: &[&str]) -> Command {
    let r = |tag: &str| format!("oci:{}:{tag}", e.oci);
    let mut c = hoist(&store());
    c.arg("run")
        .args(["--benchmark", &r("pyfix"), "--agent", &r("agent-scripted")])
        .args(["--gateway", &r("gateway-replay"), "--task", &e.task])
        .arg("--recordings")
        .arg(rec)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// Start `hoist run` for the scripted agent replaying `rec`.
fn start(e: &Env, rec: &Path, out: &Path, extra: &[&str]) -> Child {
    run_command(e, rec, out, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hoist")
}

fn agent_log(out: &Path) -> String {
    std::fs::read_to_string(out.join("task/agent.log")).unwrap()
}

/// Whether `log` has `line` as a line of its own (the log also echoes the
/// script, whose text holds the same words).
fn has_line(log: &str, line: &str) -> bool {
    log.lines().any(|l| l == line)
}

/// The task was graded: result.json holds the grader's verdict per test.
fn assert_graded(out: &Path) -> Value {
    let r = read_json(&out.join("task/result.json"));
    assert_eq!(r["infra_error"], Value::Null, "{r}");
    assert_eq!(r["grade"]["exit_code"], 0, "{r}");
    assert!(
        r["grade"]["tests"]
            .as_object()
            .is_some_and(|t| !t.is_empty()),
        "{r}"
    );
    r
}

/// Where hoist makes a run's cgroups: this process's own cgroup in each
/// hierarchy (the test and the hoist it starts share them).
fn parents() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let root = Path::new("/sys/fs/cgroup");
    let rel = |p: &str| p.trim_start_matches('/').to_string();
    if root.join("cgroup.controllers").exists() {
        // v2: beneath hoist's own only in the host's root cgroup, else
        // beneath /sys/fs/cgroup/hoist (docs/isolation.md "Limits").
        let own = own_path(&own, "").unwrap();
        return vec![if own == "/" {
            root.to_path_buf()
        } else {
            root.join("hoist")
        }];
    }
    ["pids", "memory"]
        .iter()
        .filter_map(|c| own_path(&own, c).map(|p| root.join(c).join(rel(p))))
        .collect()
}

/// The cgroups of the run made by the hoist with process id `pid`.
fn run_cgroups(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("hoist-{pid}-");
    parents()
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn enforced_by_cgroup(limit: &Value, max: u64) {
    assert_eq!(limit["max"], max, "{limit}");
    let by = limit["enforced_by"].as_str().unwrap_or("");
    assert!(by == "cgroup v1" || by == "cgroup v2", "{limit}");
}

#[test]
fn memory_limit_oom_kills_the_agent_and_the_task_is_still_graded() {
    let Some(e) = env() else { return };
    let rec = recordings(&e.task, HOG);
    for isolation in ["namespaces", "chroot"] {
        let out = tempfile::tempdir().unwrap();
        let child = start(
            &e,
            rec.path(),
            out.path(),
            &["--isolation", isolation, "--memory", "64M"],
        );
        let pid = child.id();
        ok_child(child, "hoist run");
        let log = agent_log(out.path());
        assert!(has_line(&log, "hog: 8 MiB"), "the hog never ran:\n{log}");
        assert!(
            !has_line(&log, "hog: done"),
            "{isolation}: not limited:\n{log}"
        );
        // sh reports its child's SIGKILL as 137; python as -9 if sh exec'd it.
        assert!(
            has_line(&log, "scripted: step 1: exit status 137")
                || has_line(&log, "scripted: step 1: exit status -9"),
            "{isolation}: the hog was not killed:\n{log}"
        );
        assert_graded(out.path());
        let run = read_json(&out.path().join("run.json"));
        enforced_by_cgroup(&run["limits"]["memory"], 64 << 20);
        enforced_by_cgroup(&run["limits"]["pids"], 1024);
        assert_eq!(run_cgroups(pid), Vec::<PathBuf>::new(), "left behind");
    }
    // The same agent without --memory: the kill above was the limit's.
    let out = tempfile::tempdir().unwrap();
    ok_child(start(&e, rec.path(), out.path(), &[]), "hoist run");
    let log = agent_log(out.path());
    assert!(has_line(&log, "hog: done"), "{log}");
    let run = read_json(&out.path().join("run.json"));
    assert_eq!(
        run["limits"]["memory"],
        json!({"max": null, "enforced_by": null})
    );
}

/// The `max` count of a `pids.events` text.
fn max_events(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn fork_bomb_stops_at_pids_max() {
    let Some(e) = env() else { return };
    let rec = recordings(&e.task, BOMB);
    let out = tempfile::tempdir().unwrap();
    let mut child = start(&e, rec.path(), out.path(), &[]);
    let pid = child.id();
    // pids.events counts the forks pids.max refused; read it from the
    // host while the run's cgroup exists.
    let (mut refused, mut peak) = (0, 0);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        for dir in run_cgroups(pid) {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            refused = refused.max(max_events(&read("pids.events")));
            peak = peak.max(read("pids.current").trim().parse().unwrap_or(0));
        }
        assert!(start.elapsed() < Duration::from_secs(120), "run hangs");
        std::thread::sleep(Duration::from_millis(10));
    }
    ok_child(child, "hoist run");
    let log = agent_log(out.path());
    let line = log
        .lines()
        .find(|l| l.starts_with("bomb: ") && l.contains("children"))
        .unwrap_or_else(|| panic!("no bomb line:\n{log}"));
    let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        line.ends_with("then Resource temporarily unavailable"),
        "{line}"
    );
    // The run's other processes (the sandbox stage, the supervisor, the
    // gateway, the agent, sh, the bomb itself) share the 1024.
    assert!(n < 1024 - 4, "{line}");
    assert!(has_line(&log, "bomb: done"), "{log}");
    assert!(refused > 0, "pids.max refused no fork ({line})");
    assert!(peak <= 1024 && peak > 1000, "pids.current peaked at {peak}");
    assert_graded(out.path());
    let run = read_json(&out.path().join("run.json"));
    enforced_by_cgroup(&run["limits"]["pids"], 1024);
    assert_eq!(run_cgroups(pid), Vec::<PathBuf>::new(), "left behind");
}

#[test]
fn stale_cgroups_of_killed_runs_are_cleared_and_do_not_block_runs() {
    let Some(e) = env() else { return };
    // What a run killed before its cleanup leaves: an empty hoist-PID-*
    // cgroup whose hoist is gone (no pid is that large), an hour old.
    let stale: Vec<PathBuf> = parents()
        .iter()
        .map(|p| p.join("hoist-2147483000-0badc0de"))
        .collect();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for d in &stale {
        let _ = std::fs::remove_dir(d); // a previous run of this test
        std::fs::create_dir(d).unwrap();
        std::fs::File::open(d)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    // A fresh one may be another hoist setting up: left alone.
    let young: Vec<PathBuf> = parents()
        .iter()
        .map(|p| p.join("hoist-2147483001-0badc0de"))
        .collect();
    for d in &young {
        let _ = std::fs::remove_dir(d);
        std::fs::create_dir(d).unwrap();
    }
    let rec = recordings(&e.task, "true");
    let out = tempfile::tempdir().unwrap();
    let child = start(&e, rec.path(), out.path(), &["--memory", "256M"]);
    let pid = child.id();
    ok_child(child, "hoist run");
    assert_graded(out.path());
    for d in &stale {
        assert!(!d.exists(), "{d:?} not cleared");
    }
    for d in &young {
        assert!(d.exists(), "{d:?} removed while young");
        std::fs::remove_dir(d).unwrap();
    }
    assert_eq!(run_cgroups(pid), Vec::<PathBuf>::new(), "left behind");
}

/// `hoist run ARGS` in a mount namespace of its own where `setup` (sh)
/// has run first; the pid hoist ran as (unshare and sh exec it), and its
/// output.
fn run_after(setup: &str, e: &Env, rec: &Path, out: &Path, extra: &[&str]) -> (u32, Output) {
    let inner = run_command(e, rec, out, extra);
    let launcher = ["unshare", "--mount", "--propagation", "private"];
    let child = support::after_shell(&launcher, setup, &inner)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    (child.id(), child.wait_with_output().unwrap())
}

/// A host without cgroups: an empty tmpfs over /sys/fs/cgroup.
const NO_CGROUPS: &str = "mount -t tmpfs -o ro,size=4k none /sys/fs/cgroup";

/// What Docker does without a cgroup namespace: the container's own
/// cgroup mounted as the root of each hierarchy, while /proc/self/cgroup
/// still names its full path.
fn own_cgroup_as_root() -> String {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let p = own_path(&own, "").unwrap();
        return format!("mount --bind '/sys/fs/cgroup{p}' /sys/fs/cgroup");
    }
    let mut sh = String::from("stash=$(mktemp -d)\n");
    for c in ["pids", "memory"] {
        let p = own_path(&own, c).unwrap();
        sh += &format!("mkdir $stash/{c}\nmount --bind '/sys/fs/cgroup/{c}{p}' $stash/{c}\n");
    }
    sh += "mount -t tmpfs -o size=4k none /sys/fs/cgroup\n";
    for c in ["pids", "memory"] {
        sh += &format!("mkdir /sys/fs/cgroup/{c}\nmount --move $stash/{c} /sys/fs/cgroup/{c}\n");
    }
    sh
}

#[test]
fn cgroupfs_mounted_from_our_own_cgroup_as_docker_does() {
    let Some(e) = env() else { return };
    if !have_tool("unshare") {
        return;
    }
    let rec = recordings(&e.task, HOG);
    let out = tempfile::tempdir().unwrap();
    let (pid, o) = run_after(
        &own_cgroup_as_root(),
        &e,
        rec.path(),
        out.path(),
        &["--memory", "64M"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let log = agent_log(out.path());
    assert!(has_line(&log, "hog: 8 MiB"), "the hog never ran:\n{log}");
    assert!(!has_line(&log, "hog: done"), "not limited:\n{log}");
    assert_graded(out.path());
    let run = read_json(&out.path().join("run.json"));
    enforced_by_cgroup(&run["limits"]["memory"], 64 << 20);
    enforced_by_cgroup(&run["limits"]["pids"], 1024);
    assert_eq!(run_cgroups(pid), Vec::<PathBuf>::new(), "left behind");
}

#[test]
fn without_cgroups_memory_fails_and_a_plain_run_says_what_is_missing() {
    let Some(e) = env() else { return };
    if !have_tool("unshare") {
        return;
    }
    let rec = recordings(&e.task, "true");
    let out = tempfile::tempdir().unwrap();
    let (_, o) = run_after(NO_CGROUPS, &e, rec.path(), out.path(), &["--memory", "64M"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--memory")
            && err.contains("no memory cgroup")
            && err.contains("/sys/fs/cgroup/memory"),
        "{err}"
    );
    assert!(
        !out.path().join("task/result.json").exists(),
        "the run went on"
    );

    let out = tempfile::tempdir().unwrap();
    let (_, o) = run_after(NO_CGROUPS, &e, rec.path(), out.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_graded(out.path());
    let limits = &read_json(&out.path().join("run.json"))["limits"];
    assert_eq!(limits["pids"]["max"], 1024, "{limits}");
    assert_eq!(limits["pids"]["enforced_by"], Value::Null, "{limits}");
    let why = limits["pids"]["not_applied"].as_str().unwrap_or("");
    assert!(
        why.starts_with("no pids cgroup: ") && why.contains("/sys/fs/cgroup/pids"),
        "{limits}"
    );
    assert_eq!(
        limits["processes_per_uid"],
        json!({"max": 1024, "enforced_by": "RLIMIT_NPROC"})
    );
}
