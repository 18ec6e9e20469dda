//! Ending the run's processes (docs/pipeline.md step 6, and the sweeps around
//! it) without ever signalling a process that is not the run's.
//!
//! Which processes are the run's depends on where the supervisor is
//! ([`Scope`]):
//!
//! - **PID 1 of a pid namespace** (namespaces isolation, container mode):
//!   everything in the namespace is the run's, and kill(-1) cannot reach
//!   past it. A helper *thread* drops its own credentials to the agent uid
//!   (on Linux, credentials are per thread and rustix's setresuid is the
//!   raw per-thread syscall) and calls kill(-1, SIGKILL): the kernel then
//!   signals exactly the processes that uid may signal, which are the
//!   agent's, and never the caller's own thread group. Each pass runs under
//!   the tasklist lock, and fork checks for a pending fatal signal under
//!   that same lock, so a pass cannot be outrun by a fork; passes are
//!   repeated anyway. Linux answers kill(-1, 0) with success whenever any
//!   other process exists, so when a procfs is mounted it is scanned until
//!   no live process of the uid remains; without one, passes are made for
//!   a fixed time.
//! - **Not PID 1** (chroot isolation, the tests): the pid namespace is
//!   shared with other runs and other users, and uid 1000 there is theirs
//!   too; kill(-1) as uid 1000 would end a concurrent run's agent. The
//!   run's processes are the supervisor's descendants (it is a child
//!   subreaper, so nothing it started can leave its tree), read from a
//!   procfs of the namespace ([`Procfs`], opened before the chroot), each
//!   SIGKILLed through a pidfd after checking it is still the process
//!   found, until none is left.
//! - **Neither**: nothing is killed; the run fails with an infra error
//!   rather than signal processes that may not be its own.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, Uid};

use super::process::{self, Backoff, Reaper};
use crate::confine::procfs::{descendants, ProcStatus, Procfs};

/// Passes of kill(-1, SIGKILL) made before the processes are looked for.
const MIN_PASSES: usize = 3;
/// How long to go on killing when /proc cannot tell whether any is left.
const BLIND_KILL: std::time::Duration = std::time::Duration::from_millis(50);

/// Which processes the supervisor may take to be the run's.
#[derive(Debug)]
pub enum Scope {
    /// PID 1 of a pid namespace: all of it; with its procfs, when one is
    /// mounted, to confirm the processes are gone.
    Namespace(Option<Procfs>),
    /// A shared pid namespace: the supervisor's descendants.
    Descendants(Procfs),
    /// A shared pid namespace with no procfs to read it from.
    Unknown { why: String },
}

impl Scope {
    /// The scope of this process: PID 1 (with the procfs at `proc_dir`,
    /// if it is one) or not; if not, `procfs` (the one the chroot stage
    /// handed down) or else this process's `/proc`.
    pub fn detect(proc_dir: &Path, procfs: Option<std::io::Result<Procfs>>) -> Scope {
        if process::is_pid1() {
            return Scope::Namespace(Procfs::open(proc_dir).ok());
        }
        match procfs.unwrap_or_else(|| Procfs::open(Path::new("/proc"))) {
            Ok(p) => Scope::Descendants(p),
            Err(e) => Scope::Unknown {
                why: format!("no procfs of this pid namespace: {e}"),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error(
        "cannot take on uid {uid} to signal its processes (is it mapped in the user namespace?)"
    )]
    SetUid { uid: u32, source: std::io::Error },
    #[error("cannot start the thread that kills uid {uid}'s processes")]
    Thread { uid: u32, source: std::io::Error },
    #[error("processes of uid {uid} survived SIGKILL for {secs} s: pids {pids:?}")]
    Survivors { uid: u32, secs: u64, pids: Vec<i32> },
    #[error(
        "cannot tell the run's processes of uid {uid} from other runs' ({why}); \
         not killing every process of uid {uid} in a shared pid namespace"
    )]
    NoScope { uid: u32, why: String },
}

/// Kill every process of `uid` that is the run's, and wait, up to
/// `timeout`, until none is alive. The reaper keeps reaping meanwhile,
/// since the killed processes may be the supervisor's children or orphans
/// reparented to it.
pub fn kill_user_processes(
    uid: u32,
    scope: &Scope,
    reaper: &mut Reaper,
    timeout: Duration,
) -> Result<(), KillError> {
    match scope {
        Scope::Namespace(procfs) => kill_uid_in_namespace(uid, procfs.as_ref(), reaper, timeout),
        Scope::Descendants(procfs) => {
            let survivors = end_descendants(procfs, reaper, timeout, &|s| s.has_uid(uid));
            none_survived(uid, timeout, survivors)
        }
        Scope::Unknown { why } => Err(KillError::NoScope {
            uid,
            why: why.clone(),
        }),
    }
}

/// Kill every process of the run but the supervisor: leftovers of
/// `install.sh`, the gateway or the grader, whatever their uid. Returns
/// whether none is left.
pub fn sweep(scope: &Scope, reaper: &mut Reaper, timeout: Duration) -> bool {
    match scope {
        Scope::Namespace(_) => process::sweep_namespace(reaper, timeout),
        Scope::Descendants(procfs) => {
            end_descendants(procfs, reaper, timeout, &|_| true).is_empty()
        }
        Scope::Unknown { .. } => false,
    }
}

/// SIGKILL the live descendants of this process that `keep` selects,
/// pass after pass, until none is left or `timeout` passes; returns the
/// pids still alive then.
fn end_descendants(
    procfs: &Procfs,
    reaper: &mut Reaper,
    timeout: Duration,
    keep: &dyn Fn(&ProcStatus) -> bool,
) -> Vec<i32> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new();
    loop {
        reaper.poll();
        // A table that cannot be read twice running (never seen for a
        // procfs) is reported as a survivor of unknown pid, -1: not
        // knowing is never success.
        let table = match procfs.table().or_else(|_| procfs.table()) {
            Ok(t) => t,
            Err(_) => return vec![-1],
        };
        let family: HashSet<i32> = descendants(&table, me);
        let mut targets: Vec<i32> = table
            .iter()
            .filter(|s| s.live && family.contains(&s.pid) && keep(s))
            .map(|s| s.pid)
            .collect();
        if targets.is_empty() {
            return targets;
        }
        if Instant::now() >= deadline {
            targets.sort_unstable();
            return targets;
        }
        for &pid in &targets {
            procfs.kill_if_still(pid, me, &family, keep);
        }
        backoff.nap();
    }
}

/// As PID 1: kill(-1) as `uid` from a helper thread; see the module doc.
fn kill_uid_in_namespace(
    uid: u32,
    procfs: Option<&Procfs>,
    reaper: &mut Reaper,
    timeout: Duration,
) -> Result<(), KillError> {
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicUsize::new(0));
    let alone = Arc::new(AtomicBool::new(false));
    let killer = {
        let (stop, passes, alone) = (stop.clone(), passes.clone(), alone.clone());
        std::thread::Builder::new()
            .name("kill-uid".into())
            .spawn(move || kill_loop(uid, &stop, &passes, &alone))
            .map_err(|source| KillError::Thread { uid, source })?
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut survivors = Vec::new();
    let mut backoff = Backoff::new();
    while !killer.is_finished() {
        reaper.poll();
        if alone.load(Ordering::SeqCst) {
            break;
        }
        // Without /proc nothing can confirm the processes are gone: keep
        // killing for BLIND_KILL so SIGKILLed processes have exited.
        let enough = procfs.is_some() || started.elapsed() >= BLIND_KILL;
        if passes.load(Ordering::SeqCst) >= MIN_PASSES && enough {
            survivors = procfs.map(|p| live_pids_of(p, uid)).unwrap_or_default();
            if survivors.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
        backoff.nap();
    }
    stop.store(true, Ordering::SeqCst);
    // Wake it from its pause, so the join does not wait that out.
    killer.thread().unpark();
    let outcome = match killer.join() {
        Ok(r) => r.map_err(|source| KillError::SetUid { uid, source }),
        // The thread only makes syscalls; a panic there is a bug, but the
        // processes may still be alive, so it is not success.
        Err(_) => Err(KillError::SetUid {
            uid,
            source: std::io::Error::other("the kill thread panicked"),
        }),
    };
    reaper.poll();
    outcome?;
    none_survived(uid, timeout, survivors)
}

/// Ok when `survivors` is empty, else the error naming them.
fn none_survived(uid: u32, timeout: Duration, survivors: Vec<i32>) -> Result<(), KillError> {
    if survivors.is_empty() {
        Ok(())
    } else {
        Err(KillError::Survivors {
            uid,
            secs: timeout.as_secs(),
            pids: survivors,
        })
    }
}

/// The helper thread: become `uid` (this thread only), then kill(-1,
/// SIGKILL) until told to stop, or until no other process exists at all
/// (`alone`).
fn kill_loop(
    uid: u32,
    stop: &AtomicBool,
    passes: &AtomicUsize,
    alone: &AtomicBool,
) -> std::io::Result<()> {
    let u = Uid::from_raw(uid);
    rustix::thread::set_thread_res_uid(u, u, u)?;
    let mut backoff = Backoff::new();
    while !stop.load(Ordering::SeqCst) {
        // kill(-1) fails with ESRCH only when no process but init and the
        // caller's own exists, zombies included (the supervisor, reaping,
        // is both here): nothing of the uid can be left, nor start again.
        // EPERM is never returned for -1.
        let r = rustix::process::kill_process_group(Pid::INIT, Signal::KILL);
        passes.fetch_add(1, Ordering::SeqCst);
        if r == Err(rustix::io::Errno::SRCH) {
            alone.store(true, Ordering::SeqCst);
            break;
        }
        // Parked, not slept: the supervisor unparks it to stop.
        std::thread::park_timeout(backoff.next_pause());
    }
    Ok(())
}

/// Pids of the live processes with `uid` as any of their real,
/// effective, saved or filesystem uids.
fn live_pids_of(procfs: &Procfs, uid: u32) -> Vec<i32> {
    // Unreadable: report none left rather than wait the timeout out; the
    // namespace dies with PID 1 anyway.
    let mut pids: Vec<i32> = procfs
        .table()
        .unwrap_or_default()
        .iter()
        .filter(|s| s.live && s.has_uid(uid))
        .map(|s| s.pid)
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_not_pid1_takes_its_descendants() {
        let scope = Scope::detect(Path::new("/nonexistent"), None);
        assert!(matches!(scope, Scope::Descendants(_)), "{scope:?}");
    }

    #[test]
    fn without_a_procfs_the_scope_is_unknown_and_nothing_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let scope = Scope::detect(dir.path(), Some(Procfs::open(dir.path())));
        assert!(matches!(scope, Scope::Unknown { .. }), "{scope:?}");
        let mut reaper = Reaper::new();
        let err = kill_user_processes(1000, &scope, &mut reaper, Duration::ZERO).unwrap_err();
        assert!(
            err.to_string()
                .contains("not killing every process of uid 1000"),
            "{err}"
        );
        assert!(!sweep(&scope, &mut reaper, Duration::ZERO));
    }
}
