//! Progress on a terminal: blob download bars (`hoist pull`), `hoist
//! run`'s phase line, and `hoist eval`'s board. Bars are drawn only when
//! stderr is a terminal and output is not `--quiet`; off a terminal `hoist
//! run` shows nothing and `hoist eval` prints plain lines.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoist::digest::Digest;
use hoist::eval::{Event, Outcome};
use hoist::phase::{Phase, PhaseHook};
use hoist::pull::{NoProgress, Progress};
use hoist::result::Stage;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether to draw: stderr is a terminal and output is not quiet.
fn on_terminal(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A style from a template of ours; a template that does not parse is a
/// bug, shown as indicatif's default rather than failing the command.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    /// Bars when stderr is a terminal and output is not quiet; else nothing.
    pub fn for_terminal(quiet: bool) -> Arc<dyn Progress> {
        if !on_terminal(quiet) {
            return Arc::new(NoProgress);
        }
        Arc::new(Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        })
    }
}

impl Progress for Bars {
    fn blob_started(&self, digest: &Digest, size: u64, resumed_from: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        let style = style("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}");
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(digest.hex()[..12].to_string());
        bar.set_position(resumed_from);
        if let Ok(mut m) = self.bars.lock() {
            m.insert(digest.clone(), bar);
        }
    }

    fn blob_advanced(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = self.bars.lock().ok().and_then(|m| m.get(digest).cloned()) {
            b.inc(bytes);
        }
    }

    fn blob_finished(&self, digest: &Digest, _downloaded: bool) {
        if let Some(b) = self.bars.lock().ok().and_then(|mut m| m.remove(digest)) {
            b.finish_and_clear();
        }
    }
}

/// How often a phase line redraws, so its elapsed time ticks.
const TICK: Duration = Duration::from_millis(200);

/// Show `phase` on `bar`, its elapsed time counted from now: the time in
/// the current phase is what tells a stuck fuse from a long agent.
fn show_phase(bar: &ProgressBar, phase: Phase) {
    bar.reset_elapsed();
    bar.set_message(phase.as_str());
}

/// `hoist run` on a terminal: one line, the run's phase and how long it
/// has lasted, cleared when the run ends (the verdict follows). Off a
/// terminal it is nothing, so what `hoist run` prints there is unchanged.
pub struct RunSpinner {
    bar: Option<ProgressBar>,
}

impl RunSpinner {
    pub fn for_terminal(quiet: bool) -> RunSpinner {
        let bar = on_terminal(quiet).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(style(RUN_TEMPLATE));
            bar.enable_steady_tick(TICK);
            bar
        });
        RunSpinner { bar }
    }

    /// The hook for the run's `How`; none off a terminal.
    pub fn hook(&self) -> Option<PhaseHook> {
        let bar = self.bar.clone()?;
        Some(Arc::new(move |p| show_phase(&bar, p)))
    }

    /// A line on stderr, above the spinner when there is one.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Clear the line; again is harmless.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for RunSpinner {
    /// An error ends the run early: its message must not follow a
    /// half-drawn line.
    fn drop(&mut self) {
        self.finish();
    }
}

/// A stage as result.json names it (`sandbox`, `grade`, ...).
pub fn stage_name(stage: Stage) -> String {
    match serde_json::to_value(stage) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{stage:?}").to_lowercase(),
    }
}

/// The line `hoist eval` prints for `e`, on a terminal (above the bars)
/// and off one alike: a retry's start, a retry, a task's end. A first
/// start prints nothing, so a log has one line per task that ran once.
pub fn event_line(e: &Event<'_>) -> Option<String> {
    match e {
        Event::Started { task, attempt } if *attempt > 1 => {
            Some(format!("{}: attempt {attempt}", task.id))
        }
        Event::Started { .. } => None,
        Event::Retrying { task, after, why } => Some(format!(
            "{}: infrastructure error ({why}); again in {:.1} s",
            task.id,
            after.as_secs_f64()
        )),
        Event::Ended {
            task,
            outcome,
            done,
            total,
        } => {
            let verdict = match &outcome.result {
                None => "not run".to_string(),
                Some(r) => match &r.infra_error {
                    Some(e) => format!(
                        "infrastructure error at {}: {}",
                        stage_name(e.stage),
                        e.message
                    ),
                    None if r.resolved => "RESOLVED".into(),
                    None if r.agent.timed_out => "unresolved (agent timed out)".into(),
                    None => "unresolved".into(),
                },
            };
            let kept = if outcome.resumed { " (kept)" } else { "" };
            Some(format!("[{done}/{total}] {}: {verdict}{kept}", task.id))
        }
    }
}

/// The verdicts so far, for the board's overall line. A timed-out agent
/// is unresolved; an outcome with no result (not run) is in none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    resolved: usize,
    unresolved: usize,
    infra_error: usize,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        match &o.result {
            Some(r) if r.infra_error.is_some() => self.infra_error += 1,
            Some(r) if r.resolved => self.resolved += 1,
            Some(_) => self.unresolved += 1,
            None => {}
        }
    }

    fn message(&self) -> String {
        format!(
            "resolved {}, unresolved {}, infra error {}",
            self.resolved, self.unresolved, self.infra_error
        )
    }
}

/// `hoist eval`'s progress. On a terminal (and not `--quiet`): one line
/// per running task (`id  phase  elapsed`, the time in the phase) above
/// an overall bar (`done/total` and the verdicts so far), with each
/// task's end line printed above them all. Off a terminal: the same end,
/// retry and restart lines, plain, and nothing per phase: a CI log keeps
/// one line per task (as it had before the board), which stays readable
/// with `--jobs N` interleaving, and each task's own logs in
/// `OUT/tasks/<id>/` say how far a failed run got. With `--quiet`:
/// nothing. Shared by the worker threads.
pub struct EvalBoard {
    mode: Board,
}

enum Board {
    Quiet,
    Plain,
    Live(Arc<Live>),
}

struct Live {
    multi: MultiProgress,
    /// The last line: done/total and the verdicts so far.
    overall: ProgressBar,
    running: Mutex<Running>,
}

/// The running tasks' lines, and the width of their id column.
#[derive(Default)]
struct Running {
    lines: HashMap<String, ProgressBar>,
    width: usize,
    tally: Tally,
}

impl EvalBoard {
    /// The board for `total` tasks (the plan's, resumed ones included).
    pub fn new(quiet: bool, total: usize) -> EvalBoard {
        let mode = match (quiet, on_terminal(quiet)) {
            (true, _) => Board::Quiet,
            (false, false) => Board::Plain,
            (false, true) => Board::Live(Arc::new(Live::new(total, ProgressDrawTarget::stderr()))),
        };
        EvalBoard { mode }
    }

    /// Hear one of `hoist::eval::run_all`'s events.
    pub fn event(&self, e: &Event<'_>) {
        match &self.mode {
            Board::Quiet => {}
            Board::Plain => {
                if let Some(line) = event_line(e) {
                    eprintln!("{line}");
                }
            }
            Board::Live(live) => live.event(e),
        }
    }

    /// The phase hook for `task_id`'s run (its `How`): updates the task's
    /// line; does nothing off a terminal.
    pub fn hook(&self, task_id: &str) -> PhaseHook {
        match &self.mode {
            Board::Live(live) => {
                let (live, id) = (live.clone(), task_id.to_string());
                Arc::new(move |p| live.phase(&id, p))
            }
            _ => Arc::new(|_| {}),
        }
    }

    /// Clear the bars (the printed lines stay), before the summary is
    /// printed; again is harmless.
    pub fn finish(&self) {
        if let Board::Live(live) = &self.mode {
            live.finish();
        }
    }
}

impl Drop for EvalBoard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The widest id column before a line would crowd out its phase.
const MAX_ID_WIDTH: usize = 60;

impl Live {
    fn new(total: usize, target: ProgressDrawTarget) -> Live {
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(style(OVERALL_TEMPLATE).progress_chars("=> "));
        overall.set_message(Tally::default().message());
        overall.enable_steady_tick(Duration::from_secs(1));
        Live {
            multi,
            overall,
            running: Mutex::new(Running::default()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        // A panic elsewhere while the lock was held leaves a map that is
        // still whole; the display goes on with it.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Print above the bars. A terminal that cannot be written to has no
    /// reader to tell, and the evaluation goes on without it.
    fn println(&self, line: &str) {
        if let Err(e) = self.multi.println(line) {
            tracing::debug!(error = %e, "could not print above the progress bars");
        }
    }

    fn event(&self, e: &Event<'_>) {
        if let Some(line) = event_line(e) {
            self.println(&line);
        }
        match e {
            Event::Started { task, attempt } => self.started(&task.id, *attempt),
            Event::Retrying { task, .. } => {
                if let Some(bar) = self.running().lines.get(&task.id) {
                    bar.reset_elapsed();
                    bar.set_message("backoff");
                }
            }
            Event::Ended { task, outcome, .. } => {
                let mut r = self.running();
                if let Some(bar) = r.lines.remove(&task.id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                r.tally.add(outcome);
                self.overall.inc(1);
                self.overall.set_message(r.tally.message());
            }
        }
    }

    /// A task's line, made on its first attempt, above the overall bar;
    /// the id column widens for it (every line with it) when it must.
    fn started(&self, id: &str, attempt: u32) {
        let mut r = self.running();
        let label = match attempt {
            1 => id.to_string(),
            n => format!("{id} (attempt {n})"),
        };
        let width = label.chars().count().min(MAX_ID_WIDTH);
        if width > r.width {
            r.width = width;
            for bar in r.lines.values() {
                bar.set_style(task_style(width));
            }
        }
        match r.lines.get(id) {
            Some(bar) => {
                bar.reset_elapsed();
                bar.set_message("start");
                bar.set_prefix(label);
            }
            None => {
                // Made whole before it is shown, so it is never drawn
                // without its phase.
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
                    .with_style(task_style(r.width))
                    .with_prefix(label)
                    .with_message("start");
                let bar = self.multi.insert_before(&self.overall, bar);
                bar.enable_steady_tick(TICK);
                r.lines.insert(id.to_string(), bar);
            }
        }
    }

    fn phase(&self, id: &str, phase: Phase) {
        if let Some(bar) = self.running().lines.get(id) {
            show_phase(bar, phase);
        }
    }

    fn finish(&self) {
        for (_, bar) in self.running().lines.drain() {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

/// `hoist run`'s line and the overall line of `hoist eval`.
const RUN_TEMPLATE: &str = "{spinner} {msg:<7} {elapsed_precise}";
const OVERALL_TEMPLATE: &str = "[{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}";

/// A running task's line: `id  phase  elapsed`, the ids padded to
/// `width` so the phases line up.
fn task_template(width: usize) -> String {
    format!("{{spinner}} {{prefix:<{width}}}  {{msg:<7}} {{elapsed_precise}}")
}

fn task_style(width: usize) -> ProgressStyle {
    style(&task_template(width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist::eval::{Pin, PlannedTask};
    use hoist::orchestrate::{host_result, Stopped};
    use hoist::result::{Stage, TaskResult};

    fn task(id: &str) -> PlannedTask {
        let pin = Pin {
            reference: "oci:/s:b".into(),
            digest: None,
            unresolved: None,
        };
        PlannedTask {
            id: id.into(),
            benchmark: pin.clone(),
            agent: pin,
            gateway: None,
            agent_timeout_sec: None,
        }
    }

    /// A result as the supervisor writes it: resolved, unresolved (maybe
    /// timed out), or an infrastructure error with `infra`.
    fn result(resolved: bool, timed_out: bool, infra: Option<&str>) -> TaskResult {
        let facts = Stopped {
            task: Some("t"),
            images: &serde_json::Value::Null,
            platform: "linux/amd64".into(),
            mode: "crane",
            isolation: "namespaces",
            started_at: "2024-01-01T00:00:00Z",
        };
        let mut r = host_result(Stage::Sandbox, infra.unwrap_or("").into(), &facts, None);
        if infra.is_none() {
            r.infra_error = None;
        }
        r.resolved = resolved;
        r.agent.timed_out = timed_out;
        r
    }

    fn outcome(result: Option<TaskResult>, resumed: bool) -> Outcome {
        Outcome {
            id: "t".into(),
            result,
            resumed,
            attempts: 1,
        }
    }

    fn ended(t: &PlannedTask, o: &Outcome, done: usize) -> Option<String> {
        event_line(&Event::Ended {
            task: t,
            outcome: o,
            done,
            total: 10,
        })
    }

    #[test]
    fn plain_lines_for_starts_and_retries() {
        let t = task("ini-quoted-values");
        let started = |attempt| event_line(&Event::Started { task: &t, attempt });
        assert_eq!(started(1), None);
        assert_eq!(started(2).as_deref(), Some("ini-quoted-values: attempt 2"));
        let retry = event_line(&Event::Retrying {
            task: &t,
            after: Duration::from_millis(2500),
            why: "no space left".into(),
        });
        assert_eq!(
            retry.as_deref(),
            Some("ini-quoted-values: infrastructure error (no space left); again in 2.5 s")
        );
    }

    #[test]
    fn plain_lines_for_each_ending() {
        let t = task("a");
        let cases = [
            (
                outcome(Some(result(true, false, None)), false),
                "[3/10] a: RESOLVED",
            ),
            (
                outcome(Some(result(true, false, None)), true),
                "[3/10] a: RESOLVED (kept)",
            ),
            (
                outcome(Some(result(false, false, None)), false),
                "[3/10] a: unresolved",
            ),
            (
                outcome(Some(result(false, true, None)), false),
                "[3/10] a: unresolved (agent timed out)",
            ),
            (
                outcome(Some(result(false, false, Some("pull failed"))), false),
                "[3/10] a: infrastructure error at sandbox: pull failed",
            ),
            (outcome(None, false), "[3/10] a: not run"),
        ];
        for (o, want) in cases {
            assert_eq!(ended(&t, &o, 3).as_deref(), Some(want));
        }
    }

    #[test]
    fn the_tally_counts_each_verdict_once() {
        let mut t = Tally::default();
        assert_eq!(t.message(), "resolved 0, unresolved 0, infra error 0");
        for o in [
            outcome(Some(result(true, false, None)), false),
            outcome(Some(result(true, false, None)), true),
            outcome(Some(result(false, true, None)), false),
            // An infra error is never counted as resolved, whatever else.
            outcome(Some(result(true, false, Some("x"))), false),
            outcome(None, false),
        ] {
            t.add(&o);
        }
        assert_eq!(t.message(), "resolved 2, unresolved 1, infra error 1");
    }

    #[test]
    fn the_live_board_follows_each_task() {
        let live = Arc::new(Live::new(2, ProgressDrawTarget::hidden()));
        let board = EvalBoard {
            mode: Board::Live(live.clone()),
        };
        let (a, b) = (task("a"), task("a-longer-id"));
        board.event(&Event::Started {
            task: &a,
            attempt: 1,
        });
        board.event(&Event::Started {
            task: &b,
            attempt: 1,
        });
        let line = |id: &str| live.running().lines.get(id).cloned();
        assert_eq!(line("a").unwrap().message(), "start");
        assert_eq!(live.running().width, "a-longer-id".len());
        board.hook("a")(Phase::Agent);
        board.hook("gone")(Phase::Grade);
        assert_eq!(line("a").unwrap().message(), "agent");
        assert_eq!(line("a-longer-id").unwrap().message(), "start");

        board.event(&Event::Retrying {
            task: &a,
            after: Duration::from_secs(1),
            why: "x".into(),
        });
        assert_eq!(line("a").unwrap().message(), "backoff");
        board.event(&Event::Started {
            task: &a,
            attempt: 2,
        });
        assert_eq!(line("a").unwrap().prefix(), "a (attempt 2)");

        let o = outcome(Some(result(true, false, None)), false);
        board.event(&Event::Ended {
            task: &a,
            outcome: &o,
            done: 1,
            total: 2,
        });
        assert!(line("a").is_none());
        assert_eq!(live.overall.position(), 1);
        assert_eq!(
            live.overall.message(),
            "resolved 1, unresolved 0, infra error 0"
        );
        // An interrupted evaluation never ends its running tasks: finish
        // clears their lines.
        board.finish();
        assert!(live.running().lines.is_empty());
        assert!(live.overall.is_finished());
    }

    /// A terminal that keeps every line drawn on it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().extend(s.lines().map(str::to_string));
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Screen {
        /// Whether a line drawn holds `text`.
        fn shows(&self, text: &str) -> bool {
            self.0.lock().unwrap().iter().any(|l| l.contains(text))
        }
    }

    #[test]
    fn the_board_draws_a_line_per_task_and_the_tally() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let board = EvalBoard {
            mode: Board::Live(Arc::new(Live::new(2, target))),
        };
        let t = task("ini-quoted-values");
        board.event(&Event::Started {
            task: &t,
            attempt: 1,
        });
        board.hook(&t.id)(Phase::Agent);
        assert!(
            screen.shows(" ini-quoted-values  agent   00:00:00"),
            "{screen:?}"
        );
        let o = outcome(Some(result(false, true, None)), false);
        board.event(&Event::Ended {
            task: &t,
            outcome: &o,
            done: 1,
            total: 2,
        });
        // The end line above the bars, and the tally.
        assert!(
            screen.shows("[1/2] ini-quoted-values: unresolved (agent timed out)"),
            "{screen:?}"
        );
        assert!(
            screen.shows("] 1/2 resolved 0, unresolved 1, infra error 0"),
            "{screen:?}"
        );
        board.finish();
    }

    #[test]
    fn the_templates_parse() {
        // `style` would fall back to indicatif's default bar silently.
        for t in [
            RUN_TEMPLATE.to_string(),
            OVERALL_TEMPLATE.into(),
            task_template(0),
            task_template(42),
        ] {
            assert!(ProgressStyle::with_template(&t).is_ok(), "{t}");
        }
    }

    #[test]
    fn the_board_is_shared_by_the_worker_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<EvalBoard>();
        shared::<RunSpinner>();
    }

    #[test]
    fn quiet_and_plain_boards_give_hooks_that_do_nothing() {
        for quiet in [true, false] {
            let board = EvalBoard::new(quiet, 1);
            board.hook("a")(Phase::Fuse);
            board.finish();
        }
    }
}
