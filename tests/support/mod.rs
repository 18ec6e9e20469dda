//! Shared helpers for integration tests that use the real parts started by
//! `scripts/test-env` (registries, fixture images, the debootstrap base).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The environment variable `name`, or `None` after printing why the test
/// is skipped. Under `HOIST_TEST_REQUIRE_ALL=1` (CI) a missing part fails.
pub fn env_or_skip(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip(&format!("{name} is not set; run the tests through scripts/test, which starts the test registries"));
            None
        }
    }
}

/// Print a skip reason, or panic when everything is required.
pub fn skip(reason: &str) {
    if std::env::var("HOIST_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("required test part missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Whether `tool` is on PATH; prints a skip reason when not.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(&format!("{tool} is not installed"));
    }
    found
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn hoist_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hoist"))
}

/// A `hoist` command with a clean credential environment and `store`.
pub fn hoist(store: &Path) -> Command {
    let mut c = Command::new(hoist_bin());
    c.arg("--store").arg(store);
    c.env_remove("HOIST_REGISTRY_USER")
        .env_remove("HOIST_REGISTRY_PASSWORD")
        .env_remove("HOIST_STORE")
        .env("DOCKER_CONFIG", store.join("no-docker-config"))
        .env("CONTAINERS_REGISTRIES_CONF", "/nonexistent")
        .env("RUST_LOG", "warn");
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run and require success, showing stderr on failure.
pub fn ok(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "command failed: {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Every blob under the store's `blobs/` hashes to its own name, and no
/// temp file is visible there.
pub fn assert_store_clean(store: &Path) {
    use sha2::Digest as _;
    for alg in ["sha256"] {
        let dir = store.join("blobs").join(alg);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            assert!(!name.starts_with('.'), "temp file visible in blobs: {name}");
            let bytes = std::fs::read(e.path()).unwrap();
            let got = hex::encode(sha2::Sha256::digest(&bytes));
            assert_eq!(got, name, "corrupt blob in store");
        }
    }
}
