//! `hoist run`'s live phase line (issue 10 point 5, issue 13), on a real
//! pseudo-terminal: `script(1)` (util-linux) gives hoist a terminal for
//! stdin, stdout and stderr and copies everything it draws to its own
//! stdout. On a terminal the run shows `phase  elapsed` for each phase in
//! order and clears the line before the verdict; off one (and with
//! `--quiet`) it draws nothing, so logs and pipes read as before.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::*;

struct Samples {
    oci: String,
    task: String,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("hoist run tests need root (namespaces, overlay mounts)");
        return None;
    }
    if !have_tool("script") {
        return None;
    }
    let tasks = env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?;
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        task: tasks.split_whitespace().next()?.to_string(),
    })
}

/// The store run_crane.rs fills, so the layers are cached once.
fn store() -> PathBuf {
    test_store("run-store")
}

/// `hoist run` of the oracle on one pyfix task into `out`, with `extra`
/// flags, as support::hoist sets it up.
fn hoist_run(s: &Samples, out: &Path, extra: &[&str]) -> Command {
    let mut c = hoist(&store());
    c.arg("run")
        .args(extra)
        .args(["--benchmark", &format!("oci:{}:pyfix", s.oci)])
        .args(["--agent", &format!("oci:{}:agent-oracle", s.oci)])
        .args(["--task", &s.task])
        .arg("--out")
        .arg(out);
    c
}

/// Run `cmd` under `script -qfec`, with its environment; what the
/// terminal showed (stdout and stderr, as one stream).
fn on_terminal(cmd: &Command) -> String {
    let quote = |a: &std::ffi::OsStr| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect();
    let mut c = Command::new("script");
    c.args(["-qfec", &line.join(" "), "/dev/null"])
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let o = ok(&mut c);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The phases the terminal showed, in order, repeats folded: each frame
/// is `SPINNER PHASE HH:MM:SS`, between carriage returns and the
/// erase-line sequence indicatif redraws with.
fn phases_shown(screen: &str) -> Vec<String> {
    let mut shown: Vec<String> = Vec::new();
    for frame in screen.split(['\r', '\n']) {
        let frame = frame.replace("\x1b[2K", "");
        let words: Vec<&str> = frame.split_whitespace().collect();
        let [_spinner, phase, elapsed] = words[..] else {
            continue;
        };
        let is_time = elapsed.len() == 8
            && elapsed.bytes().enumerate().all(|(i, b)| {
                if i == 2 || i == 5 {
                    b == b':'
                } else {
                    b.is_ascii_digit()
                }
            });
        if is_time && shown.last().map(String::as_str) != Some(phase) {
            shown.push(phase.to_string());
        }
    }
    shown
}

const PHASES: [&str; 5] = ["pull", "fuse", "install", "agent", "grade"];

#[test]
fn a_terminal_shows_each_phase_in_order_then_the_verdict() {
    let Some(s) = samples() else { return };
    let out = tempfile::tempdir().unwrap();
    let screen = on_terminal(&hoist_run(&s, &out.path().join("out"), &[]));
    let shown = phases_shown(&screen);
    // Each phase of a crane run, in the order it happened; the oracle's
    // agent may end before the host's next look, but its log is there by
    // the session's end, so `agent` is always told.
    let mut rest = shown.iter();
    for want in PHASES {
        assert!(
            rest.any(|p| p == want),
            "phase {want} not shown in order; shown {shown:?}; screen:\n{screen:?}"
        );
    }
    assert!(
        shown.iter().all(|p| PHASES.contains(&p.as_str())),
        "{shown:?}"
    );
    // The line is erased before the verdict is printed.
    let verdict = format!("{}: RESOLVED", s.task);
    let at = screen
        .find(&verdict)
        .unwrap_or_else(|| panic!("no verdict on the terminal:\n{screen:?}"));
    assert!(
        screen[..at].ends_with("\x1b[2K"),
        "the phase line was not cleared before the verdict:\n{screen:?}"
    );
}

#[test]
fn quiet_on_a_terminal_draws_nothing() {
    let Some(s) = samples() else { return };
    let out = tempfile::tempdir().unwrap();
    let screen = on_terminal(&hoist_run(&s, &out.path().join("out"), &["--quiet"]));
    assert_eq!(phases_shown(&screen), Vec::<String>::new(), "{screen:?}");
    assert!(!screen.contains('\x1b'), "{screen:?}");
}

#[test]
fn without_a_terminal_stderr_has_no_phase() {
    let Some(s) = samples() else { return };
    let out = tempfile::tempdir().unwrap();
    let o: Output = ok(&mut hoist_run(&s, &out.path().join("out"), &[]));
    let err = stderr(&o);
    for phase in PHASES {
        assert!(!err.contains(phase), "stderr names {phase}:\n{err}");
    }
    assert!(!err.contains('\x1b'), "stderr has terminal codes:\n{err}");
    assert!(
        stdout(&o).starts_with(&format!("{}: RESOLVED", s.task)),
        "{}",
        stdout(&o)
    );
}
