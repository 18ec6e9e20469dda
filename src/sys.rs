//! The few raw system calls rustix does not wrap safely (Landlock's ABI
//! probe, close_range, loopback ioctls, unshare), the taking over of a
//! descriptor inherited across exec, and the two places a child acts
//! between fork and exec (`Command::pre_exec`: joining the run's cgroup,
//! becoming PID 1 of the sandbox), each `unsafe` block with a `SAFETY:`
//! comment. This is the only module that may use `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};

/// Spawn `cmd` so that the child, before it execs, writes "0" into each of
/// `procs` (open `cgroup.procs` or v1 `tasks` files): it moves itself into
/// those cgroups, and nothing it starts can run outside them. `cmd` is
/// taken, so it cannot be spawned again once the files are closed.
pub fn spawn_joining(mut cmd: Command, procs: &[&std::fs::File]) -> io::Result<Child> {
    let fds: Vec<RawFd> = procs.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe work is allowed: it makes write(2) calls over
    // a vector allocated before the fork, and allocates nothing (a failure
    // becomes an `io::Error` from its raw errno, which does not allocate).
    // The descriptors stay open in the parent until `spawn` has returned,
    // which is after the child exec'd or failed: `procs` is borrowed for
    // this whole call, and the child has a copy of the descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let fd = BorrowedFd::borrow_raw(fd);
                rustix::io::write(fd, b"0")?;
            }
            Ok(())
        })
    };
    cmd.spawn()
}

/// Run `cmd` to its end, `before_exec` running in the child between fork
/// and exec. That closure may allocate and make any system call, which is
/// only sound when this process has a single thread (no lock can then be
/// held by a thread the fork left behind): with more, this refuses.
pub fn status_single_threaded(
    mut cmd: Command,
    before_exec: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
) -> io::Result<ExitStatus> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "this process has {threads} threads: the work before exec needs exactly one"
        )));
    }
    // SAFETY: this process is single-threaded (checked above, and nothing
    // here starts a thread before the fork), so the forked child holds no
    // lock another thread took, and `before_exec` may allocate and call
    // anything, as the program it came from could.
    unsafe { cmd.pre_exec(before_exec) };
    cmd.status()
}

/// How many threads this process has (`Threads:` of /proc/self/status).
fn thread_count() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("/proc/self/status has no Threads: line"))
}

/// Own the descriptor `fd` that the program which exec'd this one left
/// open for it, and mark it close-on-exec so that no child inherits it in
/// turn. Refuses the standard streams (std owns those) and a number that
/// is not an open descriptor. Call once per number, before anything else
/// in this process could have opened or closed it.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::other(format!(
            "descriptor {fd} is a standard stream, not an inherited one"
        )));
    }
    // SAFETY: the borrow only lives for this F_GETFD, which fails with
    // EBADF, touching nothing, when no descriptor has that number.
    rustix::io::fcntl_getfd(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: `fd` is open (checked above) and not a standard stream; it
    // was inherited across exec, so nothing in this process opened it, and
    // per this function's contract nothing else has taken it: this is its
    // only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// `struct ifreq` as the SIOC[GS]IFFLAGS ioctls read and write it: the
/// interface name, then (in the union) the flags as a short.
#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

const SIOCGIFFLAGS: rustix::ioctl::Opcode = 0x8913;
const SIOCSIFFLAGS: rustix::ioctl::Opcode = 0x8914;
const IFF_UP: i16 = 0x1;

/// Bring the loopback interface of the current network namespace up, as
/// `ip link set lo up` does, without needing `ip` on the host.
pub fn loopback_up() -> io::Result<()> {
    use rustix::net::{socket, AddressFamily, SocketType};
    let sock = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: SIOCGIFFLAGS reads an `ifreq` and writes its flags field;
    // `IfReqFlags` has the kernel's layout (16-byte name, then the union
    // starting with a short, 40 bytes in all) and lives for the call.
    unsafe {
        rustix::ioctl::ioctl(
            &sock,
            rustix::ioctl::Updater::<SIOCGIFFLAGS, IfReqFlags>::new(&mut req),
        )?;
    }
    req.flags |= IFF_UP;
    // SAFETY: as above; SIOCSIFFLAGS only reads the struct.
    unsafe {
        rustix::ioctl::ioctl(
            &sock,
            rustix::ioctl::Updater::<SIOCSIFFLAGS, IfReqFlags>::new(&mut req),
        )?;
    }
    Ok(())
}

/// Enter new namespaces. Only ever called from the single-threaded
/// `hoist __sandbox` process, before anything else runs.
pub fn unshare(flags: rustix::thread::UnshareFlags) -> io::Result<()> {
    // SAFETY: rustix marks unshare unsafe because CLONE_FILES could leave
    // other threads with descriptors from another table. hoist never passes
    // FILES, and calls this from a process that has started no threads.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    Ok(())
}

/// The Landlock ABI version of the running kernel, 0 when Landlock is
/// not built in or not enabled (`landlock_create_ruleset(NULL, 0,
/// LANDLOCK_CREATE_RULESET_VERSION)`, landlock(7)).
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the call reads and writes no memory; it only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// Mark every descriptor from `first` up close-on-exec
/// (`close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`), so that what this
/// process execs holds nothing of hoist's but what it was handed below
/// `first`.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only
    // sets a flag on descriptors, which no Rust object's validity depends on.
    let r = unsafe {
        libc::close_range(
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_thread_is_not_alone() {
        // The test harness runs this beside its main thread.
        assert!(super::thread_count().unwrap() >= 2);
        let refused = super::status_single_threaded(std::process::Command::new("true"), || Ok(()))
            .unwrap_err();
        assert!(refused.to_string().contains("threads"), "{refused}");
    }

    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn an_inherited_descriptor_is_owned_and_closed_on_exec() {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        // Left without CLOEXEC, as an exec'ing parent leaves it.
        rustix::io::fcntl_setfd(&read, rustix::io::FdFlags::empty()).unwrap();
        let n = read.into_raw_fd();
        let owned = take_inherited_fd(n).unwrap();
        assert_eq!(owned.as_raw_fd(), n);
        assert!(rustix::io::fcntl_getfd(&owned)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn standard_streams_and_closed_numbers_are_refused() {
        for fd in [0, 1, 2] {
            assert!(take_inherited_fd(fd).is_err(), "{fd}");
        }
        // A number far above any this test process has open.
        assert!(take_inherited_fd(1_000_000).is_err());
    }
}
