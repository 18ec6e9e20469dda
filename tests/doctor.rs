//! `hoist doctor` on this machine and inside the runner image: the JSON
//! report parses, and it reports what this host can really do.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "hoist-runner:dev";

const CHECKS: &[&str] = &[
    "isolation",
    "confinement",
    "user_namespaces",
    "overlayfs",
    "capabilities",
    "seccomp",
    "cgroups",
    "subordinate_ids",
    "container",
    "static_binary",
    "store_disk",
    "docker",
];

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().unwrap()
}

fn doctor_json(args: &[&str]) -> (Option<i32>, Value) {
    let store = tempfile::tempdir().unwrap();
    let o = run(hoist(&store.path().join("store"))
        .args(["doctor", "--json"])
        .args(args));
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}):\n{}\n{}",
            stdout(&o),
            stderr(&o)
        )
    });
    (o.status.code(), report)
}

fn assert_well_formed(report: &Value) {
    assert_eq!(report["schema"], "hoist.doctor/v1");
    for name in CHECKS {
        let c = check(report, name);
        let s = c["status"].as_str().unwrap();
        assert!(["ok", "degraded", "missing"].contains(&s), "{c}");
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
        // Whatever is not ok says what it costs.
        assert_eq!(c["cost"].is_null(), s == "ok", "{c}");
    }
}

#[test]
fn reports_this_host() {
    let var = |n: &str| std::env::var(n).ok();
    let plain = var("HOIST_TEST_REGISTRY_PLAIN");
    let auth = var("HOIST_TEST_REGISTRY_AUTH").zip(var("HOIST_TEST_CA"));
    let mut args = vec!["--registry", "127.0.0.1:1"];
    if let Some(r) = &plain {
        args.extend(["--registry", r]);
    }
    if let Some((r, ca)) = &auth {
        args.extend(["--registry", r, "--ca-file", ca]);
    }
    let (code, r) = doctor_json(&args);
    assert_well_formed(&r);
    let refused = check(&r, "registry:127.0.0.1:1");
    assert_eq!(refused["status"], "missing", "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("refused"),
        "{refused}"
    );
    for (reg, answer) in [
        (plain.as_ref(), "200"),
        (auth.as_ref().map(|a| &a.0), "401"),
    ] {
        let Some(reg) = reg else {
            skip("the test registries are not up: registry checks not asserted");
            continue;
        };
        let c = check(&r, &format!("registry:{reg}"));
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["detail"].as_str().unwrap().contains(answer), "{c}");
    }
    if !is_root() {
        skip("not root: only the well-formedness of doctor's report is checked");
        assert_eq!(r["isolation"], "none");
        assert_eq!(code, Some(1));
        return;
    }
    // This machine: root, no seccomp filter, overlayfs on the store's disk.
    assert_eq!(r["isolation"], "namespaces", "{r:#}");
    assert_eq!(r["rootfs"], "overlay", "{r:#}");
    assert_eq!(status(&r, "isolation"), "ok", "{r:#}");
    assert_eq!(status(&r, "overlayfs"), "ok", "{r:#}");
    assert_eq!(status(&r, "user_namespaces"), "ok", "{r:#}");
    assert_eq!(status(&r, "seccomp"), "ok", "{r:#}");
    // Linux 6.18: Landlock ABI 7 and seccomp filters, nothing lacking.
    assert_eq!(status(&r, "confinement"), "ok", "{r:#}");
    assert!(
        check(&r, "confinement")["detail"]
            .as_str()
            .unwrap()
            .starts_with("Landlock ABI 7"),
        "{r:#}"
    );
    // The disk is the host's, not hoist's: doctor must say what its free
    // space means (unless it sits so near a threshold that the tests
    // running beside this one may carry it across).
    let tmp = rustix::fs::statvfs(std::env::temp_dir()).unwrap();
    let free = tmp.f_bavail * tmp.f_frsize;
    let near = |t: u64| free.abs_diff(t) < (512 << 20);
    if !near(hoist::doctor::DISK_LOW) && !near(hoist::doctor::DISK_CRITICAL) {
        assert_eq!(
            status(&r, "store_disk"),
            hoist::doctor::disk_status(free).as_str(),
            "{r:#}"
        );
    }
    if std::env::var("HOIST_TEST_DOCKER").as_deref() == Ok("1") {
        assert_eq!(status(&r, "docker"), "ok", "{r:#}");
    }
    if static_hoist().is_some() {
        assert_eq!(status(&r, "static_binary"), "ok", "{r:#}");
        assert_eq!(code, Some(0));
    }
    assert_eq!(r["uid"], 0);
}

#[test]
fn text_report_has_a_summary_and_a_line_per_check() {
    let store = tempfile::tempdir().unwrap();
    let o = run(hoist(store.path()).arg("doctor"));
    let text = stdout(&o);
    assert!(text.contains("crane mode here: isolation "), "{text}");
    for name in CHECKS {
        assert!(
            text.lines().any(|l| {
                let mut w = l.split_whitespace();
                matches!(w.next(), Some("ok" | "degraded" | "missing")) && w.next() == Some(name)
            }),
            "no line for {name}:\n{text}"
        );
    }
}

/// Build `hoist-runner:dev` from the static hoist already built.
fn runner_image() -> Option<()> {
    if !is_root() {
        skip("the runner image needs root and docker");
        return None;
    }
    if env_or_skip("HOIST_TEST_DOCKER")? != "1" {
        skip("HOIST_TEST_DOCKER is not 1: no Docker Engine");
        return None;
    }
    let Some(bin) = static_hoist() else {
        skip("no static hoist: run scripts/build-static");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-runner-image");
    ok(Command::new(script).arg("--binary").arg(bin));
    Some(())
}

fn doctor_in_runner(extra: &[&str]) -> Value {
    let o = ok(Command::new(DOCKER)
        .args(["run", "--rm"])
        .args(extra)
        .args([IMAGE, "doctor", "--json"]));
    serde_json::from_slice(&o.stdout).expect("doctor --json in the runner is JSON")
}

#[test]
fn runner_default_profile_reports_chroot() {
    if runner_image().is_none() {
        return;
    }
    let r = doctor_in_runner(&[]);
    assert_well_formed(&r);
    assert_eq!(r["isolation"], "chroot", "{r:#}");
    assert_eq!(r["rootfs"], "copy", "{r:#}");
    assert_eq!(r["in_container"], true);
    assert_eq!(status(&r, "isolation"), "degraded", "{r:#}");
    assert!(
        check(&r, "isolation")["detail"]
            .as_str()
            .unwrap()
            .contains("unshare"),
        "{r:#}"
    );
    assert_eq!(status(&r, "user_namespaces"), "missing", "{r:#}");
    assert_eq!(status(&r, "seccomp"), "degraded", "{r:#}");
    assert_eq!(status(&r, "overlayfs"), "missing", "{r:#}");
    assert_eq!(status(&r, "capabilities"), "degraded", "{r:#}");
    assert_eq!(status(&r, "static_binary"), "ok", "{r:#}");
    // No socket is mounted into the runner.
    assert_eq!(status(&r, "docker"), "missing", "{r:#}");
    assert!(check(&r, "store_disk")["detail"]
        .as_str()
        .unwrap()
        .starts_with("/store:"));
}

#[test]
fn runner_sys_admin_profile_reports_namespaces() {
    if runner_image().is_none() {
        return;
    }
    let r = doctor_in_runner(&[
        "--cap-add",
        "SYS_ADMIN",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
    ]);
    assert_well_formed(&r);
    assert_eq!(r["isolation"], "namespaces", "{r:#}");
    // /store is an anonymous volume, not the container's overlayfs root.
    assert_eq!(r["rootfs"], "overlay", "{r:#}");
    assert_eq!(status(&r, "user_namespaces"), "ok", "{r:#}");
    assert_eq!(status(&r, "capabilities"), "ok", "{r:#}");

    // A store on the container's own root cannot hold an upper dir.
    let r = doctor_in_runner(&[
        "--cap-add",
        "SYS_ADMIN",
        "--security-opt",
        "seccomp=unconfined",
        "-e",
        "HOIST_STORE=/tmp/store",
    ]);
    assert_eq!(r["rootfs"], "copy", "{r:#}");
    let c = check(&r, "overlayfs");
    assert_eq!(c["status"], "missing", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("overlayfs"), "{c}");
}
