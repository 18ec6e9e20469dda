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

/// Told when each phase of a run begins. Called on the run's own thread
/// (and, for [`Phase::Agent`] in crane mode, from a watcher thread), so it
/// must be cheap: record the phase and return.
pub type PhaseHook = Arc<dyn Fn(Phase) + Send + Sync>;

/// Tell `hook`, if any, that `phase` begins. A hook that panics is a bug
/// of the display, not of the run: the panic is caught here so the run
/// (its sandbox, its result.json) goes on.
pub fn enter(hook: Option<&PhaseHook>, phase: Phase) {
    let Some(hook) = hook else { return };
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(phase)));
    if called.is_err() {
        tracing::debug!(phase = phase.as_str(), "the progress hook panicked");
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
        let hook: PhaseHook = Arc::new(move |p| s.lock().unwrap().push(p));
        enter(Some(&hook), Phase::Fuse);
        enter(None, Phase::Agent);
        enter(Some(&hook), Phase::Grade);
        assert_eq!(*seen.lock().unwrap(), [Phase::Fuse, Phase::Grade]);
    }

    #[test]
    fn a_panicking_hook_does_not_reach_the_run() {
        let hook: PhaseHook = Arc::new(|_| panic!("display bug"));
        enter(Some(&hook), Phase::Install);
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
