//! The install jail. The pipeline (docs/pipeline.md) runs
//! `/opt/agent/install.sh` as root, but the script comes from the agent image,
//! which the threat model does not trust: as plain root it could read `/tests`,
//! `/tasks` and `/opt/gateway` and leave a copy for the agent. So, where the
//! kernel allows, the supervisor covers those paths with empty read-only tmpfs
//! mounts and runs the script in a new user and mount namespace (`hoist
//! __install-jail`). Mounts inherited into a mount namespace owned by a less
//! privileged user namespace are locked (mount_namespaces(7)): the script's
//! root can neither unmount the covers nor bind-mount around them.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::{MountAttrFlags, UnmountFlags};
use rustix::thread::UnshareFlags;

use crate::beneath::open_dir_beneath;
use crate::confine::mounts;
use crate::userns::map_ids_when_unshared;

/// What install.sh must not see.
pub const COVERED: [&str; 3] = ["/tests", "/tasks", "/opt/gateway"];

/// The hidden subcommand: `hoist __install-jail POLICY SCRIPT`.
pub const STAGE: &str = "__install-jail";

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
    let attrs = MountAttrFlags::MOUNT_ATTR_RDONLY
        | MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    mounts::fresh(
        "tmpfs",
        &[("size", "4k"), ("mode", "0700")],
        attrs,
        at,
        "an install cover",
    )
    .map_err(io::Error::other)
}

/// Give the jail (child `pid`, which unshares its user namespace first)
/// the identity maps of our id range.
pub fn map_jail(pid: i32) -> io::Result<()> {
    map_ids_when_unshared(pid, &mut || Ok(true))
}

/// `hoist __install-jail POLICY SCRIPT`: new user and mount namespaces,
/// wait for the supervisor to map our ids, confine as `POLICY` says (see
/// `crate::confine`), then exec the script (as root of the new user
/// namespace, with every inherited mount locked).
pub fn jail_stage(args: &[std::ffi::OsString]) -> i32 {
    let script = Path::new(args.get(1).map(|a| a.as_os_str()).unwrap_or_default());
    let err = (|| -> io::Result<std::convert::Infallible> {
        let policy: crate::confine::Policy = serde_json::from_str(
            &args
                .first()
                .map(|a| a.to_string_lossy())
                .unwrap_or_default(),
        )
        .map_err(io::Error::other)?;
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
        crate::confine::apply(&policy).map_err(io::Error::other)?;
        Err(std::process::Command::new(script).exec())
    })();
    match err {
        Ok(never) => match never {},
        Err(e) => {
            crate::errln!("hoist: install jail: {e}");
            crate::confine::exit_code_for(&e)
        }
    }
}
