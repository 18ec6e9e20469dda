//! The install jail. DESIGN §3 runs `/opt/agent/install.sh` as root, but
//! the script comes from the agent image, which the threat model does not
//! trust: as plain root it could read `/tests`, `/tasks` and `/opt/gateway`
//! and leave a copy for the agent. So, where the kernel allows, the
//! supervisor covers those paths with empty read-only tmpfs mounts and runs
//! the script in a new user and mount namespace (`hoist __install-jail`).
//! Mounts inherited into a mount namespace owned by a less privileged user
//! namespace are locked (mount_namespaces(7)): the script's root can
//! neither unmount the covers nor bind-mount around them.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::UnmountFlags;
use rustix::thread::UnshareFlags;

use crate::rootfs::mount::open_dir_beneath;

/// What install.sh must not see.
pub const COVERED: [&str; 3] = ["/tests", "/tasks", "/opt/gateway"];

/// Covers in place; removed by [`Covers::remove`].
pub struct Covers {
    paths: Vec<PathBuf>,
}

impl Covers {
    /// Mount an empty read-only tmpfs over each of `COVERED` present under
    /// `root`. Fails (mounting nothing) where this process may not mount.
    pub fn mount(root: &Path) -> io::Result<Covers> {
        let root_fd = std::fs::File::open(root)?;
        let mut covers = Covers { paths: Vec::new() };
        for abs in COVERED {
            let rel = abs.trim_start_matches('/');
            let path = root.join(rel);
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let at = open_dir_beneath(root_fd.as_fd(), rel)?;
            let mounted = cover(at.as_fd());
            if let Err(e) = mounted {
                covers.remove();
                return Err(io::Error::new(e.kind(), format!("covering {abs}: {e}")));
            }
            covers.paths.push(path);
        }
        Ok(covers)
    }

    pub fn remove(&mut self) {
        for p in self.paths.drain(..).rev() {
            if let Err(e) = rustix::mount::unmount(&p, UnmountFlags::DETACH) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove an install cover");
            }
        }
    }
}

fn cover(at: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use rustix::mount::*;
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "size", "4k")?;
    fsconfig_set_string(&fs, "mode", "0700")?;
    fsconfig_create(&fs)?;
    let attrs = MountAttrFlags::MOUNT_ATTR_RDONLY
        | MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(
        mnt.as_fd(),
        "",
        at,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// The extent of ids mapped in our own user namespace, to map 0..extent
/// to themselves in the jail's.
fn own_extent() -> io::Result<u64> {
    let map = std::fs::read_to_string("/proc/self/uid_map")?;
    Ok(map
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3).then(|| f[0] + f[2])
        })
        .max()
        .unwrap_or(0))
}

/// Give the jail (child `pid`, which unshares its user namespace first)
/// the identity maps of our id range. Only a process with CAP_SETUID in
/// the parent namespace may write a range; the jail waits for it.
pub fn map_jail(pid: i32) -> io::Result<()> {
    let ns = |p: &str| std::fs::metadata(format!("/proc/{p}/ns/user")).map(|m| m.ino());
    let own = ns("self")?;
    let start = Instant::now();
    while ns(&pid.to_string())? == own {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(io::Error::other(
                "the install jail did not enter its user namespace",
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let extent = own_extent()?;
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), format!("0 0 {extent}\n"))?;
    }
    Ok(())
}

/// `hoist __install-jail SCRIPT`: new user and mount namespaces, wait for
/// the supervisor to map our ids, then exec the script (as root of the
/// new user namespace, with every inherited mount locked).
pub fn jail_stage(script: &Path) -> i32 {
    let err = (|| -> io::Result<std::convert::Infallible> {
        crate::sys::unshare(UnshareFlags::NEWUSER | UnshareFlags::NEWNS)?;
        let start = Instant::now();
        while std::fs::read_to_string("/proc/self/uid_map")?
            .trim()
            .is_empty()
        {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other(
                    "the supervisor did not map the jail's ids",
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Err(std::process::Command::new(script).exec())
    })();
    match err {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("hoist: install jail: {e}");
            126
        }
    }
}
