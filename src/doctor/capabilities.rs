//! `capabilities`: whether this process holds what a run uses, from
//! `CapEff` in `/proc/self/status`.

use super::{Check, Status};

const NAME: &str = "capabilities";

/// The capabilities a run uses, by bit number (capability.h).
const CHROOT_CAPS: &[(u32, &str)] = &[
    (0, "CHOWN"),
    (1, "DAC_OVERRIDE"),
    (3, "FOWNER"),
    (5, "KILL"),
    (6, "SETGID"),
    (7, "SETUID"),
    (18, "SYS_CHROOT"),
    (27, "MKNOD"),
];
const SYS_ADMIN: (u32, &str) = (21, "SYS_ADMIN");
const NET_ADMIN: (u32, &str) = (12, "NET_ADMIN");

/// The value of a `Key:\tvalue` field of a `/proc/PID/status` text.
pub(super) fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// The effective capability mask of a `/proc/PID/status` text.
pub(super) fn cap_eff(status: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, "CapEff")?, 16).ok()
}

/// The names among `wanted` missing from the capability mask `eff`.
fn missing_caps(eff: u64, wanted: &[(u32, &'static str)]) -> Vec<&'static str> {
    wanted
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}

pub(super) fn check(eff: Option<u64>, root: bool) -> Check {
    let Some(eff) = eff else {
        return Check::not_ok(
            NAME,
            Status::Missing,
            "no CapEff in /proc/self/status",
            "unknown",
        );
    };
    let chroot = missing_caps(eff, CHROOT_CAPS);
    let ns = missing_caps(eff, &[SYS_ADMIN, NET_ADMIN]);
    if !chroot.is_empty() {
        return Check::not_ok(
            NAME,
            Status::Missing,
            format!("CapEff {eff:016x} lacks {}", chroot.join(", ")),
            if root {
                "the chroot isolation cannot prepare the rootfs or drop to the agent user; give the runner Docker's default capabilities"
            } else {
                "not root: crane mode cannot sandbox (see isolation)"
            },
        );
    }
    match ns.as_slice() {
        [] => Check::ok(NAME, format!("CapEff {eff:016x}: everything a run uses")),
        ["NET_ADMIN"] => Check::ok(
            NAME,
            format!("CapEff {eff:016x}: no NET_ADMIN, so the sandbox's network namespace is made inside a user namespace"),
        ),
        _ => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("CapEff {eff:016x} lacks {}", ns.join(", ")),
            "namespaces isolation needs SYS_ADMIN (unshare, mount, pivot_root): runs use chroot; give the runner --cap-add SYS_ADMIN --security-opt seccomp=unconfined",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\thoist\nUid:\t0\t0\t0\t0\nCapEff:\t00000000a80425fb\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn status_fields() {
        assert_eq!(status_field(STATUS, "Seccomp"), Some("2"));
        assert_eq!(status_field(STATUS, "Seccomp_filters"), Some("1"));
        assert_eq!(status_field(STATUS, "NoSuch"), None);
        assert_eq!(cap_eff(STATUS), Some(0xa80425fb));
    }

    #[test]
    fn docker_default_caps_allow_chroot_not_namespaces() {
        // Docker's default capability set.
        let eff = 0xa80425fb;
        assert!(missing_caps(eff, CHROOT_CAPS).is_empty());
        assert_eq!(
            missing_caps(eff, &[SYS_ADMIN, NET_ADMIN]),
            vec!["SYS_ADMIN", "NET_ADMIN"]
        );
        let c = check(Some(eff), true);
        assert_eq!(c.status, Status::Degraded);
        assert!(c.detail.contains("SYS_ADMIN"), "{c:?}");
    }

    #[test]
    fn sys_admin_without_net_admin_is_enough() {
        let c = check(Some(0xa80425fb | 1 << 21), true);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("no NET_ADMIN"));
    }

    #[test]
    fn no_caps_is_missing() {
        let c = check(Some(0), false);
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.contains("SYS_CHROOT"));
    }
}
