//! The phases of one task run as the host sees them begin, for live
//! progress: `hoist run`'s spinner and `hoist eval`'s board (both in the
//! CLI, which alone prints). The library only calls a [`PhaseHook`]; it
//! never waits on it and never fails because of it.
//!
//! Where each phase begins (docs/pipeline.md):
//! - [`Phase::Pull`]: the caller's pull of the axes (the CLI's).
//! - [`Phase::Fuse`]: crane mode materializing the agent session's rootfs
//!   (and the gateway's tree); container mode baking and loading the
//!   combination image, its counterpart.
//! - [`Phase::Install`]: the agent session's sandbox (or container)
//!   starts; the supervisor runs `install.sh`, then starts the gateway.
//! - [`Phase::Agent`]: crane mode sees the supervisor create
//!   `/output/task/agent.log` in the session's private output, which it
//!   does just before it starts the agent. Container mode cannot see
//!   inside the container while it runs, so it shows `install` for the
//!   whole agent session.
//! - [`Phase::Grade`]: the grading session begins (its fresh rootfs
//!   included).
//!
//! A [`Watch`] also hears where the agent session's `install.log` and
//! `agent.log` can be read ([`Logs`]), for `hoist run --follow`.

use std::path::Path;
use std::sync::Arc;

/// One phase of a task run, in the order a run goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Pull,
    Fuse,
    Install,
    Agent,
    Grade,
}

impl Phase {
    /// As the progress display names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pull => "pull",
            Phase::Fuse => "fuse",
            Phase::Install => "install",
            Phase::Agent => "agent",
            Phase::Grade => "grade",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run tells its display: each phase as it begins, and where the
/// agent session's logs can be read. Called on the run's own thread (and,
/// for [`Phase::Agent`] in crane mode, from a watcher thread), so
/// [`Watch::phase`] must be cheap: record the phase and return. A closure
/// `Fn(Phase)` is a watch that hears the phases only.
pub trait Watch: Send + Sync {
    fn phase(&self, phase: Phase);

    /// The agent session's `/output/task` (where the supervisor writes
    /// `install.log` and `agent.log`) can be read, or can no longer be.
    /// The default ignores it.
    fn logs(&self, _logs: Logs<'_>) {}
}

impl<F: Fn(Phase) + Send + Sync> Watch for F {
    fn phase(&self, phase: Phase) {
        self(phase)
    }
}

/// Where the agent session's logs are, for `hoist run --follow`. What is
/// in them is the sandbox's, untrusted: a display opens them beneath
/// `base` without following a link, and never writes their bytes to a
/// terminal as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logs<'a> {
    /// The directory `rel` beneath `base` holds the logs, or will once the
    /// supervisor makes it. Crane mode tells this as the agent session's
    /// sandbox starts: the logs grow there while it runs (`base` is a
    /// directory only the host made: the session's private output, or in
    /// chroot isolation the rootfs copy). Container mode tells it once the
    /// session has ended and its output was copied into `OUT/task`: Docker
    /// keeps the container's `/output` to itself until then.
    Readable { base: &'a Path, rel: &'a str },
    /// The session has ended: what the logs hold now is all they will
    /// hold. A display may take until it has read the rest to return; the
    /// directory is left in place until then.
    Ended,
}

/// Told when each phase of a run begins, and where its logs are.
pub type PhaseHook = Arc<dyn Watch>;

/// Tell `hook`, if any, that `phase` begins. A hook that panics is a bug
/// of the display, not of the run: the panic is caught here so the run
/// (its sandbox, its result.json) goes on.
pub fn enter(hook: Option<&PhaseHook>, phase: Phase) {
    let Some(hook) = hook else { return };
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.phase(phase)));
    if called.is_err() {
        tracing::debug!(phase = phase.as_str(), "the progress hook panicked");
    }
}

/// Tell `hook`, if any, where the logs are (see [`Logs`]); a panic is
/// caught as [`enter`] catches it.
pub fn logs(hook: Option<&PhaseHook>, logs: Logs<'_>) {
    let Some(hook) = hook else { return };
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.logs(logs)));
    if called.is_err() {
        tracing::debug!(?logs, "the progress hook panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn enter_calls_the_hook_with_the_phase() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let hook: PhaseHook = Arc::new(move |p: Phase| s.lock().unwrap().push(p));
        enter(Some(&hook), Phase::Fuse);
        enter(None, Phase::Agent);
        enter(Some(&hook), Phase::Grade);
        assert_eq!(*seen.lock().unwrap(), [Phase::Fuse, Phase::Grade]);
    }

    #[test]
    fn a_panicking_hook_does_not_reach_the_run() {
        let hook: PhaseHook = Arc::new(|_: Phase| panic!("display bug"));
        enter(Some(&hook), Phase::Install);
        struct Bad;
        impl Watch for Bad {
            fn phase(&self, _: Phase) {}
            fn logs(&self, _: Logs<'_>) {
                panic!("display bug")
            }
        }
        let hook: PhaseHook = Arc::new(Bad);
        logs(Some(&hook), Logs::Ended);
    }

    #[test]
    fn a_closure_hears_no_logs() {
        let hook: PhaseHook = Arc::new(|_: Phase| {});
        logs(Some(&hook), Logs::Ended);
        logs(None, Logs::Ended);
    }

    #[test]
    fn names() {
        let all = [
            Phase::Pull,
            Phase::Fuse,
            Phase::Install,
            Phase::Agent,
            Phase::Grade,
        ];
        let names: Vec<_> = all.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["pull", "fuse", "install", "agent", "grade"]);
    }
}
