//! End-to-end tests of `hoist task-exec`, the supervisor of docs/pipeline.md,
//! without the sandbox: the supervisor's paths are resolved under a
//! scratch root (`--root`), and the agent really runs as uid 1000.
//!
//! Each run happens in a fresh pid namespace (`unshare --pid --fork
//! --mount-proc`) whose PID 1 is a shell that starts task-exec as its
//! child (so task-exec is *not* PID 1, as in chroot mode) and, once it
//! returns, lists every process still alive in the namespace. The
//! namespace also keeps the supervisor's kill(-1) as uid 1000 from
//! reaching uid-1000 processes of anyone else on this machine.
//!
//! Needs root (to become uid 1000) and unshare(1); skipped with a reason
//! otherwise, or failed under HOIST_TEST_REQUIRE_ALL=1.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{read_json, skip};

/// One run at a time: every run kills all uid-1000 processes of its
/// namespace, and the gateway tests take a port.
static SERIAL: Mutex<()> = Mutex::new(());

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";

/// A grader that resolves the task when the agent wrote "fixed" to fix.txt.
const GRADER: &str = r#"#!/bin/sh
if [ "$(cat fix.txt 2>/dev/null)" = fixed ]; then
  printf '{"resolved": true, "tests": {"test_fix": "PASSED", "test_other": "PASSED"}}' > "$HOIST_GRADE_OUT"
else
  printf '{"resolved": false, "tests": {"test_fix": "FAILED", "test_other": "PASSED"}}' > "$HOIST_GRADE_OUT"
fi
echo graded
"#;

const NOOP: &str = "#!/bin/sh\necho noop\n";

/// PID 1 of the test's pid namespace: run task-exec, then report every
/// process left alive (state not Z) in the namespace but itself.
const WRAPPER: &str = r#"hoist="$1"; shift
"$hoist" task-exec "$@"; rc=$?
for s in /proc/[0-9]*/status; do
  case "$s" in /proc/1/status) continue ;; esac
  awk '/^Name:/ {n=$2} /^State:/ {st=$2} /^Uid:/ {u=$2} END {if (st != "" && st != "Z") print "SURVIVOR " n " uid=" u}' "$s" 2>/dev/null
done
exit $rc
"#;

struct Scratch {
    root: PathBuf,
    _dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    survivors: Vec<String>,
    elapsed: Duration,
}

fn setup() -> Option<Scratch> {
    if !rustix::process::geteuid().is_root() {
        skip("task-exec tests need root: the supervisor runs the agent as uid 1000");
        return None;
    }
    let unshare_ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !unshare_ok {
        skip(
            "task-exec tests need `unshare --pid --fork --mount-proc` (util-linux, CAP_SYS_ADMIN)",
        );
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("hoist-pipeline-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path().to_path_buf();
    let s = Scratch {
        root,
        _dir: dir,
        _serial: serial,
    };
    // uid 1000 must be able to walk from / to the workdir.
    s.mkdir("/", 0o755);
    s.mkdir("/etc", 0o755);
    std::fs::write(s.p("/etc/passwd"), PASSWD).unwrap();
    std::fs::write(s.p("/etc/group"), "root:x:0:\n").unwrap();
    s.mkdir("/output", 0o755);
    s.mkdir("/tasks", 0o700);
    s.mkdir("/tests", 0o700);
    s.mkdir("/opt/agent", 0o755);
    s.mkdir("/testbed", 0o755);
    std::os::unix::fs::chown(s.p("/testbed"), Some(1000), Some(1000)).unwrap();
    s.task("t1", json!({}));
    s.exec("/tests/grade.sh", GRADER, 0o700);
    Some(s)
}

impl Scratch {
    fn p(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn mkdir(&self, abs: &str, mode: u32) {
        let p = self.p(abs);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Write /tasks/ID/task.json: a default task with `overrides` merged.
    fn task(&self, id: &str, overrides: Value) {
        let mut t = json!({
            "id": id,
            "instruction": "Make fix.txt say fixed.\n",
            "workdir": "/testbed",
            "agent_timeout_sec": 60,
            "grade": {"command": ["/tests/grade.sh", id], "timeout_sec": 30}
        });
        for (k, v) in overrides.as_object().unwrap() {
            t[k] = v.clone();
        }
        self.task_raw(id, &t.to_string());
    }

    fn task_raw(&self, id: &str, text: &str) {
        self.mkdir(&format!("/tasks/{id}"), 0o700);
        let p = self.p(&format!("/tasks/{id}/task.json"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn exec(&self, abs: &str, script: &str, mode: u32) {
        let p = self.p(abs);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn agent(&self, script: &str) {
        self.exec("/opt/agent/run", script, 0o755);
    }

    fn context(&self, ctx: Value) {
        self.mkdir("/.hoist", 0o755);
        std::fs::write(self.p("/.hoist/context.json"), ctx.to_string()).unwrap();
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(WRAPPER, args)
    }

    /// task-exec started by the shell script `wrapper` (given the hoist
    /// binary and the arguments), which is PID 1 of a pid namespace of its
    /// own; task-exec is not, as in chroot mode.
    fn run_with(&self, wrapper: &str, args: &[&str]) -> Run {
        let started = Instant::now();
        let out = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "--",
                "sh",
                "-c",
                wrapper,
                "sh",
            ])
            .arg(env!("CARGO_BIN_EXE_hoist"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            survivors: stdout
                .lines()
                .filter(|l| l.starts_with("SURVIVOR"))
                .map(str::to_string)
                .collect(),
            stdout,
            elapsed,
        }
    }

    /// task-exec as PID 1 of its pid namespace, as in namespace mode.
    /// Nothing can be checked after it exits: the namespace dies with it.
    fn run_as_pid1(&self, args: &[&str]) -> Run {
        let started = Instant::now();
        let out = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .arg(env!("CARGO_BIN_EXE_hoist"))
            .arg("task-exec")
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            survivors: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    fn result(&self) -> Value {
        let text = std::fs::read_to_string(self.p("/output/task/result.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn read(&self, abs: &str) -> String {
        std::fs::read_to_string(self.p(abs)).unwrap_or_default()
    }
}

/// A run that wrote result.json and left nothing running.
fn run_ok(s: &Scratch, args: &[&str]) -> (Value, Run) {
    let r = s.run(args);
    assert_eq!(r.code, Some(0), "task-exec failed: {}", r.stderr);
    assert!(r.survivors.is_empty(), "left running: {:?}", r.survivors);
    (s.result(), r)
}

fn assert_infra(v: &Value, stage: &str, needle: &str) {
    assert_eq!(v["infra_error"]["stage"], stage, "{v:#}");
    let msg = v["infra_error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    assert_eq!(v["resolved"], false);
    assert_eq!(v["score"], 0.0);
}

/// Every path beneath `dir`.
fn walk_names(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_names(&p));
        }
        out.push(p);
    }
    out
}

fn mode_uid(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid())
}

#[test]
fn resolving_task_gives_a_full_result() {
    let Some(s) = setup() else { return };
    s.agent("#!/bin/sh\nid -u > uid.txt\ncat \"$1\" > instruction.txt\necho fixed > fix.txt\necho agent done\n");
    s.context(json!({
        "images": {"benchmark": {"ref": "oci:/b:1", "digest": "sha256:b0"},
                   "agent": {"ref": "oci:/a:1", "digest": "sha256:a0"}, "gateway": null},
        "platform": "linux/amd64", "mode": "crane", "isolation": "chroot",
        "hoist_version": "0.0.7", "materialize_ms": 42
    }));
    let (v, _) = run_ok(&s, &["--task", "t1"]);
    assert_eq!(v["schema"], "hoist.result/v1");
    assert_eq!(v["task_id"], "t1");
    assert_eq!(v["resolved"], true);
    assert_eq!(v["score"], 1.0);
    assert_eq!(v["agent"], json!({"exit_code": 0, "timed_out": false}));
    assert_eq!(v["grade"]["exit_code"], 0);
    assert_eq!(v["grade"]["timed_out"], false);
    assert_eq!(
        v["grade"]["tests"],
        json!({"test_fix": "PASSED", "test_other": "PASSED"})
    );
    // A grader that gives no SWE-bench split leaves result.json without one.
    assert_eq!(v["grade"].as_object().unwrap().len(), 3, "{:#}", v["grade"]);
    assert_eq!(
        v["images"]["benchmark"],
        json!({"ref": "oci:/b:1", "digest": "sha256:b0"})
    );
    assert_eq!(v["images"]["agent"]["digest"], "sha256:a0");
    assert_eq!(v["images"]["gateway"], Value::Null);
    assert_eq!(v["platform"], "linux/amd64");
    assert_eq!(v["infra_error"], Value::Null);
    assert_eq!(v["mode"], "crane");
    assert_eq!(v["isolation"], "chroot");
    assert_eq!(v["hoist_version"], "0.0.7");
    let started = v["started_at"].as_str().unwrap();
    assert_eq!(started.len(), "2025-01-02T03:04:05.678Z".len(), "{started}");
    assert!(
        started.ends_with('Z') && started.as_bytes()[10] == b'T',
        "{started}"
    );
    assert_eq!(v["durations_ms"]["materialize"], 42);
    assert!(v["durations_ms"]["agent"].is_u64());
    assert!(v["durations_ms"]["grade"].is_u64());
    // The agent ran as uid 1000 and read the instruction.
    assert_eq!(s.read("/testbed/uid.txt").trim(), "1000");
    assert_eq!(
        s.read("/testbed/instruction.txt"),
        "Make fix.txt say fixed.\n"
    );
    assert!(s.read("/output/task/agent.log").contains("agent done"));
    assert!(s.read("/output/task/grade.log").contains("graded"));
}

#[test]
fn outputs_are_root_owned_and_read_only_to_the_agent() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    run_ok(&s, &[]);
    assert_eq!(mode_uid(&s.p("/output/task")), (0o755, 0));
    for f in ["result.json", "agent.log", "grade.log"] {
        assert_eq!(
            mode_uid(&s.p(&format!("/output/task/{f}"))),
            (0o644, 0),
            "{f}"
        );
    }
    assert_eq!(mode_uid(&s.p("/run/hoist")), (0o755, 0));
    assert_eq!(mode_uid(&s.p("/run/hoist/instruction.md")), (0o644, 0));
}

#[test]
fn agent_user_and_home_are_created() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    run_ok(&s, &[]);
    assert_eq!(
        s.read("/etc/passwd"),
        format!("{PASSWD}agent:x:1000:1000::/home/agent:/bin/sh\n")
    );
    assert_eq!(s.read("/etc/group"), "root:x:0:\nagent:x:1000:\n");
    let home = std::fs::metadata(s.p("/home/agent")).unwrap();
    assert!(home.is_dir());
    assert_eq!(
        (home.mode() & 0o7777, home.uid(), home.gid()),
        (0o755, 1000, 1000)
    );
}

#[test]
fn uid_1000_taken_by_another_user_is_an_infra_error() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    std::fs::write(
        s.p("/etc/passwd"),
        format!("{PASSWD}ubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n"),
    )
    .unwrap();
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "sandbox", "ubuntu");
}

#[test]
fn noop_agent_leaves_the_task_unresolved() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    let (v, _) = run_ok(&s, &["--task", "t1"]);
    assert_eq!(v["resolved"], false);
    assert_eq!(v["score"], 0.0);
    assert_eq!(v["infra_error"], Value::Null);
    assert_eq!(v["agent"], json!({"exit_code": 0, "timed_out": false}));
    assert_eq!(v["grade"]["tests"]["test_fix"], "FAILED");
}

#[test]
fn failing_agent_exit_code_is_recorded() {
    let Some(s) = setup() else { return };
    s.agent("#!/bin/sh\necho fixed > fix.txt\nexit 7\n");
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["agent"], json!({"exit_code": 7, "timed_out": false}));
    // What counts is the workdir, not the agent's exit code.
    assert_eq!(v["resolved"], true);
}

#[test]
fn agent_past_its_timeout_is_stopped_and_still_graded() {
    let Some(s) = setup() else { return };
    s.agent("#!/bin/sh\necho fixed > fix.txt\nsleep 100\n");
    s.context(json!({"agent_timeout_sec": 2, "kill_grace_sec": 1}));
    let (v, r) = run_ok(&s, &[]);
    assert_eq!(v["agent"], json!({"exit_code": 124, "timed_out": true}));
    assert_eq!(v["grade"]["exit_code"], 0);
    assert_eq!(v["resolved"], true, "grading ran on the workdir");
    assert_eq!(v["infra_error"], Value::Null);
    assert!(
        r.elapsed < Duration::from_secs(2 + 1 + 3),
        "took {:?}",
        r.elapsed
    );
    assert!(v["durations_ms"]["agent"].as_u64().unwrap() >= 2000);
}

#[test]
fn agent_ignoring_sigterm_is_killed_after_the_grace_period() {
    let Some(s) = setup() else { return };
    // `trap '' TERM` is inherited by the loop's children too.
    s.agent("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.1; done\n");
    s.context(json!({"agent_timeout_sec": 1, "kill_grace_sec": 2}));
    let (v, r) = run_ok(&s, &[]);
    assert_eq!(v["agent"], json!({"exit_code": 124, "timed_out": true}));
    assert!(
        r.elapsed >= Duration::from_secs(3),
        "grace not given: {:?}",
        r.elapsed
    );
    assert!(
        r.elapsed < Duration::from_secs(1 + 2 + 3),
        "took {:?}",
        r.elapsed
    );
}

/// The agent leaves detached processes behind; none may run during
/// grading (the grader checks) or after task-exec returns (the wrapper
/// checks). The supervisor is not PID 1 here, as in chroot mode: it finds
/// them among its descendants in /proc, whether or not the root it was
/// given has a /proc of its own (chroot mode's has none).
fn background_processes_are_killed(root_has_proc: bool) {
    let Some(s) = setup() else { return };
    if root_has_proc {
        std::os::unix::fs::symlink("/proc", s.p("/proc")).unwrap();
    }
    s.agent(concat!(
        "#!/bin/sh\n",
        "setsid sleep 4242 >/dev/null 2>&1 &\n",
        "(setsid sh -c 'sleep 4243' >/dev/null 2>&1 &)\n",
        "nohup sleep 4244 >/dev/null 2>&1 &\n",
        "echo fixed > fix.txt\n",
    ));
    s.exec(
        "/tests/grade.sh",
        r#"#!/bin/sh
left=$(for f in /proc/[0-9]*/status; do awk '/^State:/ {st=$2} /^Uid:/ {u=$2} END {if (u == 1000 && st != "Z") print FILENAME}' "$f" 2>/dev/null; done)
echo "agent processes during grading: [$left]"
if [ -z "$left" ]; then r=true; else r=false; fi
printf '{"resolved": %s, "tests": {"no_agent_process": "%s"}}' "$r" "$([ $r = true ] && echo PASSED || echo FAILED)" > "$HOIST_GRADE_OUT"
"#,
        0o700,
    );
    let (v, r) = run_ok(&s, &[]);
    assert_eq!(v["infra_error"], Value::Null, "{v:#}");
    assert_eq!(
        v["grade"]["tests"]["no_agent_process"],
        "PASSED",
        "{}",
        s.read("/output/task/grade.log")
    );
    assert!(r.survivors.is_empty());
}

#[test]
fn background_processes_are_killed_without_proc_in_the_root() {
    background_processes_are_killed(false);
}

#[test]
fn background_processes_are_killed_with_proc_in_the_root() {
    background_processes_are_killed(true);
}

/// An install.sh that leaves a root daemon outside its process group and
/// an agent that leaves one of uid 1000: both are the run's, and both must
/// be gone before grading. The grader lists the live `sleep` processes as
/// `sleep/PPID` and resolves the task when the list is exactly `expected`.
fn leave_daemons_grade_sleepers(s: &Scratch, expected: &str) {
    s.exec(
        "/opt/agent/install.sh",
        "#!/bin/sh\nsetsid sleep 4245 >/dev/null 2>&1 &\n",
        0o755,
    );
    s.agent("#!/bin/sh\nsetsid sleep 4242 >/dev/null 2>&1 &\necho fixed > fix.txt\n");
    let grader = r#"#!/bin/sh
left=$(for f in /proc/[0-9]*/status; do awk '/^Name:/ {n=$2} /^State:/ {st=$2} /^PPid:/ {pp=$2} END {if (n == "sleep" && st != "Z") print n "/" pp}' "$f" 2>/dev/null; done)
echo "sleepers during grading: [$left]"
if [ "$left" = "EXPECTED" ]; then r=true; else r=false; fi
printf '{"resolved": %s, "tests": {}}' "$r" > "$HOIST_GRADE_OUT"
"#;
    s.exec(
        "/tests/grade.sh",
        &grader.replace("EXPECTED", expected),
        0o700,
    );
}

/// Beside task-exec, in its pid namespace: a uid-1000 process that is not
/// the run's (another run's agent, in a runner that fans out; the runner's
/// own user). Reports whether it outlived task-exec.
const BYSTANDER_WRAPPER: &str = r#"hoist="$1"; shift
setpriv --reuid 1000 --regid 1000 --clear-groups sleep 4250 &
bystander=$!
"$hoist" task-exec "$@"; rc=$?
state=$(awk '/^State:/ {print $2}' /proc/$bystander/status 2>/dev/null)
echo "BYSTANDER state=[$state]"
kill -9 $bystander 2>/dev/null
exit $rc
"#;

#[test]
fn outside_a_pid_namespace_of_its_own_only_the_runs_processes_are_killed() {
    let Some(s) = setup() else { return };
    // Only the bystander, whose parent is the wrapper (pid 1), may be left.
    leave_daemons_grade_sleepers(&s, "sleep/1");
    let r = s.run_with(BYSTANDER_WRAPPER, &[]);
    assert_eq!(r.code, Some(0), "task-exec failed: {}", r.stderr);
    let v = s.result();
    assert_eq!(v["infra_error"], Value::Null, "{v:#}");
    assert_eq!(v["resolved"], true, "{}", s.read("/output/task/grade.log"));
    assert!(
        r.stdout.contains("BYSTANDER state=[S]"),
        "the other uid-1000 process was killed: {}",
        r.stdout
    );
}

#[test]
fn missing_agent_run_is_a_sandbox_infra_error() {
    let Some(s) = setup() else { return };
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "sandbox", "/opt/agent/run");
    assert_eq!(v["agent"]["exit_code"], Value::Null);
    assert_eq!(v["grade"]["exit_code"], Value::Null);
}

#[test]
fn non_executable_agent_run_is_a_sandbox_infra_error() {
    let Some(s) = setup() else { return };
    s.exec("/opt/agent/run", NOOP, 0o644);
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "sandbox", "/opt/agent/run");
}

#[test]
fn unparseable_task_json_is_a_sandbox_infra_error() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.task_raw("t1", "{\"id\": \"t1\", ");
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "sandbox", "task.json");
    assert_eq!(v["task_id"], "t1");
    assert_eq!(v["grade"]["exit_code"], Value::Null);
}

#[test]
fn relative_workdir_is_a_sandbox_infra_error() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.task("t1", json!({"workdir": "testbed"}));
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "sandbox", "workdir");
}

#[test]
fn missing_workdir_is_a_sandbox_infra_error() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.task("t1", json!({"workdir": "/nowhere"}));
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "sandbox", "/nowhere");
}

#[test]
fn traversing_task_id_is_refused() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    let (v, _) = run_ok(&s, &["--task", "../x"]);
    assert_infra(&v, "sandbox", "not a task id");
}

#[test]
fn several_tasks_without_task_flag_are_listed() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.task("t2", json!({}));
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "sandbox", "t1, t2");
}

#[test]
fn grader_without_report_is_a_grade_infra_error() {
    let Some(s) = setup() else { return };
    s.agent("#!/bin/sh\necho fixed > fix.txt\n");
    s.exec(
        "/tests/grade.sh",
        "#!/bin/sh\necho forgot the report\n",
        0o700,
    );
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "grade", "no report");
    assert_eq!(v["grade"]["exit_code"], 0);
    assert_eq!(v["agent"]["exit_code"], 0);
}

#[test]
fn grader_with_invalid_report_is_a_grade_infra_error() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.exec(
        "/tests/grade.sh",
        "#!/bin/sh\nprintf '{\"resolved\": \"yes\", \"tests\": {}}' > \"$HOIST_GRADE_OUT\"\n",
        0o700,
    );
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "grade", "invalid");
}

/// A grader that reports as SWE-bench's report.json does: the tests the
/// fix must make pass and those it must keep passing.
#[test]
fn a_graders_swe_bench_split_is_carried_into_result_json() {
    let Some(s) = setup() else { return };
    s.agent("#!/bin/sh\necho fixed > fix.txt\n");
    s.exec(
        "/tests/grade.sh",
        r#"#!/bin/sh
cat > "$HOIST_GRADE_OUT" <<'END'
{"resolved": false,
 "tests": {"test_fix": "PASSED", "test_edge": "FAILED", "test_other": "PASSED"},
 "FAIL_TO_PASS": {"success": ["test_fix"], "failure": ["test_edge"]},
 "PASS_TO_PASS": {"success": ["test_other"], "failure": []},
 "PASS_TO_FAIL": {"success": [], "failure": []}}
END
"#,
        0o700,
    );
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["infra_error"], Value::Null, "{v:#}");
    assert_eq!(v["resolved"], false);
    assert_eq!(
        v["grade"]["FAIL_TO_PASS"],
        json!({"success": ["test_fix"], "failure": ["test_edge"]})
    );
    assert_eq!(
        v["grade"]["PASS_TO_PASS"],
        json!({"success": ["test_other"], "failure": []})
    );
    assert_eq!(v["grade"]["tests"]["test_edge"], "FAILED");
    assert!(v["grade"].get("PASS_TO_FAIL").is_none(), "{v:#}");
}

#[test]
fn a_malformed_swe_bench_split_is_a_grade_infra_error() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.exec(
        "/tests/grade.sh",
        "#!/bin/sh\nprintf '{\"resolved\": true, \"tests\": {}, \"FAIL_TO_PASS\": [\"t\"]}' > \"$HOIST_GRADE_OUT\"\n",
        0o700,
    );
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "grade", "invalid");
}

#[test]
fn grader_past_its_timeout_is_a_grade_infra_error() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.exec("/tests/grade.sh", "#!/bin/sh\nsleep 100\n", 0o700);
    s.context(json!({"grade_timeout_sec": 1, "kill_grace_sec": 1}));
    let (v, r) = run_ok(&s, &[]);
    assert_infra(&v, "grade", "did not finish");
    assert_eq!(v["grade"]["exit_code"], 124);
    assert_eq!(v["grade"]["timed_out"], true);
    assert!(
        r.elapsed < Duration::from_secs(1 + 1 + 3),
        "took {:?}",
        r.elapsed
    );
}

#[test]
fn agent_cannot_read_tests_or_tasks() {
    let Some(s) = setup() else { return };
    s.agent(concat!(
        "#!/bin/sh\n",
        "ls \"$HOIST_WORKDIR/../tests\"\n",
        "cat \"$HOIST_WORKDIR/../tests/grade.sh\"\n",
        "cat \"$HOIST_WORKDIR/../tasks/t1/task.json\"\n",
        "echo fixed > \"$HOIST_WORKDIR/../tests/planted\" \n",
    ));
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["infra_error"], Value::Null);
    let log = s.read("/output/task/agent.log");
    assert!(log.matches("Permission denied").count() >= 4, "{log}");
    assert!(!log.contains("HOIST_GRADE_OUT"), "grader leaked: {log}");
    assert!(!s.p("/tests/planted").exists());
}

#[test]
fn agent_environment_is_exactly_the_allowed_set() {
    let Some(s) = setup() else { return };
    s.agent(concat!(
        "#!/bin/sh\n",
        // The environment the kernel gave the process, not the shell's.
        "tr '\\0' '\\n' < /proc/$$/environ > env.txt\n",
        "grep -E '^(Uid|Gid|Groups|NoNewPrivs):' /proc/$$/status > status.txt\n",
        "ls -l /proc/$$/fd/0 > stdin.txt 2>&1; cat > stdin-content.txt\n",
    ));
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["infra_error"], Value::Null);
    let root = s.root.display();
    let mut env: Vec<String> = s
        .read("/testbed/env.txt")
        .lines()
        .map(str::to_string)
        .collect();
    env.sort();
    let mut want = vec![
        "HOME=/home/agent".to_string(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOIST_TASK_ID=t1".into(),
        format!("HOIST_INSTRUCTION_FILE={root}/run/hoist/instruction.md"),
        format!("HOIST_WORKDIR={root}/testbed"),
        "HOIST_MODEL_URL=".into(),
    ];
    want.sort();
    assert_eq!(env, want);
    let status = s.read("/testbed/status.txt");
    assert!(status.contains("Uid:\t1000\t1000\t1000\t1000"), "{status}");
    assert!(status.contains("Gid:\t1000\t1000\t1000\t1000"), "{status}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim_end(), "Groups:", "supplementary groups kept");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert_eq!(s.read("/testbed/stdin-content.txt"), "");
}

#[test]
fn a_git_workdir_leaves_patch_diff_and_the_agents_index_untouched() {
    let Some(s) = setup() else { return };
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "safe.directory=*",
                "-C",
            ])
            .arg(s.p("/testbed"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::write(s.p("/testbed/lib.py"), "def f():\n    return 1\n").unwrap();
    git(&["init", "-q"]);
    git(&["add", "lib.py"]);
    git(&["commit", "-q", "-m", "base"]);
    Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(s.p("/testbed"))
        .status()
        .unwrap();
    let index_before = std::fs::read(s.p("/testbed/.git/index")).unwrap();
    let objects = || {
        let mut v: Vec<_> = walk_names(&s.p("/testbed/.git/objects"));
        v.sort();
        v
    };
    let objects_before = objects();
    // The throwaway index goes to the run's /tmp (TMPDIR), as in a sandbox.
    s.mkdir("/tmp", 0o1777);
    s.agent(concat!(
        "#!/bin/sh\n",
        "printf 'def f():\\n    return 2\\n' > lib.py\n",
        "echo new > added.txt\n",
        "echo fixed > fix.txt\n",
    ));
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["infra_error"], Value::Null, "{v:#}");
    let patch = s.read("/output/task/patch.diff");
    let log = s.read("/output/task/patch.log");
    assert!(
        patch.contains("-    return 1\n+    return 2"),
        "{patch}\npatch.log: {log}"
    );
    assert!(
        patch.contains("+++ b/added.txt"),
        "untracked files are in the patch: {patch}"
    );
    assert_eq!(
        std::fs::read(s.p("/testbed/.git/index")).unwrap(),
        index_before,
        "the agent's index was changed"
    );
    assert_eq!(
        objects(),
        objects_before,
        "objects written into the agent's repository"
    );
    assert_eq!(mode_uid(&s.p("/output/task/patch.diff")), (0o644, 0));
}

#[test]
fn a_workdir_that_is_no_repository_leaves_no_patch() {
    let Some(s) = setup() else { return };
    s.agent("#!/bin/sh\necho fixed > fix.txt\n");
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["resolved"], true);
    assert!(!s.p("/output/task/patch.diff").exists());
}

#[test]
fn failing_install_skips_run_but_grades() {
    let Some(s) = setup() else { return };
    s.exec(
        "/opt/agent/install.sh",
        "#!/bin/sh\necho installing\nexit 3\n",
        0o755,
    );
    s.agent("#!/bin/sh\necho fixed > fix.txt\n");
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["agent"], json!({"exit_code": 3, "timed_out": false}));
    assert_eq!(v["infra_error"], Value::Null);
    assert_eq!(v["grade"]["exit_code"], 0);
    assert_eq!(v["resolved"], false);
    assert!(
        !s.p("/testbed/fix.txt").exists(),
        "run ran after a failed install"
    );
    assert!(s.read("/output/task/install.log").contains("installing"));
}

#[test]
fn install_runs_as_root_before_the_agent() {
    let Some(s) = setup() else { return };
    s.exec(
        "/opt/agent/install.sh",
        "#!/bin/sh\nid -u > \"$HOIST_WORKDIR/install-uid.txt\"\n",
        0o755,
    );
    s.agent("#!/bin/sh\n[ -f install-uid.txt ] && echo fixed > fix.txt\n");
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(s.read("/testbed/install-uid.txt").trim(), "0");
    assert_eq!(v["resolved"], true);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn healthy_gateway_serves_the_agent_and_is_stopped() {
    let Some(s) = setup() else { return };
    if !Path::new("/usr/bin/python3").exists() {
        skip("the gateway test serves /health with /usr/bin/python3, which is missing");
        return;
    }
    let port = free_port();
    s.context(json!({"gateway_port": port, "kill_grace_sec": 1}));
    s.exec(
        "/opt/gateway/run",
        "#!/bin/sh\nd=$(mktemp -d)\ncd \"$d\" && echo ok > health\nexec python3 -m http.server \"$HOIST_GATEWAY_PORT\" --bind 127.0.0.1\n",
        0o700,
    );
    s.agent("#!/bin/sh\necho \"$HOIST_MODEL_URL\" > url.txt\n");
    let (v, _) = run_ok(&s, &[]);
    assert_eq!(v["infra_error"], Value::Null, "{v:#}");
    assert_eq!(
        s.read("/testbed/url.txt").trim(),
        format!("http://127.0.0.1:{port}/v1")
    );
    assert!(s.read("/output/task/gateway.log").contains("GET /health"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "gateway still listening"
    );
}

#[test]
fn gateway_that_exits_is_a_gateway_infra_error() {
    let Some(s) = setup() else { return };
    s.context(json!({"gateway_port": free_port()}));
    s.exec(
        "/opt/gateway/run",
        "#!/bin/sh\necho no model\nexit 2\n",
        0o700,
    );
    s.agent("#!/bin/sh\necho fixed > fix.txt\n");
    let (v, _) = run_ok(&s, &[]);
    assert_infra(&v, "gateway", "exited with code 2");
    assert!(
        !s.p("/testbed/fix.txt").exists(),
        "the agent ran without its gateway"
    );
    assert_eq!(v["grade"]["exit_code"], Value::Null);
    assert!(s.read("/output/task/gateway.log").contains("no model"));
}

#[test]
fn unreadable_context_is_an_infra_error_with_a_result() {
    let Some(s) = setup() else { return };
    s.agent(NOOP);
    s.mkdir("/.hoist", 0o755);
    std::fs::write(s.p("/.hoist/context.json"), "{\"mode\": \"podman\"}").unwrap();
    let (v, _) = run_ok(&s, &["--task", "t1"]);
    assert_infra(&v, "sandbox", "run context");
    assert_eq!(v["task_id"], "t1");
}

#[test]
fn as_pid1_leftovers_of_install_and_agent_are_gone_before_grading() {
    let Some(s) = setup() else { return };
    std::os::unix::fs::symlink("/proc", s.p("/proc")).unwrap();
    leave_daemons_grade_sleepers(&s, "");
    let r = s.run_as_pid1(&[]);
    assert_eq!(r.code, Some(0), "task-exec failed: {}", r.stderr);
    let v = s.result();
    assert_eq!(v["infra_error"], Value::Null, "{v:#}");
    assert_eq!(v["agent"]["exit_code"], 0);
    assert_eq!(v["resolved"], true, "{}", s.read("/output/task/grade.log"));
}

/// The grader of the two-session test: it reports, test by test, what
/// the fresh tree holds.
const FRESH_GRADER: &str = r#"#!/bin/sh
t() { if eval "$2"; then s=PASSED; else s=FAILED; fi; printf '"%s": "%s", ' "$1" "$s"; }
{
  printf '{"resolved": true, "tests": {'
  t fixed '[ "$(cat fix.txt)" = fixed ]'
  t new_nested '[ "$(cat new/dir/file)" = made ]'
  t deleted_gone '[ ! -e old.txt ]'
  t kept_kept '[ "$(cat keep.txt)" = keep ]'
  t link_kept '[ "$(readlink link)" = /etc/passwd ]'
  t install_workdir_change_kept '[ -f install.txt ]'
  t no_trojan '[ ! -e ../etc/trojan ]'
  t no_agent_leftover '[ ! -e ../home/leftover ]'
  printf '"end": "PASSED"}}'
} > "$HOIST_GRADE_OUT"
"#;

/// docs/pipeline.md (grading): an agent session leaves `agent.json` and
/// `changes.tar` (no result.json); a grading session on a second, pristine
/// tree applies only the workdir's changes and writes the one result,
/// whose agent part is the first session's. What install.sh (root) or the
/// agent left outside the workdir is not in the graded tree.
#[test]
fn a_grading_session_sees_only_the_agents_workdir_changes() {
    let Some(a) = setup() else { return };
    a.exec("/tests/grade.sh", FRESH_GRADER, 0o700);
    std::fs::write(a.p("/testbed/old.txt"), "old\n").unwrap();
    std::fs::write(a.p("/testbed/keep.txt"), "keep\n").unwrap();
    std::fs::write(a.p("/testbed/fix.txt"), "broken\n").unwrap();
    std::os::unix::fs::chown(a.p("/testbed/fix.txt"), Some(1000), Some(1000)).unwrap();
    a.mkdir("/home", 0o777);
    // The pristine tree the grading session gets: a copy made before
    // anything ran.
    let fresh = tempfile::Builder::new()
        .prefix("hoist-pipeline-fresh-")
        .tempdir_in("/tmp")
        .unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", a.root.display()))
        .arg(fresh.path())
        .status()
        .unwrap();
    assert!(copied.success());
    a.exec(
        "/opt/agent/install.sh",
        "#!/bin/sh\necho trojan > \"$HOIST_WORKDIR/../etc/trojan\"\ntouch \"$HOIST_WORKDIR/install.txt\"\n",
        0o755,
    );
    a.agent("#!/bin/sh\necho fixed > fix.txt\nrm old.txt\nmkdir -p new/dir && echo made > new/dir/file\nln -s /etc/passwd link\necho left > ../home/leftover\nexit 3\n");
    a.context(json!({"session": "agent", "materialize_ms": 5}));
    let r = a.run(&["--task", "t1"]);
    assert_eq!(r.code, Some(0), "the agent session failed: {}", r.stderr);
    assert!(r.survivors.is_empty(), "left running: {:?}", r.survivors);
    assert!(
        !a.p("/output/task/result.json").exists(),
        "an agent session that ended well writes no result"
    );
    let phase: Value = serde_json::from_str(&a.read("/output/task/agent.json")).unwrap();
    assert_eq!(phase["schema"], "hoist.agent-phase/v1");
    assert_eq!(phase["task_id"], "t1");
    assert_eq!(phase["agent"], json!({"exit_code": 3, "timed_out": false}));
    assert_eq!(
        a.read("/etc/trojan").trim(),
        "trojan",
        "install.sh ran as root"
    );

    // The grading session, on the pristine copy.
    let b = fresh.path();
    std::fs::create_dir_all(b.join(".hoist")).unwrap();
    std::fs::copy(
        a.p("/output/task/changes.tar"),
        b.join(".hoist/changes.tar"),
    )
    .unwrap();
    std::fs::write(
        b.join(".hoist/context.json"),
        json!({"session": {"grade": phase}, "materialize_ms": 9}).to_string(),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(env!("CARGO_BIN_EXE_hoist"))
        .args(["task-exec", "--root"])
        .arg(b)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = read_json(&b.join("output/task/result.json"));
    assert_eq!(v["infra_error"], Value::Null, "{v:#}");
    assert_eq!(v["task_id"], "t1");
    assert_eq!(
        v["agent"], phase["agent"],
        "the agent part is the first session's"
    );
    assert_eq!(v["started_at"], phase["started_at"]);
    assert_eq!(v["durations_ms"]["agent"], phase["agent_ms"]);
    let tests = v["grade"]["tests"].as_object().unwrap();
    let failed: Vec<&String> = tests
        .iter()
        .filter(|(_, s)| *s != "PASSED")
        .map(|(k, _)| k)
        .collect();
    assert!(failed.is_empty(), "{failed:?} in {v:#}");
    assert_eq!(tests.len(), 9, "{v:#}");
    assert!(!b.join("output/task/agent.json").exists());
}
