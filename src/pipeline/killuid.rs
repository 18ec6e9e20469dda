//! Killing every process of the agent user (DESIGN §3 step 6), without
//! depending on `/proc` (chroot mode has none) and without fork.
//!
//! A helper *thread* drops its own credentials to the agent uid (on Linux,
//! credentials are per thread and rustix's setresuid is the raw per-thread
//! syscall) and calls kill(-1, SIGKILL): the kernel then signals exactly
//! the processes that uid may signal, which are the agent's. kill(-1)
//! never signals the caller's own thread group, so the supervisor is safe;
//! in a pid namespace it is confined to the namespace. Each pass runs
//! under the tasklist lock, and fork checks for a pending fatal signal
//! under that same lock, so a pass cannot be outrun by a fork; passes are
//! repeated anyway.
//!
//! Knowing that the processes are *gone* needs more than kill(2): Linux
//! answers kill(-1, 0) with success whenever any other process exists,
//! permitted or not, so it cannot say "none of this uid left". When a real
//! procfs is mounted (namespace mode) it is scanned until no live process
//! of the uid remains; without one, a fixed number of passes is made.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, Uid};

use super::process::{Backoff, Reaper};

/// Passes of kill(-1, SIGKILL) made before the processes are looked for.
const MIN_PASSES: usize = 3;
/// How long to go on killing when /proc cannot tell whether any is left.
const BLIND_KILL: std::time::Duration = std::time::Duration::from_millis(50);

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
}

/// Kill every process of `uid` and wait, up to `timeout`, until none is
/// alive. `proc_dir` is where procfs would be; it is used only if it is
/// one. The reaper keeps reaping meanwhile, since the killed processes may
/// be the supervisor's children or orphans reparented to it.
pub fn kill_user_processes(
    uid: u32,
    proc_dir: &Path,
    reaper: &mut Reaper,
    timeout: Duration,
) -> Result<(), KillError> {
    let procfs = is_procfs(proc_dir);
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
        let enough = procfs || started.elapsed() >= BLIND_KILL;
        if passes.load(Ordering::SeqCst) >= MIN_PASSES && enough {
            survivors = if procfs {
                live_pids_of(proc_dir, uid)
            } else {
                Vec::new()
            };
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

/// Whether `dir` is a mounted procfs (not an image's empty or forged dir).
fn is_procfs(dir: &Path) -> bool {
    rustix::fs::statfs(dir).is_ok_and(|s| s.f_type == rustix::fs::PROC_SUPER_MAGIC)
}

/// Pids in `proc_dir` of live (not zombie) processes with `uid` as any of
/// their real, effective, saved or filesystem uids.
fn live_pids_of(proc_dir: &Path, uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A process that exits between readdir and this read is gone:
        // exactly the outcome wanted, so a failed read is not an error.
        if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
            if status_is_live_of(&status, uid) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids
}

/// From a `/proc/PID/status` text: alive (state not Z or X) and owned by
/// `uid` in any of the four uid slots.
pub fn status_is_live_of(status: &str, uid: u32) -> bool {
    let mut live = true;
    let mut owned = false;
    for line in status.lines() {
        if let Some(state) = line.strip_prefix("State:") {
            live = !matches!(state.trim_start().chars().next(), Some('Z' | 'X'));
        } else if let Some(ids) = line.strip_prefix("Uid:") {
            owned = ids.split_whitespace().any(|id| id.parse() == Ok(uid));
        }
    }
    live && owned
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLEEPING: &str = "Name:\tsleep\nState:\tS (sleeping)\nTgid:\t42\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";

    #[test]
    fn sleeping_agent_process_is_live() {
        assert!(status_is_live_of(SLEEPING, 1000));
    }

    #[test]
    fn other_uid_is_not_ours() {
        assert!(!status_is_live_of(SLEEPING, 1001));
        assert!(!status_is_live_of(&SLEEPING.replace("1000", "0"), 1000));
    }

    #[test]
    fn zombie_is_not_live() {
        let z = SLEEPING.replace("S (sleeping)", "Z (zombie)");
        assert!(!status_is_live_of(&z, 1000));
    }

    #[test]
    fn dead_is_not_live() {
        let x = SLEEPING.replace("S (sleeping)", "X (dead)");
        assert!(!status_is_live_of(&x, 1000));
    }

    #[test]
    fn saved_uid_alone_counts() {
        let s = SLEEPING.replace("Uid:\t1000\t1000\t1000\t1000", "Uid:\t0\t0\t1000\t0");
        assert!(status_is_live_of(&s, 1000));
    }

    #[test]
    fn uid_prefix_is_not_a_match() {
        let s = SLEEPING.replace(
            "Uid:\t1000\t1000\t1000\t1000",
            "Uid:\t10000\t10000\t10000\t10000",
        );
        assert!(!status_is_live_of(&s, 1000));
    }

    #[test]
    fn empty_status_is_not_live_of_anyone() {
        assert!(!status_is_live_of("", 1000));
    }

    #[test]
    fn a_plain_dir_is_not_procfs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_procfs(dir.path()));
    }
}
