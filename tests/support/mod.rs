//! Shared helpers for integration tests that use the real parts started by
//! `scripts/test-env` (registries, fixture images, the debootstrap base).
#![allow(dead_code)]

pub mod layer;

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

/// Whether this runs as root; prints why `test` is skipped when not
/// (`why`: what it needs root for).
pub fn require_root(test: &str, why: &str) -> bool {
    let root = is_root();
    if !root {
        skip(&format!("{test} needs root ({why})"));
    }
    root
}

pub fn hoist_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hoist"))
}

/// The static hoist beside the test build, as `hoist run` finds it
/// (`HOIST_STATIC_BINARY`, else `scripts/build-static`'s output).
pub fn static_hoist() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOIST_STATIC_BINARY") {
        return Some(PathBuf::from(p));
    }
    let bin = hoist_bin();
    let dir = bin.parent()?;
    let p = dir
        .join("..")
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join(dir.file_name()?)
        .join("hoist");
    p.is_file().then_some(p)
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

/// `inner` started by `sh` after the shell lines `setup` (under `set -e`),
/// itself started by `launcher` (a program and its arguments, or nothing),
/// with `inner`'s environment.
pub fn after_shell(launcher: &[&str], setup: &str, inner: &Command) -> Command {
    let mut cmd = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg("sh");
            c
        }
        None => Command::new("sh"),
    };
    cmd.arg("-c")
        .arg(format!("set -e\n{setup}\nexec \"$@\""))
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

/// Debian's docker client: a `/usr/local/bin/docker` may shadow it on PATH.
pub const DOCKER: &str = "/usr/bin/docker";

/// The docker CLI the tests drive ([`DOCKER`], else `docker` on PATH), as
/// a program name for `HOIST_DOCKER`.
pub fn docker_path() -> &'static str {
    if Path::new(DOCKER).exists() {
        DOCKER
    } else {
        "docker"
    }
}

/// A command of the docker CLI at [`docker_path`].
pub fn docker() -> Command {
    Command::new(docker_path())
}

/// Whether a Docker Engine is there to test with: `HOIST_TEST_DOCKER=1`
/// (set by scripts/test-env) and `docker info` answers. Prints why not.
pub fn have_docker() -> bool {
    match env_or_skip("HOIST_TEST_DOCKER").as_deref() {
        None => return false,
        Some("1") => {}
        Some(_) => {
            skip("HOIST_TEST_DOCKER is not 1: no Docker Engine");
            return false;
        }
    }
    if !run(docker().arg("info")).status.success() {
        skip("HOIST_TEST_DOCKER is set but `docker info` fails; run scripts/dockerd start");
        return false;
    }
    true
}

/// Where the tests keep what outlives one test (stores whose layer cache
/// later tests reuse): `HOIST_TEST_DIR`, else the temp directory.
pub fn test_dir() -> PathBuf {
    std::env::var("HOIST_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir())
}

/// The store `name` under [`test_dir`], shared by the tests that name it.
pub fn test_store(name: &str) -> PathBuf {
    test_dir().join(name)
}

/// The JSON file at `path`; panics naming it when it is missing or not JSON.
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the JSON Lines file at `path` (empty when it is missing)
/// and the lines of it that are JSON.
pub fn json_lines(path: &Path) -> (String, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (text, lines)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Wait for a child started with piped output and require success,
/// showing its output on failure; `what` names it there.
pub fn ok_child(child: std::process::Child, what: &str) -> Output {
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    o
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

/// The digest `scripts/build-samples` recorded for the sample image `tag`
/// (`HOIST_SAMPLE_<TAG>_DIGEST`).
pub fn sample_digest(tag: &str) -> String {
    let var = format!(
        "HOIST_SAMPLE_{}_DIGEST",
        tag.to_uppercase().replace('-', "_")
    );
    std::env::var(&var).unwrap_or_else(|_| panic!("{var} is not set"))
}

/// Make this test's process the reaper of orphans from everything it
/// starts, so that whatever a run leaves behind stays its descendant and
/// [`processes_of`] can tell it from the agents of tests running beside it
/// (nextest runs each test in a process of its own). Call it before the
/// run starts.
pub fn adopt_orphans() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("PR_SET_CHILD_SUBREAPER");
}

/// Command lines of the live descendants of this test's process whose
/// real uid is `uid` and whose command line starts with `prefix`: what a
/// run started by this test left running. Needs [`adopt_orphans`] first,
/// or an orphan would go to init and be missed.
pub fn processes_of(uid: u32, prefix: &str) -> Vec<String> {
    use hoist::confine::procfs::{descendants, Procfs};
    let me = rustix::process::getpid();
    // PR_GET_CHILD_SUBREAPER answers a flag (rustix makes it a "pid" 1).
    assert!(
        rustix::process::child_subreaper().ok().flatten().is_some(),
        "call adopt_orphans() before starting the run"
    );
    let procfs = Procfs::open(Path::new("/proc")).unwrap();
    let table = procfs.table().unwrap();
    let mine = descendants(&table, me.as_raw_nonzero().get());
    let mut v = Vec::new();
    for p in table.iter().filter(|p| p.live && mine.contains(&p.pid)) {
        if p.uids[0] != uid {
            continue;
        }
        let cmd = std::fs::read_to_string(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
        let cmd = cmd.replace('\0', " ");
        if cmd.starts_with(prefix) {
            v.push(cmd);
        }
    }
    v
}

/// The command lines of this test's live descendants, whatever their
/// uid: what a run started here left running (with [`adopt_orphans`],
/// orphans included).
/// This process's mount table as text. Mount points are whatever the host
/// holds, not always UTF-8 (a test elsewhere may leave one), so the bytes
/// are read lossily rather than failing the reader.
pub fn mountinfo() -> String {
    let bytes = std::fs::read("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn live_descendants() -> Vec<String> {
    use hoist::confine::procfs::{descendants, Procfs};
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let procfs = Procfs::open(Path::new("/proc")).unwrap();
    let table = procfs.table().unwrap();
    let mine = descendants(&table, me);
    table
        .iter()
        .filter(|p| p.live && mine.contains(&p.pid))
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{}/cmdline", p.pid))
                .unwrap_or_default()
                .replace('\0', " ")
        })
        .collect()
}

/// What the hostile probe agent reported in `out/task/`: at least 30
/// attempts, every one denied, nothing escaped, and its install.sh's four
/// attempts on the hidden files denied by the install jail. Returns the
/// attempts, for checks of particular ones.
pub fn assert_probe_denied(out: &Path) -> Vec<serde_json::Value> {
    assert_probe_denied_but(out, &[])
}

/// [`assert_probe_denied`], but the attempts named in `reported` may get
/// through (what an isolation states it shares, such as the network
/// interfaces' names in chroot isolation); they must still be reported.
pub fn assert_probe_denied_but(out: &Path, reported: &[&str]) -> Vec<serde_json::Value> {
    let task_log = |file: &str| json_lines(&out.join("task").join(file));
    let (log, lines) = task_log("agent.log");
    let attempts: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("attempt").is_some())
        .cloned()
        .collect();
    assert!(
        attempts.len() >= 30,
        "the probe made {} attempts:\n{log}",
        attempts.len()
    );
    for a in &attempts {
        if !reported.contains(&a["attempt"].as_str().unwrap_or_default()) {
            assert_ne!(a["denied"], false, "not denied: {a}");
        }
    }
    let summary = lines
        .iter()
        .find(|l| l["probe"] == "done")
        .expect("probe summary line");
    let escaped: Vec<&str> = summary["escaped"]
        .as_array()
        .expect("escaped list")
        .iter()
        .filter_map(|e| e.as_str())
        .filter(|e| !reported.contains(e))
        .collect();
    assert!(escaped.is_empty(), "{summary}");
    let (install, jailed) = task_log("install.log");
    assert_eq!(jailed.len(), 4, "install.log:\n{install}");
    for a in &jailed {
        assert_eq!(a["denied"], true, "install.sh got through: {a}\n{install}");
    }
    attempts
}

/// What a run left in its `--out` cannot hurt the host: only regular files
/// and directories, none setuid, setgid or sticky, no symlink, fifo,
/// socket or device, no file with a second link, everything owned by the
/// uid running the test, and `run.json` a regular file.
pub fn assert_host_clean_output(out: &Path) {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let mut stack = vec![out.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let t = m.file_type();
        assert!(
            t.is_file() || t.is_dir(),
            "{} is neither a regular file nor a directory ({t:?})",
            p.display()
        );
        assert_eq!(
            m.mode() & 0o7000,
            0,
            "{} has a setuid, setgid or sticky bit ({:o})",
            p.display(),
            m.mode()
        );
        assert_eq!(m.uid(), me, "{} is owned by uid {}", p.display(), m.uid());
        if t.is_file() {
            assert_eq!(m.nlink(), 1, "{} has {} links", p.display(), m.nlink());
        } else {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    let run_json = std::fs::symlink_metadata(out.join("run.json")).expect("run.json written");
    assert!(
        run_json.file_type().is_file(),
        "run.json is not a regular file"
    );
}

/// `hoist store verify` on `store` exits 0: every blob hashes to its name
/// and every cached layer and subtree has the tree digest recorded when it
/// was unpacked. For the host-side checks after a (hostile) run.
pub fn assert_store_verifies(store: &Path) {
    let o = run(hoist(store).args(["store", "verify"]));
    assert!(
        o.status.success(),
        "hoist store verify found the store {} changed:\nstdout:\n{}\nstderr:\n{}",
        store.display(),
        stdout(&o),
        stderr(&o)
    );
}

/// The runner image the tests build (runner-image/).
pub const RUNNER_IMAGE: &str = "hoist-runner:dev";

/// Build [`RUNNER_IMAGE`] from the static hoist already built (never
/// cargo from inside a test); concurrent builds wait for each other.
pub fn build_runner_image() -> Option<()> {
    let Some(bin) = static_hoist() else {
        skip("no static hoist: run scripts/build-static");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-runner-image");
    ok(Command::new(script).arg("--binary").arg(bin));
    Some(())
}

/// An evaluation's summary.json without what differs between two
/// evaluations of the same tasks (the wall time, what was kept).
pub fn comparable_summary(mut s: serde_json::Value) -> serde_json::Value {
    s.as_object_mut().unwrap().remove("wall_ms");
    s.as_object_mut().unwrap().remove("resumed");
    // What came over the network depends on what the store had.
    s.as_object_mut().unwrap().remove("downloaded");
    s
}

/// Bytes on disk under `path`, as `du -s -B1` counts them.
pub fn du(path: &Path) -> u64 {
    let o = ok(Command::new("du").arg("-s").arg("-B1").arg(path));
    stdout(&o)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// ---- agents for the scripted sample agent (cgroup limits, on this host and in the VM) ----

/// Allocates (and touches) 256 MiB, 8 MiB at a time.
pub const HOG: &str = "```
python3 - <<'EOF'
chunks = []
for i in range(256):
    chunks.append(bytearray(1 << 20))
    if i % 8 == 7:
        print('hog: %d MiB' % (i + 1), flush=True)
print('hog: done', flush=True)
EOF
```";

/// Forks children that sleep until it has no more (or 4096), holds them
/// a second, then kills them.
pub const BOMB: &str = "```
python3 - <<'EOF'
import os, time
kids, err = [], None
while len(kids) < 4096:
    try:
        pid = os.fork()
    except OSError as e:
        err = e.strerror
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    kids.append(pid)
print('bomb: %d children, then %s' % (len(kids), err), flush=True)
time.sleep(1)
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
print('bomb: done', flush=True)
EOF
```";

/// A recordings directory whose one recording makes the scripted agent
/// run `command` (a ```-fenced script), then stop.
pub fn recordings(task: &str, command: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_recording(dir.path(), task, command);
    dir
}

/// Write into `dir` the recording of `task` that makes the scripted agent
/// run `command`, then stop.
pub fn write_recording(dir: &Path, task: &str, command: &str) {
    let rec =
        serde_json::json!({"task_id": task, "model": "replay", "responses": [command, "DONE"]});
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{task}.json")), rec.to_string()).unwrap();
}

/// Refuse, in CI, the insta settings that would accept a drift instead of
/// failing on it, and a snapshot that was never committed: each of
/// `names` must have `tests/snapshots/{test}__{name}.snap` (`test` the
/// test binary's name, as insta names its files).
#[allow(dead_code)]
pub fn snapshots_must_be_compared<S: AsRef<str>>(test: &str, names: &[S]) {
    if std::env::var("HOIST_TEST_REQUIRE_ALL").as_deref() != Ok("1") {
        return;
    }
    let update = std::env::var("INSTA_UPDATE").unwrap_or_default();
    assert!(
        matches!(update.as_str(), "" | "auto" | "no" | "new"),
        "INSTA_UPDATE={update} would accept a drifted snapshot; CI must compare"
    );
    assert!(
        std::env::var("INSTA_FORCE_PASS").is_err(),
        "INSTA_FORCE_PASS would pass a drifted snapshot"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    for name in names {
        let snap = dir.join(format!("{test}__{}.snap", name.as_ref()));
        assert!(snap.is_file(), "{} is not committed", snap.display());
    }
}
