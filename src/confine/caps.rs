//! The capabilities a root phase keeps (`install.sh`, the gateway, the grader).
//! Root runs them because the pipeline says so (docs/pipeline.md) — a grader
//! may chown the workdir, drop to another user to run tests, bind a low port —
//! not so that they can administer the machine. Everything else leaves the
//! bounding set before the exec, so an exec'd root program's permitted set is
//! at most [`KEPT`] (capabilities(7): P'(permitted) = F(permitted) &
//! P(bounding) | P'(ambient), and the inheritable and ambient sets are emptied
//! too). Among what goes: CAP_SYS_CHROOT (chroot escape), CAP_SYS_ADMIN,
//! CAP_SYS_PTRACE, CAP_MKNOD, CAP_SYS_MODULE, CAP_SYS_RAWIO,
//! CAP_DAC_READ_SEARCH (open_by_handle_at), CAP_NET_ADMIN, CAP_NET_RAW,
//! CAP_SETFCAP, CAP_LINUX_IMMUTABLE, CAP_KILL (signals to other users'
//! processes), CAP_SETPCAP.

use caps::{CapSet, Capability};

/// What a root phase keeps.
pub const KEPT: [Capability; 7] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_NET_BIND_SERVICE,
];

/// Every capability this kernel knows but [`KEPT`], CAP_SETPCAP last: it
/// is what allows dropping the others.
fn dropped() -> Vec<Capability> {
    let mut v: Vec<Capability> = caps::runtime::procfs_all_supported(None)
        .unwrap_or_else(|_| caps::all())
        .into_iter()
        .filter(|c| !KEPT.contains(c) && *c != Capability::CAP_SETPCAP)
        .collect();
    v.sort_by_key(|c| c.index());
    v.push(Capability::CAP_SETPCAP);
    v
}

/// Reduce this process's capabilities to [`KEPT`] for whatever it execs.
pub fn reduce() -> Result<(), String> {
    for c in dropped() {
        match caps::drop(None, CapSet::Bounding, c) {
            Ok(()) => {}
            // A capability this kernel does not have cannot be dropped,
            // nor held.
            Err(e) if !caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) => {
                tracing::debug!(cap = %c, error = %e, "not in the bounding set");
            }
            Err(e) => return Err(format!("{c}: {e}")),
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("ambient set: {e}"))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| format!("inheritable set: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_capabilities_are_dropped_and_setpcap_last() {
        let d = dropped();
        for c in [
            Capability::CAP_SYS_CHROOT,
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_MKNOD,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_NET_RAW,
            Capability::CAP_SETFCAP,
            Capability::CAP_LINUX_IMMUTABLE,
            Capability::CAP_KILL,
        ] {
            assert!(d.contains(&c), "{c} kept");
        }
        assert_eq!(d.last(), Some(&Capability::CAP_SETPCAP));
        assert!(KEPT.iter().all(|k| !d.contains(k)));
    }
}
