//! `isolation`: what `--isolation auto` takes here, from the sandbox
//! probe it runs itself (`crate::sandbox::probe_reason`).

use super::{Check, CraneIsolation, Status};
use crate::sandbox::{Isolation, Network};

const NAME: &str = "isolation";

/// The isolation crane mode gets, from the probe's outcome.
pub(super) fn verdict(probe: &Result<(), String>, root: bool) -> CraneIsolation {
    match (probe, root) {
        (Ok(()), _) => CraneIsolation::Namespaces,
        (Err(_), true) => CraneIsolation::Chroot,
        (Err(_), false) => CraneIsolation::None,
    }
}

pub(super) fn check(probe: &Result<(), String>, root: bool) -> Check {
    match probe {
        Ok(()) => Check::ok(
            NAME,
            "namespaces: the probe entered mount, pid, network, ipc and uts namespaces, brought up loopback and mounted a tmpfs",
        ),
        Err(why) if root => Check::not_ok(
            NAME,
            Status::Degraded,
            format!("chroot: namespaces are refused here ({why})"),
            &chroot_cost(&Isolation::Chroot.not_isolated(Network::None)),
        ),
        Err(why) => Check::not_ok(
            NAME,
            Status::Missing,
            format!("none: not root ({why})"),
            "hoist run --mode crane cannot sandbox a task here: as an unprivileged user hoist needs a user namespace of its own (see user_namespaces and subordinate_ids); run as root, or in the runner image",
        ),
    }
}

/// What running in chroot isolation costs, given what this kernel cannot
/// make up for (`not_isolated`).
fn chroot_cost(gaps: &[String]) -> String {
    let shared = "runs use the chroot isolation, which shares the container's pid, network and ipc namespaces";
    if gaps.is_empty() {
        format!("{shared}; Landlock, hoist's seccomp filter and reduced capabilities make up for them on this kernel (nothing in not_isolated)")
    } else {
        format!(
            "{shared}; this kernel cannot make up for: {}",
            gaps.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(check(&Ok(()), true).status, Status::Ok);
        let c = check(&Err("unshare: EPERM".into()), true);
        assert_eq!(c.status, Status::Degraded);
        assert!(c.detail.starts_with("chroot"));
        assert!(c
            .cost
            .unwrap()
            .contains("shares the container's pid, network and ipc namespaces"));
        assert!(chroot_cost(&[]).contains("make up for them"));
        assert!(chroot_cost(&["network: x".into()]).ends_with("cannot make up for: network: x"));
        assert_eq!(check(&Err("x".into()), false).status, Status::Missing);
    }

    #[test]
    fn what_auto_takes() {
        assert_eq!(verdict(&Ok(()), false), CraneIsolation::Namespaces);
        assert_eq!(verdict(&Err("x".into()), true), CraneIsolation::Chroot);
        assert_eq!(verdict(&Err("x".into()), false), CraneIsolation::None);
    }
}
