//! The output never enters the sandbox (issue 9, docs/threat-model.md):
//! `agent-hostile-output`'s install.sh, root in the sandbox, plants a
//! setuid-root shell, a setgid file, symlinks to host files (at
//! `/output/run.json` and beside `result.json`), a fifo, a device node, a
//! hard link and a nested directory in `/output`. In crane mode with
//! namespaces and with chroot isolation, in the runner image under
//! Docker's default profile (chroot) and in container mode, the run still
//! completes, and its `--out` holds only plain files owned by the test's
//! uid; the host files the links point to are unchanged.
//!
//! Needs root and the samples (with the `agent-hostile-output` tag); the
//! runner and container mode also need Docker (`HOIST_TEST_DOCKER`), the
//! runner the static hoist.

mod support;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::*;

/// The host file the agent's symlinks point to (a fixed path: the image
/// is built once), and what it must still hold after every run.
const TARGET: &str = "/tmp/hoist-hostile-output-target";
const TARGET_CONTENT: &[u8] =
    b"hoist tests: agent-hostile-output links here; it must never change\n";

struct Samples {
    oci: String,
    task: String,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("hoist run tests need root (namespaces, overlay mounts)");
        return None;
    }
    let tags = env_or_skip("HOIST_SAMPLES_TAGS")?;
    if !tags.split_whitespace().any(|t| t == "agent-hostile-output") {
        skip("the samples have no agent-hostile-output; run scripts/build-samples");
        return None;
    }
    let task = env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?
        .split_whitespace()
        .next()?
        .to_string();
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        task,
    })
}

impl Samples {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }
}

/// Create the target file, or check an earlier test's: its content is
/// fixed, and it is linked into place whole, so tests running at once
/// agree on it.
fn host_target() {
    let mut tmp = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    tmp.write_all(TARGET_CONTENT).unwrap();
    match std::fs::hard_link(tmp.path(), TARGET) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("{TARGET}: {e}"),
    }
    assert_target_unchanged();
}

fn assert_target_unchanged() {
    let m = std::fs::symlink_metadata(TARGET).unwrap();
    assert!(m.file_type().is_file(), "{TARGET} is no longer a file");
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(TARGET).unwrap()),
        String::from_utf8_lossy(TARGET_CONTENT),
        "{TARGET} was written through a link (remove it once that is fixed)"
    );
}

/// One JSON object per line of `out/task/NAME`.
fn task_log(out: &Path, name: &str) -> Vec<Value> {
    json_lines(&out.join("task").join(name)).1
}

/// Which plants install.sh (root) and run (the agent) managed.
fn planted(lines: &[Value], uid: u64) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["uid"] == uid && l["made"] == true)
        .filter_map(|l| l["plant"].as_str().map(str::to_string))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setting {
    Namespaces,
    Chroot,
    Container,
    /// crane mode in the runner image under Docker's default profile:
    /// chroot isolation, where install.sh runs (unjailed: the supervisor
    /// may not mount there).
    Runner,
}

/// What hoist prints into install.log when it cannot start install.sh.
const NOT_EXECUTED: &str = "hoist: cannot execute /opt/agent/install.sh";

/// Run the hostile agent (`command(OUT)` runs it with `--out` OUT); check
/// the run completed, the host side is clean, and what the host copied
/// and left behind.
fn check_hostile_run(setting: Setting, command: impl FnOnce(&Path) -> Command) {
    host_target();
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let out = tempfile::tempdir().unwrap();
    let o: Output = run(&mut command(out.path()));
    let out = out.path();
    assert!(
        o.status.success(),
        "the run failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );

    assert_host_clean_output(out);
    assert_target_unchanged();
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);

    let r = read_json(&out.join("task/result.json"));
    assert_eq!(r["infra_error"], Value::Null, "{r}");
    assert_eq!(r["resolved"], false, "{r}");
    let install_log = std::fs::read_to_string(out.join("task/install.log")).unwrap();
    assert!(
        !install_log.contains(NOT_EXECUTED),
        "install.sh did not run: {install_log}"
    );
    assert_eq!(r["agent"]["exit_code"], 0, "{r}");

    let install = task_log(out, "install.log");
    let root_made = planted(&install, 0);
    let mut must = ALWAYS.to_vec();
    if matches!(setting, Setting::Container | Setting::Runner) {
        // /etc and /output are on one filesystem there (the container's
        // layer, the rootfs copy).
        must.push("hardlink");
    }
    // Root phases keep no CAP_MKNOD (src/confine/caps.rs): no device node
    // is made anywhere, in any mode.
    assert!(
        !root_made.iter().any(|m| m == "device"),
        "install.sh made a device node: {install:?}"
    );
    for p in must {
        assert!(
            root_made.iter().any(|m| m == p),
            "install.sh could not plant {p}: {install:?}"
        );
    }
    let agent = task_log(out, "agent.log");
    assert!(agent.len() >= 10, "the agent's attempts: {agent:?}");
    assert_eq!(planted(&agent, 1000), Vec::<String>::new(), "{agent:?}");

    // The regular files came out as plain 0644 copies.
    let task = out.join("task");
    let sh = std::fs::symlink_metadata(task.join("setuid-sh")).unwrap();
    assert_eq!(sh.mode() & 0o7777, 0o644);
    assert!(std::fs::read(task.join("setuid-sh"))
        .unwrap()
        .starts_with(b"\x7fELF"));
    assert_eq!(
        std::fs::read(task.join("setgid-file")).unwrap(),
        b"setgid\n"
    );
    let record = read_json(&out.join("run.json"));
    let skipped = &record["output"]["skipped"];
    let reason = |name: &str| {
        skipped
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["reason"].clone())
    };
    for (name, why) in [
        ("evil", "symlink"),
        ("run.json", "symlink"),
        ("host-target", "symlink"),
        ("fifo", "fifo"),
        ("nested", "directory"),
    ] {
        assert_eq!(reason(name), Some(Value::from(why)), "{name}: {skipped}");
        assert!(
            std::fs::symlink_metadata(task.join(name)).is_err(),
            "{name} reached --out"
        );
    }
    // Where the sandbox could make them, they were left behind too.
    if root_made.iter().any(|m| m == "device") {
        assert_eq!(reason("null"), Some(Value::from("device")), "{skipped}");
    }
    assert!(std::fs::symlink_metadata(task.join("null")).is_err());
    // docker cp's tar has no link count: a hard link to a file outside
    // /output/task arrives as a plain file there (the container's own
    // data, and harmless as one).
    if root_made.iter().any(|m| m == "hardlink") && setting != Setting::Container {
        assert_eq!(
            reason("hardlink"),
            Some(Value::from("hardlink")),
            "{skipped}"
        );
        assert!(std::fs::symlink_metadata(task.join("hardlink")).is_err());
    }
    eprintln!(
        "install.sh planted {root_made:?}; copied {}; skipped {skipped}",
        record["output"]["copied"]
    );
}

/// Every plant but the device node and the hard link, which depend on
/// the isolation (no CAP_MKNOD in a user namespace; no link across the
/// bind of /output).
const ALWAYS: &[&str] = &[
    "setuid-sh",
    "setgid-file",
    "evil",
    "output-run-json",
    "task-run-json",
    "result-json",
    "host-target",
    "fifo",
    "nested",
];

fn crane(s: &Samples, isolation: &str, out: &Path) -> Command {
    let mut c = hoist(&test_store("output-export-store"));
    c.args(["run", "--benchmark", &s.r("pyfix"), "--agent"])
        .arg(s.r("agent-hostile-output"))
        .args(["--task", &s.task, "--isolation", isolation, "--out"])
        .arg(out);
    c
}

#[test]
fn crane_namespaces_keeps_hostile_output_off_the_host() {
    let Some(s) = samples() else { return };
    check_hostile_run(Setting::Namespaces, |out| crane(&s, "namespaces", out));
}

#[test]
fn crane_chroot_keeps_hostile_output_off_the_host() {
    let Some(s) = samples() else { return };
    check_hostile_run(Setting::Chroot, |out| crane(&s, "chroot", out));
}

#[test]
fn container_mode_keeps_hostile_output_off_the_host() {
    let Some(s) = samples() else { return };
    if !have_docker() {
        return;
    }
    check_hostile_run(Setting::Container, |out| {
        let mut c = hoist(&test_store("output-export-container-store"));
        c.env("HOIST_DOCKER", docker_path())
            .args(["run", "--mode", "container", "--benchmark", &s.r("pyfix")])
            .arg("--agent")
            .arg(s.r("agent-hostile-output"))
            .args(["--task", &s.task, "--out"])
            .arg(out);
        c
    });
}

/// A runner image of this file's own (tests/runner_image.rs builds and
/// uses `hoist-runner:dev`; another tag keeps the two apart).
const RUNNER: &str = "hoist-runner:output-export";

#[test]
fn runner_chroot_keeps_hostile_output_off_the_host() {
    let Some(s) = samples() else { return };
    if !have_docker() {
        return;
    }
    let Some(bin) = static_hoist() else {
        skip("no static hoist: run scripts/build-static");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-runner-image");
    ok(Command::new(script)
        .arg("--binary")
        .arg(bin)
        .args(["--tag", RUNNER]));
    let store = test_store("output-export-runner-store");
    std::fs::create_dir_all(&store).unwrap();
    check_hostile_run(Setting::Runner, |out| {
        let mut c = docker();
        c.args(["run", "--rm", "-v"])
            .arg(format!("{}:/out", out.display()))
            .arg("-v")
            .arg(format!("{}:/store", store.display()))
            .arg("-v")
            .arg(format!("{}:/samples:ro", s.oci))
            .args([RUNNER, "run", "--mode", "crane"])
            .args(["--benchmark", "oci:/samples:pyfix"])
            .args(["--agent", "oci:/samples:agent-hostile-output"])
            .args(["--task", &s.task, "--out", "/out"]);
        c
    });
}
