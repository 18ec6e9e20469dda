//! What a user reads when a command fails (issue 13): one golden file per
//! error, its exit code and its whole stderr, with what differs between
//! machines (temporary paths, registry ports, digests) redacted. The
//! assertions that each error names its flag or reference are in
//! tests/cli_checks.rs; these snapshots show the wording as a whole, so a
//! second line, a repeated cause or a lost hint shows up in review.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

struct Env {
    /// `HOST:PORT/samples` of the sample images.
    samples: String,
    /// `HOST:PORT` of the plain registry.
    plain: String,
    task: String,
}

fn env() -> Option<Env> {
    Some(Env {
        samples: env_or_skip("HOIST_SAMPLES_REGISTRY")?,
        plain: env_or_skip("HOIST_TEST_REGISTRY_PLAIN")?,
        task: env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?
            .split_whitespace()
            .next()?
            .to_string(),
    })
}

/// Every case: its name and how to make the command, given a scratch
/// directory holding `store/`, `file` (a file) and `full/` (a directory
/// that is not a store).
type Case = (&'static str, Box<dyn Fn(&Path) -> Command>);

/// `hoist run` of pyfix with the noop agent and `extra`, into `DIR/out`
/// unless `extra` names an `--out`.
fn run_pyfix(e: &Env, dir: &Path, extra: &[&str]) -> Command {
    let mut c = hoist(&dir.join("store"));
    c.env(
        "HOIST_STATIC_BINARY",
        static_hoist().unwrap_or_else(hoist_bin),
    )
    .args(["run", "--benchmark", &format!("{}/pyfix", e.samples)])
    .args(["--agent", &format!("{}/agent-noop", e.samples)])
    .args(extra);
    if !extra.contains(&"--out") {
        c.arg("--out").arg(dir.join("out"));
    }
    c
}

/// A hoist command on `DIR/store` with `args`.
fn plain(dir: &Path, args: &[&str]) -> Command {
    let mut c = hoist(&dir.join("store"));
    c.args(args);
    c
}

fn cases(e: &std::rc::Rc<Env>) -> Vec<Case> {
    let e1 = e.clone();
    let e2 = e.clone();
    let e3 = e.clone();
    let e4 = e.clone();
    let e5 = e.clone();
    let e6 = e.clone();
    let e7 = e.clone();
    let e8 = e.clone();
    vec![
        (
            "unknown_task",
            Box::new(move |d| run_pyfix(&e1, d, &["--task", "no-such-task"])),
        ),
        (
            "recordings_missing",
            Box::new(move |d| {
                let rec = d.join("no-recordings");
                run_pyfix(
                    &e2,
                    d,
                    &["--task", &e2.task, "--recordings", rec.to_str().unwrap()],
                )
            }),
        ),
        (
            "timeout_zero",
            Box::new(move |d| run_pyfix(&e3, d, &["--task", &e3.task, "--agent-timeout", "0"])),
        ),
        (
            "out_is_a_file",
            Box::new(move |d| {
                let f = d.join("file");
                run_pyfix(&e4, d, &["--task", &e4.task, "--out", f.to_str().unwrap()])
            }),
        ),
        (
            "static_binary_missing",
            Box::new(move |d| {
                let mut c = run_pyfix(&e5, d, &["--task", &e5.task]);
                c.env("HOIST_STATIC_BINARY", "/nonexistent/hoist-static");
                c
            }),
        ),
        (
            "not_a_benchmark",
            Box::new(move |d| plain(d, &["tasks", &format!("{}/small", e6.plain)])),
        ),
        (
            "platform_mismatch",
            Box::new(move |d| {
                let small = format!("{}/small", e7.plain);
                plain(d, &["pull", "--platform", "linux/arm64", &small])
            }),
        ),
        (
            "pull_never_not_stored",
            Box::new(move |d| {
                let rootfs = d.join("rootfs");
                let bench = format!("{}/pyfix", e8.samples);
                plain(
                    d,
                    &[
                        "materialize",
                        "--pull",
                        "never",
                        "--benchmark",
                        &bench,
                        "--out",
                        rootfs.to_str().unwrap(),
                    ],
                )
            }),
        ),
        (
            "registry_refused",
            Box::new(|d| {
                let mut c = plain(d, &["pull", "127.0.0.1:1/nothing:latest"]);
                c.env("HOIST_RETRY_ATTEMPTS", "1");
                c
            }),
        ),
        (
            "other_transport",
            Box::new(|d| plain(d, &["pull", "docker-daemon:alpine:latest"])),
        ),
        (
            "bad_reference",
            Box::new(|d| plain(d, &["pull", "Registry.example/UPPER/Case:tag"])),
        ),
        (
            "store_not_empty",
            Box::new(|d| {
                let mut c = hoist(&d.join("full"));
                c.arg("images");
                c
            }),
        ),
        (
            "store_verify_nothing",
            Box::new(|d| {
                let mut c = hoist(&d.join("no-store"));
                c.args(["store", "verify"]);
                c
            }),
        ),
        (
            "grade_missing",
            Box::new(|d| {
                let run = d.join("no-run");
                plain(d, &["grade", run.to_str().unwrap()])
            }),
        ),
        ("misspelt_command", Box::new(|d| plain(d, &["task-exe"]))),
    ]
}

/// `text` with what differs between machines and runs replaced.
fn redact(text: &str, dir: &Path, e: &Env) -> String {
    let mut t = text.replace(dir.to_str().unwrap(), "[TMP]");
    t = t.replace(&e.plain, "[REGISTRY]");
    if let Some(host) = e.samples.split('/').next() {
        t = t.replace(host, "[REGISTRY]");
    }
    // Digests: sha256: then 64 hex digits.
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(i) = rest.find("sha256:") {
        let (head, tail) = rest.split_at(i + "sha256:".len());
        out.push_str(head);
        let hex = tail.bytes().take_while(u8::is_ascii_hexdigit).count();
        if hex == 64 {
            out.push_str("[HEX]");
            rest = &tail[64..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn every_error_reads_as_its_snapshot() {
    let Some(e) = env() else { return };
    let e = std::rc::Rc::new(e);
    let cases = cases(&e);
    let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    snapshots_must_be_compared("errors", &names);
    for (name, make) in &cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "a file").unwrap();
        std::fs::create_dir(dir.path().join("full")).unwrap();
        std::fs::write(dir.path().join("full/notes.txt"), "mine").unwrap();
        let o = run(&mut make(dir.path()));
        let code = o.status.code();
        assert!(
            matches!(code, Some(1..=3)),
            "{name}: exit {code:?}: {}",
            stderr(&o)
        );
        let shown = format!(
            "exit {}\n{}",
            code.unwrap_or(-1),
            redact(&stderr(&o), dir.path(), &e)
        );
        insta::assert_snapshot!(*name, shown);
    }
}
