//! Live progress (issue 13 point 1) on a real pseudo-terminal: `script(1)`
//! (util-linux) gives hoist a terminal for stdin, stdout and stderr and
//! copies everything drawn on it to its own stdout. That transcript is
//! played into a terminal model (the `vt100` crate) and the screen it
//! leaves is compared with the insta snapshots in tests/snapshots/, the
//! volatile parts (durations, the output path, the task id) redacted.
//!
//! On a terminal `hoist run` leaves a line per phase with its time (the
//! agent's naming where its log goes), then the verdict and `results in
//! OUT`; `hoist materialize` leaves the layer count. `--follow` prints the
//! agent's log lines with every escape sequence neutralised. Off a
//! terminal, and with `--quiet`, nothing is drawn; colour only on a
//! terminal, never with `NO_COLOR`.
//!
//! The snapshots are committed; as in run_record.rs, under
//! `HOIST_TEST_REQUIRE_ALL=1` (CI) the tests refuse the insta settings
//! that would accept a drift. Needs root, `script` and the samples; skips
//! with the reason otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::*;

struct Samples {
    oci: String,
    task: String,
    replay_task: String,
}

fn samples() -> Option<Samples> {
    if !is_root() {
        skip("hoist run tests need root (namespaces, overlay mounts)");
        return None;
    }
    if !have_tool("script") {
        return None;
    }
    let first = |v: String| v.split_whitespace().next().map(str::to_string);
    Some(Samples {
        oci: env_or_skip("HOIST_SAMPLES_OCI")?,
        task: first(env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?)?,
        replay_task: first(env_or_skip("HOIST_SAMPLES_REPLAY_TASKS")?)?,
    })
}

impl Samples {
    fn r(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.oci)
    }
}

/// The store run_crane.rs fills, so the layers are cached once.
fn store() -> PathBuf {
    test_store("run-store")
}

/// `hoist run` of the oracle on one pyfix task into `out`, with `extra`
/// flags, as support::hoist sets it up.
fn oracle_run(s: &Samples, out: &Path, extra: &[&str]) -> Command {
    let mut c = hoist(&store());
    c.arg("run")
        .args(extra)
        .args([
            "--benchmark",
            &s.r("pyfix"),
            "--agent",
            &s.r("agent-oracle"),
        ])
        .args(["--task", &s.task])
        .arg("--out")
        .arg(out);
    c
}

/// An agent line with every kind of sequence a hostile agent could use
/// to drive the user's terminal: a window title (OSC 0), the clipboard
/// (OSC 52), a screen clear, colour, a bell and a C1 CSI, between words
/// that must reach the user.
const HOSTILE_LINE: &str = r"printf 'follow-marker \033]0;pwned\007title \033]52;c;cm0gLXJm\033\\clip \033[2J\033[31mred\033[0m bell\007 c1\302\23331m end\n'";

/// `hoist run` of the scripted agent, which runs [`HOSTILE_LINE`] (its
/// output goes to agent.log), with `extra` flags.
fn hostile_run(s: &Samples, rec: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = hoist(&store());
    c.arg("run")
        .args(extra)
        .args([
            "--benchmark",
            &s.r("pyfix"),
            "--agent",
            &s.r("agent-scripted"),
        ])
        .args([
            "--gateway",
            &s.r("gateway-replay"),
            "--task",
            &s.replay_task,
        ])
        .arg("--recordings")
        .arg(rec)
        .arg("--out")
        .arg(out);
    c
}

/// The terminal's size: wide enough that no line of ours wraps.
const ROWS: u16 = 60;
const COLS: u16 = 250;

/// Run `cmd` under `script -qfec` on a terminal of [`ROWS`]×[`COLS`],
/// with its environment; the transcript (stdout and stderr, as one
/// stream).
fn on_terminal(cmd: &Command) -> Vec<u8> {
    let quote = |a: &std::ffi::OsStr| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect();
    let shell = format!("stty rows {ROWS} cols {COLS}; exec {}", line.join(" "));
    let mut c = Command::new("script");
    c.args(["-qfec", &shell, "/dev/null"]).stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    ok(&mut c).stdout
}

/// The screen the transcript leaves, its trailing blank lines dropped.
fn screen(transcript: &[u8]) -> String {
    let size = |n| std::num::NonZeroU16::new(n).unwrap();
    let mut p = vt100::Parser::new(size(ROWS), size(COLS), 0);
    p.process(transcript);
    let text = p.screen().contents();
    text.trim_end().to_string()
}

/// `text` with the durations (`0s`, `1m12s`, `1h02m03s`) as `[T]` and
/// each `(from, to)` swapped.
fn redact(text: &str, swaps: &[(&str, &str)]) -> String {
    let text = swaps
        .iter()
        .fold(text.to_string(), |t, (f, to)| t.replace(f, to));
    text.lines()
        .map(|l| {
            l.split(' ')
                .map(|w| if is_duration(w) { "[T]" } else { w })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_duration(w: &str) -> bool {
    let Some(body) = w.strip_suffix('s') else {
        return false;
    };
    body.starts_with(|c: char| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || c == 'h' || c == 'm')
}

/// An SGR sequence (colour, bold, reset) in `bytes`.
fn has_sgr(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(i, w)| {
        w == b"\x1b[" && {
            let rest = &bytes[i + 2..];
            let n = rest
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b';')
                .count();
            rest.get(n) == Some(&b'm')
        }
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_terminal_shows_each_phase_then_the_verdict_and_where_the_results_are() {
    let Some(s) = samples() else { return };
    snapshots_must_be_compared("progress_tty", &["run_screen"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let transcript = on_terminal(&oracle_run(&s, &out, &[]));
    let text = String::from_utf8_lossy(&transcript);
    // The phase line is erased before the verdict is printed.
    let at = text
        .find(&format!("{}: ", s.task))
        .unwrap_or_else(|| panic!("no verdict on the terminal:\n{text:?}"));
    assert!(
        text[..at].ends_with("\x1b[2K") || text[..at].ends_with('\n'),
        "the phase line was not cleared before the verdict:\n{text:?}"
    );
    let shown = redact(
        &screen(&transcript),
        &[(&out.display().to_string(), "[OUT]"), (&s.task, "[TASK]")],
    );
    insta::assert_snapshot!("run_screen", shown);
}

#[test]
fn container_mode_on_a_terminal_says_what_the_host_can_see() {
    let Some(s) = samples() else { return };
    if !have_docker() {
        return;
    }
    if static_hoist().is_none() {
        skip("no static hoist: run scripts/build-static");
        return;
    }
    snapshots_must_be_compared("progress_tty", &["container_run_screen"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = oracle_run(&s, &out, &["--mode", "container"]);
    c.env("HOIST_DOCKER", docker_path());
    let transcript = on_terminal(&c);
    let shown = redact(
        &screen(&transcript),
        &[(&out.display().to_string(), "[OUT]"), (&s.task, "[TASK]")],
    );
    insta::assert_snapshot!("container_run_screen", shown);
}

#[test]
fn follow_shows_the_agents_lines_and_never_its_escape_sequences() {
    let Some(s) = samples() else { return };
    snapshots_must_be_compared("progress_tty", &["follow_lines"]);
    let rec = recordings(&s.replay_task, HOSTILE_LINE);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let transcript = on_terminal(&hostile_run(&s, rec.path(), &out, &["--follow"]));
    let log = std::fs::read(out.join("task/agent.log")).unwrap();
    // The agent did write them: the test is worth something.
    assert!(contains(&log, b"\x1b]0;pwned\x07"), "{log:?}");
    for bad in [
        &b"\x1b]"[..],
        b"\x1b[31m",
        b"\x1b[2J",
        b"\x07",
        "\u{9b}".as_bytes(),
    ] {
        assert!(
            !contains(&transcript, bad),
            "{bad:?} reached the terminal:\n{:?}",
            String::from_utf8_lossy(&transcript)
        );
    }
    let screen = screen(&transcript);
    let marked: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("follow-marker"))
        .collect();
    insta::assert_snapshot!("follow_lines", marked.join("\n"));
}

#[test]
fn follow_off_a_terminal_prints_plain_lines_on_stderr() {
    let Some(s) = samples() else { return };
    let rec = recordings(&s.replay_task, HOSTILE_LINE);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = ok(&mut hostile_run(&s, rec.path(), &out, &["--follow"]));
    let err = stderr(&o);
    assert!(
        err.lines().any(|l| l.starts_with("agent | ")
            && l.contains("follow-marker title clip red bell\\x07 c1\\u{9b}31m end")),
        "{err}"
    );
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(stdout(&o).contains(&format!("{}: ", s.replay_task)));
}

#[test]
fn follow_in_container_mode_shows_the_log_once_docker_gives_it() {
    let Some(s) = samples() else { return };
    if !have_docker() {
        return;
    }
    if static_hoist().is_none() {
        skip("no static hoist: run scripts/build-static");
        return;
    }
    let rec = recordings(&s.replay_task, HOSTILE_LINE);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = hostile_run(&s, rec.path(), &out, &["--mode", "container", "--follow"]);
    c.env("HOIST_DOCKER", docker_path());
    let o = ok(&mut c);
    let err = stderr(&o);
    assert!(
        err.lines()
            .any(|l| l.starts_with("agent | ") && l.contains("follow-marker title clip red")),
        "{err}"
    );
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
}

#[test]
fn the_verdict_is_coloured_on_a_terminal_but_never_with_no_color() {
    let Some(s) = samples() else { return };
    let dir = tempfile::tempdir().unwrap();
    let coloured = on_terminal(&oracle_run(&s, &dir.path().join("a"), &[]));
    assert!(
        contains(&coloured, b"\x1b[32mRESOLVED\x1b[0m"),
        "{:?}",
        String::from_utf8_lossy(&coloured)
    );
    let mut plain = oracle_run(&s, &dir.path().join("b"), &[]);
    plain.env("NO_COLOR", "1");
    let plain = on_terminal(&plain);
    assert!(!has_sgr(&plain), "{:?}", String::from_utf8_lossy(&plain));
    assert!(contains(&plain, b"RESOLVED"));
}

#[test]
fn quiet_on_a_terminal_draws_nothing() {
    let Some(s) = samples() else { return };
    let dir = tempfile::tempdir().unwrap();
    let transcript = on_terminal(&oracle_run(&s, &dir.path().join("out"), &["--quiet"]));
    assert!(
        transcript.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&transcript)
    );
}

#[test]
fn without_a_terminal_only_the_verdict_and_where_the_results_are() {
    let Some(s) = samples() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = ok(&mut oracle_run(&s, &out, &[]));
    let err = stderr(&o);
    for word in [
        "pulling",
        "fusing",
        "installing",
        "agent running",
        "grading",
    ] {
        assert!(!err.contains(word), "stderr names {word}:\n{err}");
    }
    assert!(!err.contains('\x1b'), "stderr has terminal codes:\n{err}");
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("{}: RESOLVED (", s.task)),
        "{lines:?}"
    );
    assert_eq!(lines[1], format!("results in {}", out.display()));

    // --json: the result alone on stdout.
    let o = ok(&mut oracle_run(&s, &dir.path().join("json"), &["--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["resolved"], true);
    // --quiet: nothing.
    let o = ok(&mut oracle_run(&s, &dir.path().join("quiet"), &["--quiet"]));
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), "");
}

#[test]
fn follow_and_quiet_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(hoist(&dir.path().join("store"))
        .args([
            "run",
            "--follow",
            "--quiet",
            "--benchmark",
            "oci:/nonexistent:x",
        ])
        .args(["--agent", "oci:/nonexistent:y", "--out"])
        .arg(dir.path().join("out")));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--follow"), "{}", stderr(&o));
}

#[test]
fn materialize_on_a_terminal_leaves_the_layer_count() {
    let Some(s) = samples() else { return };
    snapshots_must_be_compared("progress_tty", &["materialize_screen"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs");
    let mut c = hoist(&store());
    c.args([
        "materialize",
        "--rootfs",
        "copy",
        "--benchmark",
        &s.r("pyfix"),
    ])
    .args(["--agent", &s.r("agent-oracle"), "--out"])
    .arg(&out);
    let transcript = on_terminal(&c);
    let shown = redact(
        &screen(&transcript),
        &[(&out.display().to_string(), "[OUT]")],
    );
    insta::assert_snapshot!("materialize_screen", shown);
}
