//! `user_namespaces`: whether a user (and network) namespace can be made,
//! as this user and, for root, as `nobody`; and what the sysctls say.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Check, Status};

const NAME: &str = "user_namespaces";
/// The uid the unprivileged probe runs as (`nobody`).
const NOBODY: u32 = 65534;

/// How a user-namespace probe went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    Made,
    /// The kernel refused (the reason the helper printed).
    Refused(String),
    /// The probe could not be started (e.g. `nobody` cannot execute it).
    NotRun(String),
}

/// What was read and tried.
pub(super) struct Facts {
    root: bool,
    /// As this user.
    me: Probe,
    /// As `nobody` when this user is root and `me` worked; else `me`.
    nobody: Probe,
    /// Why the sysctls refuse unprivileged user namespaces, if they do.
    sysctl: Option<String>,
}

pub(super) fn read(self_exe: &Path, root: bool) -> Facts {
    let sysctl = |p: &str| std::fs::read_to_string(p).ok();
    let verdict = sysctl_verdict(
        sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        sysctl("/proc/sys/user/max_user_namespaces").as_deref(),
        sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref(),
    );
    let me = probe(self_exe, None);
    let nobody = if root && me == Probe::Made {
        probe(self_exe, Some(NOBODY))
    } else {
        me.clone()
    };
    Facts {
        root,
        me,
        nobody,
        sysctl: verdict,
    }
}

/// What the sysctls say about user namespaces for unprivileged users:
/// `None` when they allow them, else the reason they do not.
fn sysctl_verdict(
    unprivileged_clone: Option<&str>,
    max_user_namespaces: Option<&str>,
    apparmor_restrict: Option<&str>,
) -> Option<String> {
    let num = |v: Option<&str>| v.and_then(|s| s.trim().parse::<u64>().ok());
    if num(max_user_namespaces) == Some(0) {
        return Some("user.max_user_namespaces is 0".into());
    }
    if num(unprivileged_clone) == Some(0) {
        return Some("kernel.unprivileged_userns_clone is 0".into());
    }
    if num(apparmor_restrict) == Some(1) {
        return Some("kernel.apparmor_restrict_unprivileged_userns is 1".into());
    }
    None
}

/// Try to create a user (and network) namespace, as `uid` if given: the
/// same helper the sandbox uses for its network namespace.
fn probe(self_exe: &Path, uid: Option<u32>) -> Probe {
    let mut cmd = Command::new(self_exe);
    cmd.arg("__sandbox-netns")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, u);
        std::os::unix::process::CommandExt::gid(&mut cmd, u);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Probe::NotRun(format!("cannot start {}: {e}", self_exe.display())),
    };
    let mut ready = [0u8; 1];
    let made = child
        .stdout
        .take()
        .is_some_and(|mut o| o.read_exact(&mut ready).is_ok());
    drop(child.stdin.take());
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Probe::NotRun(format!("waiting for the probe: {e}")),
    };
    if made {
        return Probe::Made;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim().trim_start_matches("hoist sandbox: ");
    Probe::Refused(if err.is_empty() {
        format!("the probe failed ({})", out.status)
    } else {
        err.to_string()
    })
}

/// The check from the probes (as this user, and as `nobody` when this
/// user is root) and the sysctls' verdict.
pub(super) fn check(f: &Facts) -> Check {
    const COST_ROOT: &str = "in a runner container without CAP_NET_ADMIN (the --cap-add SYS_ADMIN profile), namespaces isolation cannot bring up its loopback and runs fall back to chroot";
    const COST_ROOTLESS: &str = "none as root; an unprivileged user cannot run hoist rootless (it needs a user namespace of its own for materialize and run)";
    let made = "a probe created a user and a network namespace";
    match (&f.me, &f.nobody) {
        (Probe::Made, _) if !f.root => {
            Check::ok(NAME, format!("{made} as this (unprivileged) user"))
        }
        (Probe::Made, Probe::Made) => Check::ok(NAME, format!("{made} as root and as nobody")),
        (Probe::Made, Probe::NotRun(why)) if f.sysctl.is_none() => Check::ok(
            NAME,
            format!("{made} as root; not tried as nobody ({why}), and the sysctls allow unprivileged ones"),
        ),
        (Probe::Made, Probe::Refused(why) | Probe::NotRun(why)) => Check::not_ok(
            NAME,
            Status::Degraded,
            format!(
                "root can create user namespaces; an unprivileged user cannot ({})",
                f.sysctl.clone().unwrap_or_else(|| why.clone())
            ),
            COST_ROOTLESS,
        ),
        (Probe::Refused(why) | Probe::NotRun(why), _) => {
            let because = match &f.sysctl {
                Some(s) => format!("{why}; {s}"),
                None => format!("{why}; the sysctls allow them, so a seccomp filter or a missing capability refuses them"),
            };
            Check::not_ok(
                NAME,
                Status::Missing,
                format!("a probe could not create a user namespace: {because}"),
                if f.root { COST_ROOT } else { COST_ROOTLESS },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls() {
        assert_eq!(sysctl_verdict(None, Some("96365\n"), None), None);
        assert_eq!(
            sysctl_verdict(Some("1\n"), Some("0\n"), None).as_deref(),
            Some("user.max_user_namespaces is 0")
        );
        assert_eq!(
            sysctl_verdict(Some("0\n"), Some("100"), None).as_deref(),
            Some("kernel.unprivileged_userns_clone is 0")
        );
        assert_eq!(
            sysctl_verdict(None, None, Some("1\n")).as_deref(),
            Some("kernel.apparmor_restrict_unprivileged_userns is 1")
        );
        assert_eq!(sysctl_verdict(Some("1"), None, Some("0")), None);
    }

    fn facts(root: bool, me: &Probe, nobody: &Probe, sysctl: Option<&str>) -> Facts {
        Facts {
            root,
            me: me.clone(),
            nobody: nobody.clone(),
            sysctl: sysctl.map(str::to_string),
        }
    }

    #[test]
    fn verdicts() {
        let refused = Probe::Refused("unshare: EPERM".into());
        let ok = check(&facts(true, &Probe::Made, &Probe::Made, None));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.detail.ends_with("as root and as nobody"));
        let v = check(&facts(false, &Probe::Made, &Probe::Made, None));
        assert_eq!(v.status, Status::Ok);
        assert!(v.detail.contains("unprivileged"));
        let v = check(&facts(true, &Probe::Made, &refused, Some("x is 0")));
        assert_eq!(v.status, Status::Degraded);
        assert!(v.detail.contains("x is 0"), "{v:?}");
        let not_run = Probe::NotRun("cannot start: EACCES".into());
        let v = check(&facts(true, &Probe::Made, &not_run, None));
        assert_eq!(v.status, Status::Ok);
        assert!(v.detail.contains("not tried as nobody"), "{v:?}");
        let v = check(&facts(true, &refused, &refused, None));
        assert_eq!(v.status, Status::Missing);
        assert!(v.detail.contains("seccomp"), "{v:?}");
        assert!(v.cost.unwrap().contains("CAP_NET_ADMIN"));
        let v = check(&facts(false, &refused, &refused, None));
        assert!(v.cost.unwrap().contains("rootless"));
    }
}
