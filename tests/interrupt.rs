//! SIGINT and SIGTERM during `hoist run` (docs/exit-codes.md, issue 10): the
//! sandbox is killed and taken down before hoist exits 130 or 143, the
//! result says `infra_error {stage: "interrupted"}`, and nothing is left:
//! no process, no mount, no run directory. `--out` belongs to one run: a
//! second run into it is refused while the first lasts, and afterwards
//! unless `--force`.
//!
//! The agent is `agent-sleeper` (it ignores SIGTERM and sleeps far past
//! the test), so only hoist's own teardown can end it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::*;

struct Setup {
    oci: String,
    task: String,
}

fn setup() -> Option<Setup> {
    if !is_root() {
        skip("interrupting a run needs root (namespaces, overlay mounts)");
        return None;
    }
    let tasks = env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?;
    Some(Setup {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        task: tasks.split_whitespace().next()?.to_string(),
    })
}

/// The store `hoist run`'s own tests use (tests/run_crane.rs), whose layer
/// cache is filled already; other tests may run in it meanwhile, so the
/// checks look at this run's directories only.
fn crane_store() -> PathBuf {
    test_dir().join("run-store")
}

/// tests/container_mode.rs's store, for the same reason.
fn container_store() -> PathBuf {
    test_dir().join("container-store")
}

impl Setup {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }

    fn run(&self, store: &Path, agent: &str, out: &Path, extra: &[&str]) -> Command {
        let mut c = hoist(store);
        c.arg("run")
            .arg("--benchmark")
            .arg(self.r("pyfix"))
            .arg("--agent")
            .arg(self.r(agent))
            .args(["--task", &self.task, "--agent-timeout", "600", "--out"])
            .arg(out)
            .args(extra);
        c
    }
}

/// Wait until the agent sleeps (a descendant `sleep 100000`), and return
/// the run's work directory, read from the sandbox stage's command line
/// (`__sandbox STORE/work/run-XXXX/agent/sandbox.json`), or for container
/// mode `None`.
fn wait_for_the_agent(child: &mut Child) -> Option<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut work = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its agent was seen running");
        }
        let live = live_descendants();
        for cmd in &live {
            if let Some(rest) = cmd.split_once(" __sandbox ").map(|(_, r)| r) {
                let config = PathBuf::from(rest.trim());
                // .../work/run-XXXX/agent/sandbox.json
                work = config
                    .parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf);
            }
        }
        if live.iter().any(|c| c.starts_with("sleep 100000")) {
            return work;
        }
        assert!(
            Instant::now() < deadline,
            "no agent running after 300 s: {live:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hoist did not exit within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, sig).unwrap();
}

/// What an interrupted run must leave: its exit code, the result and the
/// record saying so, a clean `--out`, and nothing of it on the host.
fn assert_interrupted(
    status: ExitStatus,
    stderr: &str,
    out: &Path,
    store: &Path,
    work: Option<&Path>,
    (name, code): (&str, i32),
) {
    assert_eq!(status.code(), Some(code), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("interrupted by {name}")),
        "stderr:\n{stderr}"
    );
    let result = read_json(&out.join("task/result.json"));
    assert_eq!(result["infra_error"]["stage"], "interrupted", "{result:#}");
    assert!(
        result["infra_error"]["message"]
            .as_str()
            .unwrap()
            .contains(name),
        "{result:#}"
    );
    assert_eq!(result["resolved"], false);
    let record = read_json(&out.join("run.json"));
    assert_eq!(record["interrupted"], name, "{record:#}");
    assert_eq!(record["supervisor_exit_code"], code, "{record:#}");
    assert_host_clean_output(out);
    let left = live_descendants();
    assert!(left.is_empty(), "left running after the signal: {left:?}");
    if let Some(work) = work {
        assert!(
            !work.exists(),
            "the run's work directory {} is still there",
            work.display()
        );
        let mounts = mountinfo();
        let w = work.to_string_lossy();
        assert!(
            !mounts.lines().any(|l| l.contains(w.as_ref())),
            "a mount of the run is left:\n{mounts}"
        );
    }
    assert_store_verifies(store);
}

fn start(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child, limit: Duration) -> (ExitStatus, String) {
    let status = wait_with_timeout(&mut child, limit);
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn sigint_in_namespaces_takes_the_sandbox_down_and_exits_130() {
    let Some(s) = setup() else { return };
    adopt_orphans();
    let store = crane_store();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut child = start(&mut s.run(&store, "agent-sleeper", &out, &[]));
    let work = wait_for_the_agent(&mut child);
    assert!(work.is_some(), "the sandbox stage was not seen");

    // While it lasts, --out is the run's: a second run is refused, with
    // or without --force, and changes nothing.
    for extra in [&[][..], &["--force"][..]] {
        let o = run(&mut s.run(&store, "agent-oracle", &out, extra));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("still running"),
            "stderr:\n{}",
            stderr(&o)
        );
    }

    signal(&child, Signal::INT);
    let (status, err) = finish(child, Duration::from_secs(60));
    assert_interrupted(status, &err, &out, &store, work.as_deref(), ("SIGINT", 130));

    // Its output stays until the user says otherwise: a new run into it
    // is refused, naming --force ...
    let o = run(&mut s.run(&store, "agent-oracle", &out, &[]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        read_json(&out.join("task/result.json"))["infra_error"]["stage"],
        "interrupted"
    );
    // ... and --force clears it (a link planted there goes, its target
    // stays) and runs the task to its verdict.
    let target = tmp.path().join("host-file");
    std::fs::write(&target, "host").unwrap();
    std::os::unix::fs::symlink(&target, out.join("planted")).unwrap();
    let o = run(&mut s.run(&store, "agent-oracle", &out, &["--force"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let result = read_json(&out.join("task/result.json"));
    assert_eq!(result["resolved"], true, "{result:#}");
    assert!(result["infra_error"].is_null());
    assert!(!out.join("planted").exists() && !out.join("planted").is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "host");
    assert_host_clean_output(&out);
}

#[test]
fn sigterm_in_chroot_takes_the_sandbox_down_and_exits_143() {
    let Some(s) = setup() else { return };
    adopt_orphans();
    let store = crane_store();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut child = start(&mut s.run(&store, "agent-sleeper", &out, &["--isolation", "chroot"]));
    let work = wait_for_the_agent(&mut child);
    assert!(work.is_some(), "the sandbox stage was not seen");
    signal(&child, Signal::TERM);
    // Taking a chroot run down removes its copied trees.
    let (status, err) = finish(child, Duration::from_secs(120));
    assert_interrupted(
        status,
        &err,
        &out,
        &store,
        work.as_deref(),
        ("SIGTERM", 143),
    );
}

#[test]
fn sigint_in_container_mode_removes_the_containers_and_exits_130() {
    let Some(s) = setup() else { return };
    if !have_tool("docker") {
        return;
    }
    adopt_orphans();
    let store = container_store();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cmd = s.run(&store, "agent-sleeper", &out, &["--mode", "container"]);
    let mut child = start(&mut cmd);
    // The agent runs in the container: wait for its sleep there.
    let label = format!("label=io.github.hoist.out={}", out.display());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run ended ({st}) before its container ran the agent");
        }
        let ids = run(docker().args(["ps", "-q", "--filter", &label]));
        let id = stdout(&ids);
        if let Some(id) = id.lines().next() {
            let top = run(docker().args(["top", id]));
            if stdout(&top).contains("sleep 100000") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no container ran the agent");
        std::thread::sleep(Duration::from_millis(300));
    }
    signal(&child, Signal::INT);
    let (status, err) = finish(child, Duration::from_secs(120));
    assert_interrupted(status, &err, &out, &store, None, ("SIGINT", 130));
    let left = run(docker().args(["ps", "-aq", "--filter", &label]));
    assert_eq!(stdout(&left).trim(), "", "containers of the run are left");
}
