//! The supervisor's children: starting them in their own process group
//! with exactly the environment given, waiting with deadlines, and
//! stopping a whole group (TERM, a grace period, KILL).
//!
//! All waiting goes through one [`Reaper`] that collects *every* child
//! that exits, because the supervisor may be PID 1 of a pid namespace (and
//! is a child subreaper otherwise): processes orphaned by the agent are
//! reparented to it and must be reaped or they stay zombies, which would
//! still count as alive to kill(2).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

use crate::confine::wait::wait_for_exit;

/// How often the waiting loops look again. Short enough that a timeout
/// ends within a few tens of milliseconds of its deadline.
pub const POLL: Duration = Duration::from_millis(10);

/// The pause between two polls: 250 µs at first, doubling up to [`POLL`],
/// so a wait that ends at once costs well under a millisecond and a long
/// one (an agent running for minutes) wakes only every 10 ms.
pub struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Backoff {
        Backoff(Duration::from_micros(250))
    }

    pub fn nap(&mut self) {
        std::thread::sleep(self.next_pause());
    }

    /// The pause to take now; the next one is twice as long, up to POLL.
    pub fn next_pause(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(POLL);
        now
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// How long to wait for a SIGKILLed process to be reaped before moving on.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The exit code a shell would report: the code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// A child that ran to its end or was stopped at its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub exit: Exit,
    pub timed_out: bool,
}

impl Finished {
    /// The recorded exit code: 124 for a timeout, as timeout(1) reports.
    pub fn code(self) -> i32 {
        if self.timed_out {
            124
        } else {
            self.exit.code()
        }
    }
}

/// Collects exit statuses of all children; remembers those it was told to
/// track and drops the rest (orphans reparented to the supervisor).
#[derive(Debug, Default)]
pub struct Reaper {
    tracked: HashSet<i32>,
    done: HashMap<i32, Exit>,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    pub fn track(&mut self, pid: i32) {
        self.tracked.insert(pid);
    }

    /// Reap every child that has exited, without blocking.
    pub fn poll(&mut self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let pid = pid.as_raw_nonzero().get();
                    let exit = match (status.exit_status(), status.terminating_signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(s)) => Exit::Signal(s),
                        // Stopped or continued: not reported without
                        // WUNTRACED/WCONTINUED; nothing to record.
                        (None, None) => continue,
                    };
                    if self.tracked.remove(&pid) {
                        self.done.insert(pid, exit);
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                // None: children remain but none has exited; ECHILD: no
                // children at all. Either way there is nothing to reap.
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// The exit of `pid`, if it has been reaped.
    pub fn take(&mut self, pid: i32) -> Option<Exit> {
        self.done.remove(&pid)
    }

    /// Wait for `pid` to exit, until `deadline`.
    pub fn wait_until(&mut self, pid: i32, deadline: Instant) -> Option<Exit> {
        let mut backoff = Backoff::new();
        loop {
            self.poll();
            if let Some(e) = self.take(pid) {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // Woken the moment it exits; polling (as when pidfds are
            // unavailable) still reaps the orphans every POLL.
            if !wait_for_exit(pid, (deadline - now).min(POLL)) {
                backoff.nap();
            }
        }
    }
}

/// What to start and how.
#[derive(Debug)]
pub struct Spec<'a> {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The whole environment of the child; nothing is inherited.
    pub env: Vec<(&'static str, OsString)>,
    pub cwd: PathBuf,
    /// Receives stderr, and stdout unless `stdout` is given.
    pub log: &'a File,
    /// Receives stdout, when it is not the log (the patch of the workdir).
    pub stdout: Option<&'a File>,
    pub stdin: Stdio,
    /// Run as this uid and gid, with no supplementary groups.
    pub user: Option<(u32, u32)>,
}

/// Start `spec` as the leader of a new process group; returns its pid,
/// which is also the group id.
pub fn spawn(spec: Spec<'_>, reaper: &mut Reaper) -> std::io::Result<i32> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(spec.stdin)
        .stdout(spec.stdout.unwrap_or(spec.log).try_clone()?)
        .stderr(spec.log.try_clone()?)
        .process_group(0);
    if let Some((uid, gid)) = spec.user {
        // std drops supplementary groups (setgroups(0)) before setuid
        // when the parent is root and no groups are given.
        cmd.uid(uid).gid(gid);
    }
    let child = cmd.spawn()?;
    // The Child handle is dropped unwaited on purpose: the Reaper owns
    // all waiting, and dropping a Child neither kills nor reaps it.
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    reaper.track(pid);
    Ok(pid)
}

/// Wait for the group leader `pid` until `deadline`; past it, stop the
/// whole group. Once the leader is gone, whatever it left in its group is
/// killed too.
pub fn run_to_deadline(
    reaper: &mut Reaper,
    pid: i32,
    deadline: Instant,
    grace: Duration,
) -> Finished {
    match reaper.wait_until(pid, deadline) {
        Some(exit) => {
            signal_group(pid, Signal::KILL);
            Finished {
                exit,
                timed_out: false,
            }
        }
        None => Finished {
            exit: terminate_group(reaper, pid, grace),
            timed_out: true,
        },
    }
}

/// SIGTERM the group of `pgid`, give it `grace` to go, then SIGKILL it.
/// Returns how the leader ended.
pub fn terminate_group(reaper: &mut Reaper, pgid: i32, grace: Duration) -> Exit {
    signal_group(pgid, Signal::TERM);
    let deadline = Instant::now() + grace;
    let mut exit = None;
    let mut backoff = Backoff::new();
    loop {
        reaper.poll();
        exit = exit.or_else(|| reaper.take(pgid));
        if (exit.is_some() && group_is_empty(pgid)) || Instant::now() >= deadline {
            break;
        }
        backoff.nap();
    }
    signal_group(pgid, Signal::KILL);
    exit.or_else(|| reaper.wait_until(pgid, Instant::now() + KILL_WAIT))
        // Unreaped after SIGKILL (stuck in the kernel): it can run no more
        // user code, so report the kill and go on rather than hang.
        .unwrap_or(Exit::Signal(Signal::KILL.as_raw()))
}

fn signal_group(pgid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pgid) {
        // ESRCH (the group is already gone) is the outcome wanted.
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

fn group_is_empty(pgid: i32) -> bool {
    Pid::from_raw(pgid)
        .is_none_or(|p| rustix::process::test_kill_process_group(p) == Err(rustix::io::Errno::SRCH))
}

/// stdin for a child: `/dev/null` of the root when it is the device, else
/// the read end of a pipe whose write end is already closed (EOF at once).
pub fn null_stdin(dev_null: &Path) -> std::io::Result<Stdio> {
    let is_device = std::fs::metadata(dev_null).is_ok_and(|m| m.file_type().is_char_device());
    if is_device {
        if let Ok(f) = File::open(dev_null) {
            return Ok(Stdio::from(f));
        }
    }
    let (read, _write) = rustix::pipe::pipe()?;
    Ok(Stdio::from(read))
}

/// Whether this process is the init of its pid namespace.
pub fn is_pid1() -> bool {
    rustix::process::getpid() == Pid::INIT
}

/// As PID 1 of the sandbox's pid namespace, kill every other process in
/// it (they can only be leftovers: root processes of install.sh or the
/// gateway that left their group). Does nothing unless PID 1, where
/// kill(-1) is confined to the namespace; elsewhere it would reach the
/// host (see [`super::killuid::Scope`]). Returns whether the namespace is
/// empty but for the supervisor.
pub fn sweep_namespace(reaper: &mut Reaper, timeout: Duration) -> bool {
    if !is_pid1() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new();
    loop {
        // Errors: ESRCH, nothing left; nothing else can fail for root.
        let _ = rustix::process::kill_process_group(Pid::INIT, Signal::KILL);
        reaper.poll();
        // As PID 1, kill(-1, 0) finds no target only when no other process
        // exists at all, zombies included; so ESRCH means all reaped.
        if rustix::process::test_kill_process_group(Pid::INIT) == Err(rustix::io::Errno::SRCH) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        backoff.nap();
    }
}

/// Make the supervisor the reaper of orphans from its descendants, so
/// that when it is not PID 1 (chroot mode, tests) they still come back to
/// it to be reaped.
pub fn become_subreaper() -> std::io::Result<()> {
    Ok(rustix::process::set_child_subreaper(Some(
        rustix::process::getpid(),
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(9).code(), 137);
        let f = Finished {
            exit: Exit::Signal(15),
            timed_out: true,
        };
        assert_eq!(f.code(), 124);
        let f = Finished {
            exit: Exit::Code(0),
            timed_out: false,
        };
        assert_eq!(f.code(), 0);
    }

    #[test]
    fn missing_dev_null_gives_an_empty_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let stdin = null_stdin(&dir.path().join("dev/null")).unwrap();
        let out = Command::new("cat").stdin(stdin).output().unwrap();
        assert!(out.status.success());
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn regular_file_as_dev_null_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("null");
        std::fs::write(&fake, "secret").unwrap();
        let out = Command::new("cat")
            .stdin(null_stdin(&fake).unwrap())
            .output()
            .unwrap();
        assert!(out.stdout.is_empty());
    }
}
