//! Progress on a terminal: blob download bars (`hoist pull`, `hoist run`,
//! `hoist materialize`), `hoist run`'s phase line, `hoist materialize`'s
//! layer count, and `hoist eval`'s board. Bars are drawn only when stderr
//! is a terminal and output is not `--quiet`; off a terminal `hoist run`
//! shows nothing and `hoist eval` prints plain lines. None is coloured.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoist::digest::Digest;
use hoist::eval::{Event, Outcome};
use hoist::phase::{Logs, Phase, PhaseHook, Watch};
use hoist::pull::{NoProgress, Progress};
use hoist::result::Stage;
use hoist::rootfs::LayersDone;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::follow::{Follow, Sink};

/// Whether to draw: stderr is a terminal and output is not quiet.
fn on_terminal(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// The lines drawn now, if any: a log line (tracing's, on stderr) is
/// printed above them instead of over them.
static DRAWN: Mutex<Option<MultiProgress>> = Mutex::new(None);

fn drawn() -> std::sync::MutexGuard<'static, Option<MultiProgress>> {
    // Only ever replaced whole: a panic while it was held left it whole.
    DRAWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// tracing's writer: one event at a time, on stderr, above the progress
/// lines when some are drawn.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One event's text, written when tracing is done with it.
pub struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        use std::io::Write as _;
        let write = || {
            // A log line that cannot be written has nowhere else to go.
            let _ = std::io::stderr().write_all(&self.0);
        };
        match drawn().clone() {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }
}

/// A style from a template of ours; a template that does not parse is a
/// bug, shown as indicatif's default rather than failing the command.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

pub struct Bars {
    multi: MultiProgress,
    /// The line the bars are drawn above (`hoist run`'s phase line).
    above: Option<ProgressBar>,
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
            above: None,
            bars: Mutex::new(HashMap::new()),
        })
    }
}

impl Progress for Bars {
    fn blob_started(&self, digest: &Digest, size: u64, resumed_from: u64) {
        let bar = match &self.above {
            Some(line) => self.multi.insert_before(line, ProgressBar::new(size)),
            None => self.multi.add(ProgressBar::new(size)),
        };
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

/// `hoist run`'s progress. On a terminal (and not `--quiet` or
/// `--json`): the pull's bars, then one line for the phase running and
/// how long it has lasted (`agent running 1m12s (agent.log: PATH)`),
/// which leaves a line with the phase's time above it when the next one
/// begins, and is cleared when the run ends (the verdict follows). Off a
/// terminal it draws nothing, so logs and pipes read as they did. With
/// `--follow`, the agent session's logs, neutralised, above the line (or
/// on stderr off a terminal).
pub struct RunSpinner {
    live: Option<Arc<RunLine>>,
    follow: Option<Arc<Follow>>,
}

/// The drawn part of [`RunSpinner`].
struct RunLine {
    multi: MultiProgress,
    bar: ProgressBar,
    /// Where the agent's log will be: `OUT/task/agent.log`.
    agent_log: String,
    /// The phase shown and when it began.
    current: Mutex<Option<(Phase, Instant)>>,
    /// Container mode: Docker bakes and loads the image instead of a
    /// fuse, and the host cannot see the agent start inside the
    /// container, so `install` lasts the whole agent session.
    container: bool,
}

impl RunSpinner {
    /// The progress of a run into `out` (in container mode or not);
    /// `follow` streams its logs.
    pub fn new(quiet: bool, out: &Path, follow: bool, container: bool) -> RunSpinner {
        let target = ProgressDrawTarget::stderr();
        let draw = on_terminal(quiet);
        RunSpinner::with_target(draw, out, (follow, container), target)
    }

    fn with_target(
        draw: bool,
        out: &Path,
        (follow, container): (bool, bool),
        target: ProgressDrawTarget,
    ) -> RunSpinner {
        let live = draw.then(|| {
            let multi = MultiProgress::with_draw_target(target);
            let bar = multi.add(ProgressBar::new_spinner());
            // Ticking (drawn) from the first phase on: never without one.
            bar.set_style(run_style());
            *drawn() = Some(multi.clone());
            let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
            Arc::new(RunLine {
                multi,
                bar,
                agent_log: out.join("task").join("agent.log").display().to_string(),
                current: Mutex::new(None),
                container,
            })
        });
        let follow = follow.then(|| {
            let sink: Sink = match &live {
                Some(l) => {
                    let l = l.clone();
                    Arc::new(move |line: &str| l.println(line))
                }
                None => Arc::new(|line: &str| hoist::errln!("{line}")),
            };
            Arc::new(Follow::new(sink))
        });
        RunSpinner { live, follow }
    }

    /// The pull's progress: a bar per blob above the phase line; nothing
    /// off a terminal.
    pub fn bars(&self) -> Arc<dyn Progress> {
        match &self.live {
            Some(l) => Arc::new(Bars {
                multi: l.multi.clone(),
                above: Some(l.bar.clone()),
                bars: Mutex::new(HashMap::new()),
            }),
            None => Arc::new(NoProgress),
        }
    }

    /// The hook for the run's `How`; none when there is nothing to show.
    pub fn hook(&self) -> Option<PhaseHook> {
        if self.live.is_none() && self.follow.is_none() {
            return None;
        }
        Some(Arc::new(RunWatch {
            live: self.live.clone(),
            follow: self.follow.clone(),
        }))
    }

    /// A line on stderr, above the phase line when there is one.
    pub fn note(&self, line: &str) {
        match &self.live {
            Some(l) => l.println(line),
            None => hoist::errln!("{line}"),
        }
    }

    /// The run ended: the last phase's line stays, the phase line goes.
    pub fn finish(&self) {
        if let Some(l) = &self.live {
            l.done();
        }
        self.clear();
    }

    /// Clear the line (and stop following); again is harmless.
    fn clear(&self) {
        if let Some(f) = &self.follow {
            f.end();
        }
        if let Some(l) = &self.live {
            l.bar.finish_and_clear();
            *drawn() = None;
        }
    }
}

impl Drop for RunSpinner {
    /// An error ends the run early: its message must not follow a
    /// half-drawn line, nor claim the phase it ended in was done.
    fn drop(&mut self) {
        self.clear();
    }
}

/// What the run tells [`RunSpinner`].
struct RunWatch {
    live: Option<Arc<RunLine>>,
    follow: Option<Arc<Follow>>,
}

impl Watch for RunWatch {
    fn phase(&self, phase: Phase) {
        if let Some(l) = &self.live {
            l.enter(phase);
        }
    }

    fn logs(&self, logs: Logs<'_>) {
        let Some(f) = &self.follow else { return };
        match logs {
            Logs::Readable { base, rel } => f.start(base, rel),
            Logs::Ended => f.end(),
        }
    }
}

impl RunLine {
    /// Show `phase`, its time counted from now; the phase before it
    /// leaves its line.
    fn enter(&self, phase: Phase) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((before, since)) = *current {
            if before == phase {
                return;
            }
            self.println(&self.done_line(before, since.elapsed()));
        }
        let first = current.is_none();
        *current = Some((phase, Instant::now()));
        // Each setter draws: the old suffix goes first, so no frame pairs
        // one phase's words with another's log path; and the line ticks
        // once it has its first phase, so it is never drawn without one.
        if !first {
            self.bar.set_message("");
        }
        self.bar.reset_elapsed();
        self.bar.set_prefix(self.labels(phase).0);
        self.bar.set_message(self.suffix(phase));
        if first {
            self.bar.enable_steady_tick(TICK);
        }
    }

    /// The phase shown leaves its line.
    fn done(&self) {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((phase, since)) = current {
            self.println(&self.done_line(phase, since.elapsed()));
        }
    }

    fn done_line(&self, phase: Phase, took: Duration) -> String {
        format!(
            "{:<10} {}{}",
            self.labels(phase).1,
            compact(took),
            self.suffix(phase)
        )
    }

    /// What follows the time: where the agent's log goes.
    fn suffix(&self, phase: Phase) -> String {
        match phase {
            Phase::Agent => format!(" (agent.log: {})", self.agent_log),
            Phase::Install if self.container => format!(" (agent.log: {})", self.agent_log),
            _ => String::new(),
        }
    }

    /// Print above the bars. A terminal that cannot be written to has no
    /// reader to tell, and the run goes on without it.
    fn println(&self, line: &str) {
        if let Err(e) = self.multi.println(line) {
            tracing::debug!(error = %e, "could not print above the progress line");
        }
    }
}

impl RunLine {
    /// The phase line's words while `phase` runs, and the line it leaves
    /// once it is over.
    fn labels(&self, phase: Phase) -> (&'static str, &'static str) {
        match (phase, self.container) {
            (Phase::Pull, _) => ("pulling", "pulled"),
            (Phase::Fuse, false) => ("fusing", "fused"),
            (Phase::Fuse, true) => ("baking", "baked"),
            (Phase::Install, false) => ("installing", "installed"),
            (Phase::Install, true) => ("installing + agent running", "installed + agent ran"),
            (Phase::Agent, _) => ("agent running", "agent ran"),
            (Phase::Grade, _) => ("grading", "graded"),
        }
    }
}

/// A duration as podman and cargo print one: `12s`, `1m12s`, `1h02m03s`.
pub fn compact(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// `hoist run`'s line: `SPINNER LABEL TIME SUFFIX`, the time in the phase.
const RUN_TEMPLATE: &str = "{spinner} {prefix} {took}{msg}";

fn run_style() -> ProgressStyle {
    style(RUN_TEMPLATE).with_key("took", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        // A formatter that refuses a write has nowhere to show it.
        let _ = w.write_str(&compact(s.elapsed()));
    })
}

/// `hoist materialize`'s progress on a terminal (and not `--quiet` or
/// `--json`): the pull's bars, then `fusing layers 3/7 2s` while the
/// layers are unpacked (or found in the cache) and put in place, which
/// leaves `fused 7/7 layers 4s` when it is done. Nothing off a terminal.
pub struct LayerLine {
    live: Option<(MultiProgress, ProgressBar)>,
}

impl LayerLine {
    pub fn new(quiet: bool) -> LayerLine {
        LayerLine::with_target(on_terminal(quiet), ProgressDrawTarget::stderr())
    }

    fn with_target(draw: bool, target: ProgressDrawTarget) -> LayerLine {
        let live = draw.then(|| {
            let multi = MultiProgress::with_draw_target(target);
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(run_style());
            bar.set_prefix("pulling");
            bar.enable_steady_tick(TICK);
            *drawn() = Some(multi.clone());
            (multi, bar)
        });
        LayerLine { live }
    }

    /// The pull's progress: a bar per blob above the line.
    pub fn bars(&self) -> Arc<dyn Progress> {
        match &self.live {
            Some((multi, line)) => Arc::new(Bars {
                multi: multi.clone(),
                above: Some(line.clone()),
                bars: Mutex::new(HashMap::new()),
            }),
            None => Arc::new(NoProgress),
        }
    }

    /// A line on stderr, above the progress line when there is one.
    pub fn note(&self, line: &str) {
        match &self.live {
            Some((multi, _)) => {
                if let Err(e) = multi.println(line) {
                    tracing::debug!(error = %e, "could not print above the progress line");
                }
            }
            None => hoist::errln!("{line}"),
        }
    }

    /// How far the layers are; the first call starts the phase's clock.
    pub fn layers(&self, d: LayersDone) {
        let Some((_, bar)) = &self.live else { return };
        if bar.prefix() != "fusing layers" {
            bar.reset_elapsed();
            bar.set_prefix("fusing layers");
        }
        bar.set_message(format!(" {}/{}", d.done, d.total));
    }

    /// Leave the count and the time, clear the line.
    pub fn finish(&self) {
        let Some((multi, bar)) = &self.live else {
            return;
        };
        if bar.prefix() == "fusing layers" {
            let line = format!(
                "fused      {} layers {}",
                bar.message().trim_start(),
                compact(bar.elapsed())
            );
            if let Err(e) = multi.println(line) {
                tracing::debug!(error = %e, "could not print above the progress line");
            }
        }
        bar.finish_and_clear();
        *drawn() = None;
    }
}

impl Drop for LayerLine {
    fn drop(&mut self) {
        if let Some((_, bar)) = &self.live {
            bar.finish_and_clear();
            *drawn() = None;
        }
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
        Event::Retrying {
            task,
            after,
            stage,
            why,
        } => Some(format!(
            "{}: infrastructure error{} ({why}); again in {:.1} s",
            task.id,
            stage
                .map(|s| format!(" at {}", stage_name(s)))
                .unwrap_or_default(),
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
            (false, true) => {
                let live = Live::new(total, ProgressDrawTarget::stderr());
                *drawn() = Some(live.multi.clone());
                Board::Live(Arc::new(live))
            }
        };
        EvalBoard { mode }
    }

    /// Hear one of `hoist::eval::run_all`'s events.
    pub fn event(&self, e: &Event<'_>) {
        match &self.mode {
            Board::Quiet => {}
            Board::Plain => {
                if let Some(line) = event_line(e) {
                    hoist::errln!("{line}");
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
                Arc::new(move |p: Phase| live.phase(&id, p))
            }
            _ => Arc::new(|_: Phase| {}),
        }
    }

    /// Clear the bars (the printed lines stay), before the summary is
    /// printed; again is harmless.
    pub fn finish(&self) {
        if let Board::Live(live) = &self.mode {
            live.finish();
            *drawn() = None;
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

/// The overall line of `hoist eval`.
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
            stage: Some(Stage::Pull),
            why: "no space left".into(),
        });
        assert_eq!(
            retry.as_deref(),
            Some("ini-quoted-values: infrastructure error at pull (no space left); again in 2.5 s")
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
        board.hook("a").phase(Phase::Agent);
        board.hook("gone").phase(Phase::Grade);
        assert_eq!(line("a").unwrap().message(), "agent");
        assert_eq!(line("a-longer-id").unwrap().message(), "start");

        board.event(&Event::Retrying {
            task: &a,
            after: Duration::from_secs(1),
            stage: None,
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
        board.hook(&t.id).phase(Phase::Agent);
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
    fn durations_read_as_podman_prints_them() {
        let d = Duration::from_secs;
        assert_eq!(compact(Duration::from_millis(400)), "0s");
        assert_eq!(compact(d(12)), "12s");
        assert_eq!(compact(d(72)), "1m12s");
        assert_eq!(compact(d(3723)), "1h02m03s");
    }

    #[test]
    fn a_run_leaves_a_line_per_phase_and_names_the_agent_log() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let spinner = RunSpinner::with_target(true, Path::new("/r/out"), (false, false), target);
        let hook = spinner.hook().unwrap();
        for p in [Phase::Pull, Phase::Fuse, Phase::Install, Phase::Agent] {
            hook.phase(p);
        }
        hook.phase(Phase::Agent);
        assert!(
            screen.shows("agent running 0s (agent.log: /r/out/task/agent.log)"),
            "{screen:?}"
        );
        hook.phase(Phase::Grade);
        spinner.finish();
        let lines = screen.0.lock().unwrap().clone();
        let left: Vec<&String> = lines
            .iter()
            .filter(|l| !l.starts_with(|c: char| !c.is_ascii_alphabetic()))
            .collect();
        assert_eq!(
            left,
            [
                "pulled     0s",
                "fused      0s",
                "installed  0s",
                "agent ran  0s (agent.log: /r/out/task/agent.log)",
                "graded     0s"
            ],
            "{lines:?}"
        );
    }

    #[test]
    fn off_a_terminal_a_run_has_no_hook_unless_it_follows() {
        let out = Path::new("/r/out");
        let target = ProgressDrawTarget::hidden;
        assert!(
            RunSpinner::with_target(false, out, (false, false), target())
                .hook()
                .is_none()
        );
        assert!(RunSpinner::with_target(false, out, (true, false), target())
            .hook()
            .is_some());
    }

    #[test]
    fn materialize_leaves_the_layer_count() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let line = LayerLine::with_target(true, target);
        for done in 0..=3 {
            line.layers(LayersDone { done, total: 3 });
        }
        line.finish();
        assert!(screen.shows("fused      3/3 layers 0s"), "{screen:?}");
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
            board.hook("a").phase(Phase::Fuse);
            board.finish();
        }
    }
}
