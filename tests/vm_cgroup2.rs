//! hoist on a cgroup v2 host with Landlock ABI 2, for real: the test VM (`scripts/vm`,
//! docs/vm.md) is Debian 12 with Linux 6.1, only the unified hierarchy, and Docker
//! (issue 12). In one boot:
//!
//! - `hoist doctor --json` says cgroup v2 and where runs' cgroups go, and that the
//!   overlay is mounted with one `lowerdir=` string (Linux 6.1 has no `lowerdir+`);
//! - `hoist run` in namespaces, from a systemd-like service cgroup: `--memory 64M`
//!   OOM-kills a 256 MiB hog and the task is still graded; a fork bomb stops at
//!   `pids.max`; both limits say `cgroup v2`; no run cgroup is left;
//! - the runner image in the VM's Docker (cgroup v2, `--cgroupns private`): under the
//!   default profile a chroot run whose `not_isolated` names exactly what Landlock ABI
//!   2 lacks there (TCP rules, scopes), `--isolation strict` refusing for those, and
//!   with `--cap-add SYS_ADMIN` a namespaces run with nothing missing; privileged, as
//!   Docker-in-Docker runs, hoist moves itself out of its cgroup namespace's top into
//!   `init` and the hog is OOM-killed by the run cgroup's `memory.max`.
//!
//! Needs root, `HOIST_TEST_VM=1`, Docker (the runner image is built here and loaded
//! into the VM), the sample images (`HOIST_SAMPLES_OCI`) and the static hoist.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use support::*;

/// What runs inside the VM; the results come back through `$OUT`.
const SCRIPT: &str = r#"
set -u
cd "$OUT"
ST=/var/tmp/hoist-store
hoist doctor --json >doctor.json 2>doctor.err
echo $? >doctor.code
run() {
    name=$1
    shift
    hoist --store "$ST" run --benchmark "oci:$S:pyfix" --task "$TASK" --out "$OUT/$name" "$@" \
        >"$name.log" 2>&1
    echo $? >"$name.code"
}
scripted="--agent oci:$S:agent-scripted --gateway oci:$S:gateway-replay"
run memory $scripted --recordings "$OUT/rec-hog" --memory 64M
run bomb $scripted --recordings "$OUT/rec-bomb"
ls /sys/fs/cgroup/hoist >cgroups-left 2>&1
docker load -i "$OUT/runner.tar" >load.log 2>&1
echo $? >load.code
runner() {
    name=$1
    opts=$2
    shift 2
    mkdir -p "$OUT/$name"
    # $opts: docker's options, split into words on purpose.
    docker run --rm --network none -v "$ST:/store" -v "$S:$S:ro" -v "$OUT/$name:/out" $opts \
        hoist-runner:dev run --mode crane --benchmark "oci:$S:pyfix" \
        --agent "oci:$S:agent-oracle" --task "$TASK" --out /out "$@" >"$name.log" 2>&1
    echo $? >"$name.code"
}
runner runner-default ""
runner runner-strict "" --isolation strict
runner runner-sys-admin "--cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined"
# As Docker-in-Docker runs: privileged, so the cgroupfs is writable, at the top of a
# private cgroup namespace that holds hoist itself.
mkdir -p "$OUT/runner-dind"
docker run --rm --network none --privileged --cgroupns private -v "$ST:/store" -v "$S:$S:ro" \
    -v "$OUT/runner-dind:/out" -v "$OUT/rec-hog:/rec:ro" \
    hoist-runner:dev run --mode crane --benchmark "oci:$S:pyfix" --task "$TASK" --out /out \
    $scripted --recordings /rec --memory 64M >runner-dind.log 2>&1
echo $? >runner-dind.code
"#;

struct Results {
    dir: tempfile::TempDir,
}

impl Results {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn text(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel} from the VM: {e}"))
    }

    /// The exit status a step of the script recorded, with its log on failure.
    fn code(&self, step: &str) -> i32 {
        self.text(&format!("{step}.code"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{step}.code: {e}"))
    }

    fn ok(&self, step: &str) {
        let code = self.code(step);
        assert_eq!(
            code,
            0,
            "{step} exited {code}:\n{}",
            self.text(&format!("{step}.log"))
        );
    }

    fn json(&self, rel: &str) -> Value {
        read_json(&self.path(rel))
    }
}

fn check<'a>(doctor: &'a Value, name: &str) -> &'a Value {
    doctor["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {doctor:#}"))
}

fn graded(r: &Results, run: &str) {
    let result = r.json(&format!("{run}/task/result.json"));
    assert_eq!(result["infra_error"], Value::Null, "{run}: {result}");
    assert_eq!(result["grade"]["exit_code"], 0, "{run}: {result}");
    assert!(
        result["grade"]["tests"]
            .as_object()
            .is_some_and(|t| !t.is_empty()),
        "{run}: {result}"
    );
}

fn by_cgroup_v2(run: &Value, limit: &str, max: u64) {
    let l = &run["limits"][limit];
    assert_eq!(l["max"], max, "{limit}: {run:#}");
    assert_eq!(l["enforced_by"], "cgroup v2", "{limit}: {run:#}");
}

fn has_line(log: &str, line: &str) -> bool {
    log.lines().any(|l| l == line)
}

/// Boot the VM once and run [`SCRIPT`]; `None` (with the reason printed) where it
/// cannot run here.
fn run_in_vm() -> Option<Results> {
    env_or_skip("HOIST_TEST_VM")?;
    if !is_root() {
        skip("the test VM needs root");
        return None;
    }
    if env_or_skip("HOIST_TEST_DOCKER")? != "1" {
        skip("HOIST_TEST_DOCKER is not 1: no Docker Engine to build the runner image");
        return None;
    }
    let samples = env_or_skip("HOIST_SAMPLES_OCI")?;
    let task = env_or_skip("HOIST_SAMPLES_REPLAY_TASKS")?
        .split_whitespace()
        .next()?
        .to_string();
    let Some(hoist) = static_hoist() else {
        skip("no static hoist: run scripts/build-static");
        return None;
    };
    build_runner_image()?;
    let r = Results {
        dir: tempfile::tempdir().unwrap(),
    };
    write_recording(&r.path("rec-hog"), &task, HOG);
    write_recording(&r.path("rec-bomb"), &task, BOMB);
    ok(Command::new("docker")
        .args(["save", "-o"])
        .arg(r.path("runner.tar"))
        .arg(RUNNER_IMAGE));
    let out = r.dir.path().to_str().unwrap();
    let vm = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vm");
    let started = Instant::now();
    let o = run(Command::new(vm)
        .args(["run", "--docker", "--timeout", "1500", "--share", out])
        .args(["--share", &samples, "--hoist"])
        .arg(&hoist)
        .args([
            "--env",
            &format!("OUT={out}"),
            "--env",
            &format!("S={samples}"),
        ])
        .args(["--env", &format!("TASK={task}"), "--", "sh", "-c", SCRIPT]));
    eprintln!(
        "scripts/vm run took {:.1?}:\n{}",
        started.elapsed(),
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    Some(r)
}

#[test]
fn cgroup_v2_limits_and_landlock_abi_2_on_debian_12() {
    let Some(r) = run_in_vm() else { return };

    // doctor: cgroup v2 placement, the overlay on Linux 6.1, Landlock ABI 2.
    let code = r.code("doctor");
    assert!(
        code == 0 || code == 1,
        "doctor exited {code}: {}",
        r.text("doctor.err")
    );
    let doctor = r.json("doctor.json");
    let cgroups = check(&doctor, "cgroups");
    assert_eq!(cgroups["status"], "ok", "{cgroups}");
    let detail = cgroups["detail"].as_str().unwrap();
    assert!(detail.starts_with("cgroup v2; "), "{cgroups}");
    assert!(
        detail.contains(
            "go beneath /sys/fs/cgroup/hoist, outside hoist's own /system.slice/hoist-vm.service"
        ),
        "{cgroups}"
    );
    let overlay = check(&doctor, "overlayfs");
    assert_eq!(overlay["status"], "ok", "{overlay}");
    assert!(
        overlay["detail"]
            .as_str()
            .unwrap()
            .contains("one lowerdir= string, as Linux 6.1 needs"),
        "{overlay}"
    );

    // --memory on v2: the hog is OOM-killed, the task still graded.
    r.ok("memory");
    let run = r.json("memory/run.json");
    by_cgroup_v2(&run, "memory", 64 << 20);
    by_cgroup_v2(&run, "pids", 1024);
    assert_eq!(run["isolation"], "namespaces", "{run:#}");
    // Linux 6.1: the overlay with one lowerdir= string, not a copy.
    assert_eq!(run["rootfs"], "overlay", "{run:#}");
    assert_eq!(run["not_isolated"], serde_json::json!([]), "{run:#}");
    let log = r.text("memory/task/agent.log");
    assert!(has_line(&log, "hog: 8 MiB"), "the hog never ran:\n{log}");
    assert!(!has_line(&log, "hog: done"), "not limited:\n{log}");
    assert!(
        has_line(&log, "scripted: step 1: exit status 137")
            || has_line(&log, "scripted: step 1: exit status -9"),
        "the hog was not killed:\n{log}"
    );
    graded(&r, "memory");

    // pids.max on v2: the bomb gets EAGAIN short of 1024, the task is graded.
    r.ok("bomb");
    let run = r.json("bomb/run.json");
    by_cgroup_v2(&run, "pids", 1024);
    let log = r.text("bomb/task/agent.log");
    let line = log
        .lines()
        .find(|l| l.starts_with("bomb: ") && l.contains("children"))
        .unwrap_or_else(|| panic!("no bomb line:\n{log}"));
    assert!(
        line.ends_with("then Resource temporarily unavailable"),
        "{line}"
    );
    let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n < 1024 - 4, "{line}");
    assert!(has_line(&log, "bomb: done"), "{log}");
    graded(&r, "bomb");
    // Every run's cgroup went with its run.
    let left = r.text("cgroups-left");
    assert!(
        !left.lines().any(|l| l.starts_with("hoist-")),
        "left in /sys/fs/cgroup/hoist:\n{left}"
    );

    // The runner image in the VM's Docker, default profile: chroot, and exactly
    // what Landlock ABI 2 cannot give where the network and the pids are shared.
    r.ok("load");
    r.ok("runner-default");
    let run = r.json("runner-default/run.json");
    assert_eq!(run["isolation"], "chroot", "{run:#}");
    let gaps: Vec<&str> = run["not_isolated"]
        .as_array()
        .unwrap_or_else(|| panic!("{run:#}"))
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(gaps.len(), 2, "{gaps:#?}");
    assert!(
        gaps[0].starts_with("network: Landlock ABI 2 has no TCP rules"),
        "{gaps:#?}"
    );
    assert!(
        gaps[1].starts_with("signals and abstract unix sockets: Landlock ABI 2 cannot scope them"),
        "{gaps:#?}"
    );
    // Docker mounts the container's cgroupfs read-only: no run cgroup, and why.
    let pids = &run["limits"]["pids"];
    assert_ne!(pids["enforced_by"], "cgroup v2", "{run:#}");
    assert!(
        pids["not_applied"].as_str().is_some_and(|w| !w.is_empty()),
        "{run:#}"
    );
    let result = r.json("runner-default/task/result.json");
    assert_eq!(result["resolved"], true, "{result}");

    // --isolation strict refuses those gaps, naming them.
    let code = r.code("runner-strict");
    let log = r.text("runner-strict.log");
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("network: Landlock ABI 2 has no TCP rules"),
        "{log}"
    );
    assert!(log.contains("signals and abstract unix sockets"), "{log}");

    // With CAP_SYS_ADMIN: namespaces, nothing missing even at ABI 2.
    r.ok("runner-sys-admin");
    let run = r.json("runner-sys-admin/run.json");
    assert_eq!(run["isolation"], "namespaces", "{run:#}");
    assert_eq!(run["not_isolated"], serde_json::json!([]), "{run:#}");
    let result = r.json("runner-sys-admin/task/result.json");
    assert_eq!(result["resolved"], true, "{result}");

    // Privileged, at the top of a private cgroup namespace with hoist in it: the
    // run's cgroup is made after hoist moves into `init`, and it enforces.
    r.ok("runner-dind");
    let run = r.json("runner-dind/run.json");
    assert_eq!(run["isolation"], "namespaces", "{run:#}");
    by_cgroup_v2(&run, "memory", 64 << 20);
    by_cgroup_v2(&run, "pids", 1024);
    let log = r.text("runner-dind/task/agent.log");
    assert!(has_line(&log, "hog: 8 MiB"), "the hog never ran:\n{log}");
    assert!(!has_line(&log, "hog: done"), "not limited:\n{log}");
    graded(&r, "runner-dind");
}
