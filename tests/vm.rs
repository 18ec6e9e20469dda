//! The cgroup v2 test VM (`scripts/vm`, docs/vm.md): Debian 12's Linux 6.1 with only
//! the unified hierarchy, Docker in it and the static hoist shared in, which is where
//! hoist's users run and this machine is not (issue 12). One boot checks that the VM is
//! what the cgroup v2 and Landlock ABI 2 tests need and that `scripts/vm run` carries a
//! command's output and exit status; two short ones check that it leaves nothing
//! running on a timeout or a SIGTERM.
//!
//! Needs root, `HOIST_TEST_VM=1` (scripts/test-env sets it once `scripts/vm build` has
//! built the image) and the static hoist (scripts/build-static). Without KVM the VM runs
//! under TCG emulation: slower (a boot takes about 10 s instead of 1), still correct.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::*;

/// `scripts/vm`, when the VM can be used here; prints why not otherwise.
fn vm_or_skip() -> Option<PathBuf> {
    env_or_skip("HOIST_TEST_VM")?;
    if !is_root() {
        skip("the test VM needs root (its 9p shares keep file owners, passthrough)");
        return None;
    }
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vm"))
}

/// The lines of `scripts/vm run`'s stderr that are its own, not the command's.
fn is_vm_line(line: &str) -> bool {
    line.starts_with("vm: ") || line.starts_with("WARNING: vm: ")
}

/// The command lines of the live processes that mention `needle` (a directory only
/// one test's VM is given, so they are that VM's qemu and nothing else's).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process that ended meanwhile has no cmdline left to read: not live.
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// The run directory of the qemu among `cmdlines` (its overlay disk is in it).
fn run_dir_of(cmdlines: &[String]) -> PathBuf {
    let qemu = cmdlines
        .iter()
        .find(|c| c.contains("qemu-system"))
        .unwrap_or_else(|| panic!("no qemu among {cmdlines:#?}"));
    let disk = qemu
        .split(['=', ',', ' '])
        .find(|w| w.ends_with("/disk.qcow2") && w.contains("/runs/run."))
        .unwrap_or_else(|| panic!("no overlay disk in {qemu}"));
    Path::new(disk).parent().unwrap().to_path_buf()
}

#[test]
fn debian12_cgroup2_docker_and_hoist_doctor() {
    let Some(vm) = vm_or_skip() else {
        return;
    };
    let Some(hoist) = static_hoist() else {
        skip("no static hoist: run scripts/build-static");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    // Everything in one boot; the results come back through the shared directory.
    let script = r#"
        set -u
        cd "$OUT"
        uname -r >uname
        stat -fc %T /sys/fs/cgroup >cgroupfs
        cat /proc/self/cgroup >self-cgroup
        hoist doctor --json >doctor.json 2>doctor.err
        echo $? >doctor.code
        docker info --format '{{.CgroupVersion}}' >docker-cgroup 2>docker.err
        echo to-stdout
        echo to-stderr >&2
        exit 7
    "#;
    let started = Instant::now();
    let o = run(Command::new(&vm)
        .args(["run", "--docker", "--timeout", "600", "--share", out_dir])
        .arg("--hoist")
        .arg(&hoist)
        .args(["--env", &format!("OUT={out_dir}"), "--", "sh", "-c", script]));
    let elapsed = started.elapsed();
    let (so, se) = (stdout(&o), stderr(&o));
    eprintln!("scripts/vm run took {elapsed:.1?}:\n{se}");
    // CMD's exit status, and only its output on our stdout and stderr: no kernel noise.
    assert_eq!(o.status.code(), Some(7), "stdout:\n{so}\nstderr:\n{se}");
    assert_eq!(so, "to-stdout\n", "stderr:\n{se}");
    let own: Vec<&str> = se.lines().filter(|l| !is_vm_line(l)).collect();
    assert_eq!(own, ["to-stderr"], "stderr:\n{se}");
    assert!(
        se.lines()
            .any(|l| l.starts_with("vm: ") && l.contains("command started")),
        "no boot time in:\n{se}"
    );

    let read = |name: &str| {
        std::fs::read_to_string(out.path().join(name))
            .unwrap_or_else(|e| panic!("{name} from the VM: {e}"))
            .trim_end()
            .to_string()
    };
    // Debian 12's kernel, the unified hierarchy only, CMD in a service's leaf cgroup.
    let kernel = read("uname");
    assert!(kernel.starts_with("6.1."), "uname -r in the VM: {kernel}");
    assert_eq!(read("cgroupfs"), "cgroup2fs");
    assert_eq!(read("self-cgroup"), "0::/system.slice/hoist-vm.service");
    assert_eq!(
        read("docker-cgroup"),
        "2",
        "docker info: {}",
        read("docker.err")
    );

    // The static hoist runs there and reports the host it runs on.
    let code = read("doctor.code");
    assert!(
        code == "0" || code == "1",
        "hoist doctor exited {code}: {}",
        read("doctor.err")
    );
    let report = read_json(&out.path().join("doctor.json"));
    assert_eq!(report["schema"], "hoist.doctor/v1", "{report:#}");
    assert_eq!(report["kernel"], kernel.as_str(), "{report:#}");
    assert_eq!(report["uid"], 0, "{report:#}");
    assert_eq!(report["in_container"], false, "{report:#}");
    let confinement = report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "confinement"))
        .unwrap_or_else(|| panic!("no confinement check in {report:#}"));
    // Linux 6.1 has Landlock ABI 2 (Debian enables the LSM).
    assert!(
        confinement["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("Landlock ABI 2")),
        "{confinement}"
    );
}

#[test]
fn timeout_kills_the_vm_and_removes_its_run() {
    let Some(vm) = vm_or_skip() else {
        return;
    };
    let marker = tempfile::tempdir().unwrap();
    let marker_dir = marker.path().to_str().unwrap();
    let started = Instant::now();
    let child = Command::new(&vm)
        .args(["run", "--quiet", "--memory", "1024", "--timeout", "20"])
        .args(["--share", marker_dir, "--", "sleep", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The run's directory, from its qemu's command line, while it runs.
    let run_dir = loop {
        let procs = processes_mentioning(marker_dir);
        if procs.iter().any(|c| c.contains("qemu-system")) {
            break run_dir_of(&procs);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no qemu started: {procs:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(124), "stderr:\n{}", stderr(&o));
    assert!(stderr(&o).contains("timeout"), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(60));
    let left = processes_mentioning(marker_dir);
    assert!(left.is_empty(), "still running: {left:#?}");
    assert!(!run_dir.exists(), "{} is left", run_dir.display());
}

#[test]
fn sigterm_stops_the_vm_and_removes_its_run() {
    let Some(vm) = vm_or_skip() else {
        return;
    };
    let marker = tempfile::tempdir().unwrap();
    let marker_dir = marker.path().to_str().unwrap();
    let mut child = Command::new(&vm)
        .args(["run", "--memory", "1024", "--timeout", "300"])
        .args(["--share", marker_dir, "--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command runs in the VM (the boot line), then keep reading: the
    // script reports the signal on stderr.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("vm: ") && line.contains("command started") {
            break;
        }
    }
    assert!(
        seen.contains("command started"),
        "the VM did not start:\n{seen}"
    );
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let before = processes_mentioning(marker_dir);
    let run_dir = run_dir_of(&before);
    assert!(run_dir.is_dir(), "{}", run_dir.display());

    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    let rest = rest.join().unwrap();
    assert_eq!(status.code(), Some(143), "{status}: {seen}{rest:#?}");
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:#?}");
    let left = processes_mentioning(marker_dir);
    assert!(left.is_empty(), "still running: {left:#?}");
    assert!(!run_dir.exists(), "{} is left", run_dir.display());
}
