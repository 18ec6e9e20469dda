//! Waiting for a child to exit without polling: a pidfd becomes readable
//! when its process ends. Used by the supervisor's reaper and by the host
//! side waiting for the sandbox stage.

use std::time::Duration;

use rustix::process::Pid;

/// Block until process `pid` (a child not yet reaped) exits or `timeout`
/// passes, through a pidfd; `false` when no pidfd can be had (Linux before
/// 5.3, or a seccomp profile that refuses it) and the caller must poll.
pub fn wait_for_exit(pid: i32, timeout: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let Some(p) = Pid::from_raw(pid) else {
        return false;
    };
    let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else {
        return false;
    };
    let timeout = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    // EINTR or a timeout: the caller looks again either way.
    let _ = poll(&mut fds, Some(&timeout));
    true
}
