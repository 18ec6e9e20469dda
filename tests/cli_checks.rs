//! The command line against the real test registry (issue 13 §3–§6):
//! cheap checks before costly work (exit 2, the flag named), `--pull`
//! and runs with the registry down, `--locked` offline, `--platform`
//! mismatches, one error per failure, `docker://` references, a closed
//! stdout, and `--json` on `lock`.
//!
//! "The registry down" is a second address for the shared test registry:
//! a TCP forwarder on a loopback port of this test's own, stopped when the
//! test says (the shared registry itself is never stopped).

mod support;

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use support::*;

struct Env {
    /// `HOST:PORT/samples`.
    samples: String,
    /// `HOST:PORT` of the plain registry.
    plain: String,
    pyfix_tasks: Vec<String>,
}

fn env() -> Option<Env> {
    let words = |v: String| v.split_whitespace().map(str::to_string).collect();
    Some(Env {
        samples: env_or_skip("HOIST_SAMPLES_REGISTRY")?,
        plain: env_or_skip("HOIST_TEST_REGISTRY_PLAIN")?,
        pyfix_tasks: words(env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?),
    })
}

impl Env {
    fn r(&self, name: &str) -> String {
        format!("{}/{name}", self.samples)
    }
}

/// A command whose connection failures give up at once.
fn hoist_fast(store: &Path) -> Command {
    let mut c = hoist(store);
    c.env("HOIST_RETRY_ATTEMPTS", "1");
    c
}

/// A `hoist run` that stops at a check: `HOIST_STATIC_BINARY` names the
/// static hoist, or, where none is built, this test's own hoist (an
/// existing file, which the run checks; it never gets to use it).
fn hoist_checked_run(store: &Path) -> Command {
    let mut c = hoist(store);
    c.env(
        "HOIST_STATIC_BINARY",
        static_hoist().unwrap_or_else(hoist_bin),
    );
    c.arg("run");
    c
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Exit 2 and a message that holds every one of `words`.
fn assert_usage(o: &Output, words: &[&str]) {
    let err = stderr(o);
    assert_eq!(code(o), Some(2), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// Exit 1 and a message that holds every one of `words`.
fn assert_failure(o: &Output, words: &[&str]) {
    let err = stderr(o);
    assert_eq!(code(o), Some(1), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

/// No `caused by:` line repeats the line above it.
fn assert_no_repeated_cause(err: &str) {
    let lines: Vec<&str> = err.lines().collect();
    for pair in lines.windows(2) {
        if let Some(cause) = pair[1].trim().strip_prefix("caused by: ") {
            assert!(!pair[0].contains(cause), "repeated cause:\n{err}");
        }
    }
}

// ------------------------------------------------------ a registry to stop

/// Forwards a loopback port to `target` until stopped; then the port is
/// closed and a client gets "connection refused".
struct Forwarder {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(target: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (target, flag) = (target.to_string(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                pipe(&client, &upstream);
                pipe(&upstream, &client);
            }
        });
        Forwarder {
            port,
            stop,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`, the registry's second address.
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Close the port: the accept loop is woken, sees the flag and drops
    /// the listener.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Only to wake the accept loop; it refuses nothing.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        assert!(
            TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "port {} still open",
            self.port
        );
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop();
        }
    }
}

/// Copy `from` to `to` on a thread until either end closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || {
        // The copy ends when either side closes; nothing to report.
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

// ---------------------------------------------------------------- §4 pull

#[test]
fn a_stored_tag_materializes_with_its_registry_down_and_says_so() {
    let Some(e) = env() else { return };
    if !is_root() {
        return skip("materialize of the sample benchmark needs root here");
    }
    let mut registry = Forwarder::start(&e.plain);
    let bench = format!("{}/samples/pyfix", registry.host());
    let agent = format!("{}/samples/agent-noop", registry.host());
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let materialize = |out: &str, extra: &[&str]| {
        run(hoist_fast(store.path())
            .args(["materialize", "--benchmark", &bench, "--agent", &agent])
            .args(extra)
            .arg("--out")
            .arg(work.path().join(out)))
    };
    let o = materialize("up", &[]);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("stored copy"), "{}", stderr(&o));

    registry.stop();
    let o = materialize("down", &[]);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    for r in [&bench, &agent] {
        assert!(
            err.contains(&format!("{r}:latest: using the stored copy")),
            "{err}"
        );
    }
    assert!(work.path().join("down/tasks").is_dir());

    // --pull never: the store alone, as well.
    let o = materialize("never", &["--pull", "never"]);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));

    // --pull always asks the registry, which is gone: one line says so.
    let o = materialize("always", &["--pull", "always"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "cannot reach registry {} (connection refused)",
            registry.host()
        )),
        "{err}"
    );
    assert!(err.lines().count() <= 2, "more than one cause:\n{err}");
    assert!(!err.contains("tcp connect"), "{err}");
    assert_no_repeated_cause(&err);
}

#[test]
fn pull_never_of_an_image_not_stored_is_a_usage_error() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let bench = e.r("pyfix");
    let o = run(hoist(store.path())
        .args(["materialize", "--pull", "never", "--benchmark", &bench])
        .arg("--out")
        .arg(out.path().join("rootfs")));
    assert_usage(
        &o,
        &[&bench, "is not in the store", "--pull never", "hoist pull"],
    );
    let index = std::fs::read_to_string(store.path().join("index.json")).unwrap();
    assert!(!index.contains("pyfix"), "nothing was pulled: {index}");
}

#[test]
fn locked_runs_from_the_pins_with_the_registry_down() {
    let Some(e) = env() else { return };
    if !is_root() {
        return skip("hoist run needs root here");
    }
    if static_hoist().is_none() {
        return skip("no static hoist: build it with scripts/build-static");
    }
    let mut registry = Forwarder::start(&e.plain);
    let bench = format!("{}/samples/pyfix", registry.host());
    let agent = format!("{}/samples/agent-oracle", registry.host());
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let lock = work.path().join("hoist.lock");
    let o = ok(hoist_fast(store.path())
        .args(["--json", "lock", "--benchmark", &bench, "--agent", &agent])
        .arg("--lock-file")
        .arg(&lock));
    // `lock` honours --json: the pins, and where they were written.
    let pins: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pins["benchmark"]["ref"], bench.as_str());
    assert_eq!(pins["benchmark"]["digest"], sample_digest("pyfix"));
    assert_eq!(pins["agent"]["digest"], sample_digest("agent-oracle"));
    assert_eq!(pins["path"], lock.to_str().unwrap());

    registry.stop();
    let out = work.path().join("out");
    let o = run(hoist_fast(store.path())
        .args(["run", "--benchmark", &bench, "--agent", &agent])
        .args(["--task", &e.pyfix_tasks[0], "--locked", "--lock-file"])
        .arg(&lock)
        .arg("--out")
        .arg(&out));
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    let note = format!("using {}'s pin", lock.display());
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));
    let r = read_json(&out.join("task/result.json"));
    assert_eq!(r["resolved"], true, "{r}");
    assert_eq!(r["images"]["benchmark"]["ref"], bench.as_str());
    assert_eq!(r["images"]["benchmark"]["digest"], sample_digest("pyfix"));
    assert_eq!(
        r["images"]["agent"]["digest"],
        sample_digest("agent-oracle")
    );

    // Asked to check the tags at the registry, which is down: exit 1.
    let o = run(hoist_fast(store.path())
        .args(["run", "--benchmark", &bench, "--agent", &agent])
        .args(["--task", &e.pyfix_tasks[0], "--locked", "--pull", "always"])
        .arg("--lock-file")
        .arg(&lock)
        .arg("--out")
        .arg(work.path().join("always")));
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach registry"),
        "{}",
        stderr(&o)
    );
}

// ----------------------------------------------------------- §5 platform

#[test]
fn another_platform_is_an_error_as_docker_gives_it() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let small = format!("{}/small", e.plain);
    let mismatch = "image platform linux/amd64 does not match the requested linux/arm64";
    // Exit 1, as a platform an index lacks: the image is not what was
    // asked for.
    let o = run(hoist(store.path()).args(["pull", "--platform", "linux/arm64", &small]));
    assert_failure(&o, &[&small, mismatch]);
    assert_no_repeated_cause(&stderr(&o));

    let lock = store.path().join("arm.lock");
    let o = run(hoist(store.path())
        .args([
            "lock",
            "--platform",
            "linux/arm64",
            "--benchmark",
            &e.r("pyfix"),
        ])
        .args(["--agent", &e.r("agent-noop"), "--lock-file"])
        .arg(&lock));
    assert_failure(&o, &[mismatch]);
    assert!(!lock.exists(), "no lock file written");

    // A run is never emulated: refused before anything is pulled.
    let out = tempfile::tempdir().unwrap();
    let o = run(hoist_checked_run(store.path())
        .args(["--platform", "linux/arm64", "--benchmark", &e.r("pyfix")])
        .args(["--agent", &e.r("agent-noop"), "--out"])
        .arg(out.path()));
    assert_usage(&o, &["--platform", "linux/arm64", "never emulates"]);
}

// ------------------------------------------------------ §3 cheap checks

/// `hoist run` of the pyfix sample with `args`, into a fresh `--out`
/// unless `args` names one.
fn run_pyfix(e: &Env, store: &Path, args: &[&str]) -> Output {
    let out = tempfile::tempdir().unwrap();
    let mut c = hoist_checked_run(store);
    c.args(["--benchmark", &e.r("pyfix"), "--agent", &e.r("agent-noop")])
        .args(args);
    if !args.contains(&"--out") {
        c.arg("--out").arg(out.path().join("out"));
    }
    run(&mut c)
}

#[test]
fn task_recordings_timeouts_and_out_are_checked_before_the_run() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let o = run_pyfix(&e, store.path(), &["--task", "no-such-task"]);
    assert_usage(&o, &["--task", "no-such-task", &e.pyfix_tasks[0]]);

    // Several tasks and none chosen: the choices.
    let o = run_pyfix(&e, store.path(), &[]);
    let n = format!("holds {} tasks", e.pyfix_tasks.len());
    let mut words = vec!["--task", n.as_str()];
    words.extend(e.pyfix_tasks.iter().map(String::as_str));
    assert_usage(&o, &words);

    let o = run_pyfix(
        &e,
        store.path(),
        &["--recordings", "/nonexistent/recordings"],
    );
    assert_usage(&o, &["--recordings", "/nonexistent/recordings"]);

    for bad in ["0", "0s", "-5", "10x", "1.5h"] {
        for flag in ["--agent-timeout", "--grade-timeout"] {
            let o = run_pyfix(&e, store.path(), &[&format!("{flag}={bad}")]);
            assert_usage(&o, &[flag]);
        }
    }
    // 90s, 10m and 1h are taken (the run then stops at the task check).
    for good in ["90", "90s", "10m", "1h"] {
        let o = run_pyfix(
            &e,
            store.path(),
            &[
                "--agent-timeout",
                good,
                "--grade-timeout",
                good,
                "--task",
                "x",
            ],
        );
        assert_usage(&o, &["--task", "\"x\""]);
    }

    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let o = run_pyfix(&e, store.path(), &["--out", path]);
    assert_usage(&o, &["--out", path, "is a file"]);

    // --lock-file without --locked: said, and the run goes on (here to
    // the task check).
    let o = run_pyfix(&e, store.path(), &["--lock-file", "x.lock", "--task", "x"]);
    assert_usage(&o, &["warning: --lock-file is read only with --locked"]);
}

#[test]
fn static_binary_and_store_are_checked_before_anything_is_pulled() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let o = run(hoist(store.path())
        .env("HOIST_STATIC_BINARY", "/nonexistent/hoist-static")
        .args([
            "run",
            "--benchmark",
            &e.r("pyfix"),
            "--agent",
            &e.r("agent-noop"),
        ])
        .args(["--task", &e.pyfix_tasks[0], "--out"])
        .arg(store.path().join("out")));
    assert_usage(&o, &["HOIST_STATIC_BINARY", "/nonexistent/hoist-static"]);
    assert!(!store.path().join("blobs").exists(), "nothing pulled");

    let file = tempfile::NamedTempFile::new().unwrap();
    let o = run(hoist(file.path()).arg("images"));
    assert_usage(&o, &["--store", "is a file"]);

    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("notes.txt"), "mine").unwrap();
    let o = run(hoist(full.path()).arg("images"));
    assert_usage(&o, &["--store", "neither empty nor a hoist store"]);
    let left: Vec<_> = std::fs::read_dir(full.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing written into it");
}

#[test]
fn an_image_without_tasks_is_not_a_benchmark_before_anything_is_unpacked() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let small = format!("{}/small", e.plain);
    let o = run(hoist_checked_run(store.path())
        .args(["--benchmark", &small, "--agent", &e.r("agent-noop")])
        .arg("--out")
        .arg(store.path().join("out")));
    assert_usage(&o, &["--benchmark", &small, "not a benchmark image"]);
    assert_eq!(unpacked_layers(store.path()), 0, "a layer was unpacked");

    let o = run(hoist(store.path()).args(["tasks", &small]));
    assert_usage(&o, &["not a benchmark image"]);
    assert!(!stderr(&o).contains("--benchmark"), "{}", stderr(&o));
}

/// Layers in the store's unpacked-layer cache (`layers/ALG/HEX`).
fn unpacked_layers(store: &Path) -> usize {
    std::fs::read_dir(store.join("layers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|alg| std::fs::read_dir(alg.path()).map_or(0, |d| d.count()))
        .sum()
}

// -------------------------------------------------- §6 one error, skopeo

#[test]
fn a_closed_port_is_one_line_naming_the_registry() {
    let store = tempfile::tempdir().unwrap();
    let o = run(hoist_fast(store.path()).args(["pull", "127.0.0.1:1/nothing:here"]));
    let err = stderr(&o);
    assert_eq!(code(&o), Some(1), "{err}");
    assert!(
        err.contains("cannot reach registry 127.0.0.1:1 (connection refused)"),
        "{err}"
    );
    assert!(err.lines().count() <= 2, "{err}");
    assert_no_repeated_cause(&err);
}

#[test]
fn docker_transport_references_are_accepted_and_others_answered() {
    let Some(e) = env() else { return };
    let store = tempfile::tempdir().unwrap();
    let o = ok(hoist(store.path())
        .arg("--json")
        .args(["pull", &format!("docker://{}/small", e.plain)]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["reference"], format!("{}/small:latest", e.plain));

    let o = run(hoist(store.path()).args(["pull", "docker-daemon:alpine:latest"]));
    assert_usage(
        &o,
        &[
            "docker-daemon",
            "skopeo copy docker-daemon:alpine:latest oci:",
        ],
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_listing_quietly() {
    let Some(base) = env_or_skip("HOIST_TEST_BASE_ROOTFS") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let mut child = hoist(store.path())
        .args(["tree-digest", "--list", &base])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    lines.read_line(&mut first).unwrap();
    assert!(!first.is_empty());
    // `| head -1`: the reader closes its end after one line.
    drop(lines);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(code(&o), Some(0), "{err}");
}

#[test]
fn verifying_or_grading_what_is_not_there_is_a_usage_error_that_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A mistyped --store: not made, and not called clean.
    let missing = dir.path().join("no-store");
    let o = run(hoist(&missing).args(["store", "verify"]));
    assert_usage(&o, &["--store", "holds no store", "nothing to verify"]);
    assert!(!missing.exists(), "store verify made {}", missing.display());
    // A mistyped saved run: named, not made.
    let saved = dir.path().join("no-run");
    let o = run(hoist(&dir.path().join("store")).arg("grade").arg(&saved));
    assert_usage(&o, &["SAVED", "no such directory"]);
    assert!(!saved.exists(), "grade made {}", saved.display());
}
