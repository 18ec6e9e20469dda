//! The few raw system calls rustix does not wrap safely, each `unsafe`
//! block with a `SAFETY:` comment. The only `unsafe` elsewhere is where a
//! child must act between fork and exec (`Command::pre_exec`: joining the
//! run's cgroup in `sandbox::cgroup`, becoming PID 1 in `sandbox::ns`),
//! each with its own `SAFETY:` comment.

use std::io;

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
