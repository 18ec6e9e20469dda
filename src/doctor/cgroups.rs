//! `cgroups`: whether a run's cgroup (pids, and memory for `--memory`) can
//! be made here: the sandbox's own code makes one and removes it
//! (`crate::sandbox::cgroup::probe`). On cgroup v2 it also says where
//! runs' cgroups go (docs/isolation.md "Limits"): beneath hoist's own
//! when that is the host's root cgroup; else, as root, beneath
//! `/sys/fs/cgroup/hoist`, outside hoist's own cgroup, and at the top of a
//! cgroup namespace after its processes, this one too, moved into a leaf
//! `init`, as a run does. That
//! is read from what the probe left: where this process now is, and which
//! `cgroup.subtree_control` enables the controllers.

use std::path::Path;

use super::{Check, Status};
use crate::sandbox::cgroup::{self, Controller, Version};

const NAME: &str = "cgroups";
const ROOT: &str = "/sys/fs/cgroup";

/// Where runs' cgroups go on cgroup v2.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Placement {
    /// Beneath hoist's own cgroup, the host's root.
    Own(String),
    /// Beneath `/sys/fs/cgroup/hoist` at the top of this cgroup namespace,
    /// whose processes moved into the leaf `moved_to`.
    NamespaceTop { moved_to: String },
    /// Beneath `/sys/fs/cgroup/hoist`, outside hoist's own cgroup `own`.
    HoistDir { own: String },
}

/// What was read and tried.
pub(super) struct Facts {
    probed: Vec<(Controller, Result<Version, String>)>,
    /// What is mounted at `/sys/fs/cgroup`, whatever the probe managed.
    hierarchy: Option<Version>,
    /// cgroup v2, the probe having worked: where runs' cgroups go, when
    /// that can be told.
    placement: Option<Placement>,
}

pub(super) fn read(root: bool) -> Facts {
    let own = || cgroup::own_path(&super::read("/proc/self/cgroup"), "").map(str::to_string);
    let before = own();
    let probed = cgroup::probe();
    let hierarchy = hierarchy();
    let worked: Vec<Controller> = probed
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(c, _)| *c)
        .collect();
    let placement = match (hierarchy, before, own()) {
        (Some(Version::V2), Some(before), Some(after)) if !worked.is_empty() => {
            let enabled = |dir: &Path| {
                let text = super::read(dir.join("cgroup.subtree_control"));
                worked
                    .iter()
                    .all(|c| text.split_whitespace().any(|x| x == c.name()))
            };
            placement(&before, &after, root, enabled)
        }
        _ => None,
    };
    Facts {
        probed,
        hierarchy,
        placement,
    }
}

/// What `/sys/fs/cgroup` holds: cgroup2, or a tmpfs of v1 hierarchies.
fn hierarchy() -> Option<Version> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    // f_type is i64 here, u32 or c_long on other architectures.
    #[allow(clippy::unnecessary_cast)]
    let magic = |p: &Path| rustix::fs::statfs(p).ok().map(|s| s.f_type as i64);
    let root = Path::new(ROOT);
    match magic(root)? {
        CGROUP2_SUPER_MAGIC => Some(Version::V2),
        _ if ["pids", "memory"]
            .iter()
            .any(|c| magic(&root.join(c)) == Some(CGROUP_SUPER_MAGIC)) =>
        {
            Some(Version::V1)
        }
        _ => None,
    }
}

/// Where runs' cgroups go, from this process's v2 cgroup before and after
/// the probe and whether a directory's `cgroup.subtree_control` enables
/// the controllers; the order the sandbox tries them in.
fn placement(
    before: &str,
    after: &str,
    root: bool,
    enabled: impl Fn(&Path) -> bool,
) -> Option<Placement> {
    if before != after {
        return Some(Placement::NamespaceTop {
            moved_to: after.to_string(),
        });
    }
    let own = Path::new(ROOT).join(before.trim_start_matches('/'));
    // Only the host's root cgroup (no namespace moved it: `before` is
    // unchanged) may hold hoist and the runs' controllers at once.
    if before == "/" && enabled(&own) {
        return Some(Placement::Own(before.to_string()));
    }
    (root && enabled(&Path::new(ROOT).join("hoist"))).then(|| Placement::HoistDir {
        own: before.to_string(),
    })
}

/// The version the report names: what a probe used, else what is
/// mounted.
fn version_label(f: &Facts) -> &'static str {
    f.probed
        .iter()
        .find_map(|(_, r)| r.as_ref().ok().copied())
        .or(f.hierarchy)
        .map_or("no cgroup", Version::label)
}

fn placement_note(p: &Placement) -> String {
    match p {
        Placement::Own(own) => format!("; runs' cgroups go beneath hoist's own, {own}"),
        Placement::NamespaceTop { moved_to } => format!(
            "; runs' cgroups go beneath {ROOT}/hoist, at the top of this cgroup namespace, whose processes (hoist's too) moved into {moved_to}, as they do for a run"
        ),
        Placement::HoistDir { own } => format!(
            "; runs' cgroups go beneath {ROOT}/hoist, outside hoist's own {own}, whose limits then do not bound a run"
        ),
    }
}

pub(super) fn check(f: &Facts) -> Check {
    let version = version_label(f);
    let failed: Vec<(Controller, &String)> = f
        .probed
        .iter()
        .filter_map(|(c, r)| r.as_ref().err().map(|why| (*c, why)))
        .collect();
    let placed = f.placement.as_ref().map(placement_note).unwrap_or_default();
    if failed.is_empty() {
        return Check::ok(
            NAME,
            format!(
                "{version}; a run's cgroup holds pids (pids.max 1024) and, with --memory, memory{placed}"
            ),
        );
    }
    let detail = failed
        .iter()
        .map(|(c, why)| format!("{}: {why}", c.name()))
        .collect::<Vec<_>>()
        .join("; ");
    let cost = failed
        .iter()
        .map(|(c, _)| match c {
            Controller::Pids => "the run's processes are bounded only by RLIMIT_NPROC, per uid (the agent's uid to 1024; root without a user namespace not at all)",
            Controller::Memory => "memory is not limited, and `hoist run --memory` fails",
        })
        .collect::<Vec<_>>()
        .join("; ");
    Check::not_ok(
        NAME,
        if failed.len() == f.probed.len() {
            Status::Missing
        } else {
            Status::Degraded
        },
        format!("{version}; {detail}{placed}"),
        &cost,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        probed: Vec<(Controller, Result<Version, String>)>,
        hierarchy: Option<Version>,
        placement: Option<Placement>,
    ) -> Facts {
        Facts {
            probed,
            hierarchy,
            placement,
        }
    }

    #[test]
    fn v1_as_on_the_development_machine() {
        let f = facts(
            vec![
                (Controller::Pids, Ok(Version::V1)),
                (Controller::Memory, Ok(Version::V1)),
            ],
            Some(Version::V1),
            None,
        );
        let c = check(&f);
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "cgroup v1; a run's cgroup holds pids (pids.max 1024) and, with --memory, memory"
        );
    }

    #[test]
    fn v2_says_where_runs_go() {
        let ok = || {
            vec![
                (Controller::Pids, Ok(Version::V2)),
                (Controller::Memory, Ok(Version::V2)),
            ]
        };
        let service = "/system.slice/hoist-vm.service";
        let c = check(&facts(
            ok(),
            Some(Version::V2),
            Some(Placement::HoistDir {
                own: service.into(),
            }),
        ));
        assert_eq!(c.status, Status::Ok);
        assert!(c.detail.starts_with("cgroup v2; "), "{c:?}");
        assert!(c.detail.ends_with("go beneath /sys/fs/cgroup/hoist, outside hoist's own /system.slice/hoist-vm.service, whose limits then do not bound a run"), "{c:?}");
        let c = check(&facts(
            ok(),
            Some(Version::V2),
            Some(Placement::NamespaceTop {
                moved_to: "/init".into(),
            }),
        ));
        assert!(c.detail.contains("moved into /init"), "{c:?}");
        let c = check(&facts(
            ok(),
            Some(Version::V2),
            Some(Placement::Own("/".into())),
        ));
        assert!(c.detail.ends_with("beneath hoist's own, /"), "{c:?}");
    }

    #[test]
    fn v2_refused_names_the_version_and_the_rule() {
        let busy = "/user.slice holds processes, and cgroup v2 lets only a cgroup without processes of its own enable controllers for its children".to_string();
        let f = facts(
            vec![
                (Controller::Pids, Err(busy.clone())),
                (Controller::Memory, Err(busy)),
            ],
            Some(Version::V2),
            None,
        );
        let c = check(&f);
        assert_eq!(c.status, Status::Missing);
        // Not "no cgroup": the hierarchy is there, the rule refused.
        assert!(
            c.detail
                .starts_with("cgroup v2; pids: /user.slice holds processes"),
            "{c:?}"
        );
        assert!(c.cost.unwrap().contains("RLIMIT_NPROC"));
    }

    #[test]
    fn one_controller_missing_is_degraded() {
        let f = facts(
            vec![
                (Controller::Pids, Ok(Version::V1)),
                (
                    Controller::Memory,
                    Err("no cgroup v1 memory hierarchy".into()),
                ),
            ],
            Some(Version::V1),
            None,
        );
        let c = check(&f);
        assert_eq!(c.status, Status::Degraded);
        assert_eq!(c.detail, "cgroup v1; memory: no cgroup v1 memory hierarchy");
        assert_eq!(
            c.cost.unwrap(),
            "memory is not limited, and `hoist run --memory` fails"
        );
        let none = facts(vec![(Controller::Pids, Err("x".into()))], None, None);
        assert!(check(&none).detail.starts_with("no cgroup; pids: x"));
    }

    #[test]
    fn placement_follows_the_sandbox_order() {
        let everywhere = |_: &Path| true;
        let nowhere = |_: &Path| false;
        assert_eq!(
            placement("/", "/init", true, nowhere),
            Some(Placement::NamespaceTop {
                moved_to: "/init".into()
            })
        );
        assert_eq!(
            placement("/", "/", false, everywhere),
            Some(Placement::Own("/".into()))
        );
        // A service's cgroup holds hoist: never the runs' parent, even
        // where a controller was left enabled in it.
        assert_eq!(placement("/a.slice", "/a.slice", false, everywhere), None);
        let only_hoist = |p: &Path| p == Path::new("/sys/fs/cgroup/hoist");
        assert_eq!(
            placement("/a.slice/b", "/a.slice/b", true, only_hoist),
            Some(Placement::HoistDir {
                own: "/a.slice/b".into()
            })
        );
        // Not root: no /sys/fs/cgroup/hoist, whatever is there.
        assert_eq!(placement("/a", "/a", false, only_hoist), None);
        let own_only = |p: &Path| p == Path::new("/sys/fs/cgroup/a.slice/b");
        assert_eq!(placement("/a.slice/b", "/a.slice/b", true, own_only), None);
    }
}
