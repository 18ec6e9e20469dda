//! The process table of the supervisor's pid namespace, read from procfs
//! through a directory descriptor, so that a supervisor chrooted into a
//! tree with no `/proc` (chroot mode) still sees it.
//!
//! When the supervisor is not PID 1 of a pid namespace of its own, other
//! runs and other users share the namespace with it: "every process of uid
//! 1000" is no longer the run's. What is the run's is the supervisor's
//! descendants. The supervisor is a child subreaper, so a process the
//! agent leaves behind (double fork, `setsid`, `nohup`) is reparented to
//! it, or to a descendant, and never leaves that tree.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};

/// A procfs directory known to show this process's own pid namespace.
#[derive(Debug)]
pub struct Procfs(OwnedFd);

/// What one `/proc/PID/status` says that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStatus {
    pub pid: i32,
    pub ppid: i32,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Not a zombie (`Z`) nor dead (`X`).
    pub live: bool,
}

impl ProcStatus {
    /// Parse the text of `/proc/PID/status`; `None` when a field is
    /// missing or malformed.
    pub fn parse(pid: i32, text: &str) -> Option<ProcStatus> {
        let (mut ppid, mut uids, mut live) = (None, None, None);
        for line in text.lines() {
            if let Some(state) = line.strip_prefix("State:") {
                live = Some(!matches!(
                    state.trim_start().chars().next(),
                    Some('Z' | 'X')
                ));
            } else if let Some(p) = line.strip_prefix("PPid:") {
                ppid = p.trim().parse().ok();
            } else if let Some(ids) = line.strip_prefix("Uid:") {
                let ids: Vec<u32> = ids
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                uids = ids.try_into().ok();
            }
        }
        Some(ProcStatus {
            pid,
            ppid: ppid?,
            uids: uids?,
            live: live?,
        })
    }

    /// Whether `uid` is any of its four uids.
    pub fn has_uid(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }
}

impl Procfs {
    /// `dir`, when it is a procfs showing this process's pid namespace.
    pub fn open(dir: &Path) -> std::io::Result<Procfs> {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Procfs::check(fd)
    }

    /// A descriptor inherited across exec (chroot mode opens `/proc`
    /// before the chroot), taken with [`crate::sys::take_inherited_fd`],
    /// which marks it close-on-exec so no child of the supervisor inherits
    /// a way out of the chroot.
    pub fn inherited(fd: RawFd) -> std::io::Result<Procfs> {
        Procfs::check(crate::sys::take_inherited_fd(fd)?)
    }

    fn check(fd: OwnedFd) -> std::io::Result<Procfs> {
        let fs = rustix::fs::fstatfs(&fd)?;
        if fs.f_type != rustix::fs::PROC_SUPER_MAGIC {
            return Err(std::io::Error::other("not a procfs"));
        }
        // A procfs of another pid namespace names other pids.
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let own = rustix::fs::readlinkat(&fd, "self", Vec::new())?;
        if own.to_bytes() != me.to_string().as_bytes() {
            return Err(std::io::Error::other(format!(
                "a procfs of another pid namespace (its self is {:?}, this process is {me})",
                own
            )));
        }
        Ok(Procfs(fd))
    }

    /// Let the descriptor survive exec and return its number, to hand to
    /// the program exec'd next (which takes it with
    /// [`Procfs::inherited`]).
    pub fn keep_across_exec(&self) -> std::io::Result<RawFd> {
        rustix::io::fcntl_setfd(&self.0, rustix::io::FdFlags::empty())?;
        Ok(self.0.as_raw_fd())
    }

    /// The status of `pid`, or `None` when it is gone (or unreadable).
    pub fn status(&self, pid: i32) -> Option<ProcStatus> {
        let fd = rustix::fs::openat(
            &self.0,
            format!("{pid}/status"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).ok()?;
        ProcStatus::parse(pid, &text)
    }

    /// Every process of the namespace. A process that exits meanwhile is
    /// simply missing, which is what a caller waiting for it wants.
    pub fn table(&self) -> std::io::Result<Vec<ProcStatus>> {
        let mut dir = rustix::fs::Dir::read_from(self.0.as_fd())?;
        let mut all = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let Some(pid) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            all.extend(self.status(pid));
        }
        Ok(all)
    }

    /// SIGKILL `target` if it is still the process that was found: a
    /// descendant (its parent is `me` or in `family`) that `keep` selects.
    /// A pidfd pins the process between the check and the signal, so a
    /// recycled pid is never signalled; where pidfds are refused (an old
    /// seccomp profile), the check and kill(2) are as close as they get.
    pub fn kill_if_still(
        &self,
        target: i32,
        me: i32,
        family: &HashSet<i32>,
        keep: &dyn Fn(&ProcStatus) -> bool,
    ) {
        let Some(pid) = Pid::from_raw(target) else {
            return;
        };
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
        let Some(now) = self.status(target) else {
            return;
        };
        if !(now.ppid == me || family.contains(&now.ppid)) || !keep(&now) {
            return;
        }
        // ESRCH: it is already gone, the outcome wanted.
        let _ = match &pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, Signal::KILL),
            None => rustix::process::kill_process(pid, Signal::KILL),
        };
    }
}

/// The descendants of `ancestor` in `table` (zombies included: they still
/// hold their pid until reaped).
pub fn descendants(table: &[ProcStatus], ancestor: i32) -> HashSet<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in table {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut found = HashSet::new();
    let mut todo = vec![ancestor];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if found.insert(c) {
                todo.push(c);
            }
        }
    }
    found
}

/// Kill `ancestor`'s descendants, as the host sees them in `/proc`. They
/// are stopped first, round after round until a round finds none new, so
/// none can fork a child the kill would miss; then all are killed. The
/// caller kills `ancestor` itself.
pub fn kill_tree(ancestor: i32) {
    let Ok(procfs) = Procfs::open(Path::new("/proc")) else {
        return;
    };
    let mut stopped: HashSet<i32> = HashSet::new();
    for _ in 0..64 {
        let Ok(table) = procfs.table() else { break };
        let live: HashSet<i32> = table.iter().filter(|p| p.live).map(|p| p.pid).collect();
        let new: Vec<i32> = descendants(&table, ancestor)
            .into_iter()
            .filter(|p| live.contains(p) && !stopped.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            signal(pid, Signal::STOP);
            stopped.insert(pid);
        }
    }
    for &pid in &stopped {
        signal(pid, Signal::KILL);
    }
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        // ESRCH: gone already, the outcome wanted.
        let _ = rustix::process::kill_process(p, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLEEPING: &str = "Name:\tsleep\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nPPid:\t7\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";

    fn st(pid: i32, ppid: i32) -> ProcStatus {
        ProcStatus {
            pid,
            ppid,
            uids: [0; 4],
            live: true,
        }
    }

    #[test]
    fn a_sleeping_process_parses() {
        let s = ProcStatus::parse(42, SLEEPING).unwrap();
        assert_eq!(s.ppid, 7);
        assert!(s.live);
        assert!(s.has_uid(1000));
        assert!(!s.has_uid(0));
    }

    #[test]
    fn zombies_and_dead_are_not_live() {
        for state in ["Z (zombie)", "X (dead)"] {
            let s = ProcStatus::parse(42, &SLEEPING.replace("S (sleeping)", state)).unwrap();
            assert!(!s.live, "{state}");
        }
    }

    #[test]
    fn the_saved_uid_alone_counts_and_a_prefix_does_not() {
        let saved = SLEEPING.replace("Uid:\t1000\t1000\t1000\t1000", "Uid:\t0\t0\t1000\t0");
        assert!(ProcStatus::parse(42, &saved).unwrap().has_uid(1000));
        let longer = SLEEPING.replace("1000", "10000");
        assert!(!ProcStatus::parse(42, &longer).unwrap().has_uid(1000));
    }

    #[test]
    fn missing_or_malformed_fields_are_none() {
        assert_eq!(ProcStatus::parse(42, ""), None);
        assert_eq!(
            ProcStatus::parse(42, &SLEEPING.replace("PPid:\t7\n", "")),
            None
        );
        assert_eq!(
            ProcStatus::parse(
                42,
                &SLEEPING.replace("\t1000\t1000\t1000\t1000\nGid", "\t1000\nGid")
            ),
            None
        );
        assert_eq!(
            ProcStatus::parse(42, &SLEEPING.replace("PPid:\t7", "PPid:\tx")),
            None
        );
    }

    #[test]
    fn descendants_follow_the_tree_and_nothing_else() {
        // 1 ── 10 ── 11 ── 12     1 ── 20 ── 21
        let table = [st(10, 1), st(11, 10), st(12, 11), st(20, 1), st(21, 20)];
        assert_eq!(descendants(&table, 10), HashSet::from([11, 12]));
        assert_eq!(descendants(&table, 20), HashSet::from([21]));
        assert_eq!(descendants(&table, 12), HashSet::new());
    }

    #[test]
    fn this_process_sees_itself_in_its_own_procfs() {
        let p = Procfs::open(Path::new("/proc")).unwrap();
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let table = p.table().unwrap();
        assert!(table.iter().any(|s| s.pid == me && s.live), "{table:?}");
    }

    #[test]
    fn a_plain_dir_is_not_a_procfs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Procfs::open(dir.path()).is_err());
    }
}
