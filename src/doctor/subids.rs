//! `subordinate_ids`: whether this user has the subordinate uids and gids
//! (`/etc/subuid`, `/etc/subgid`) and the setuid helpers a rootless run
//! maps image owners with.

use super::{Check, Status};

const NAME: &str = "subordinate_ids";
/// What a rootless run needs of each: as many ids as an image may use.
const WANTED: u64 = 65536;

/// What was read.
pub(super) struct Facts {
    /// The user's name, else the uid.
    who: String,
    uids: u64,
    gids: u64,
    /// Of `newuidmap` and `newgidmap`, those hoist cannot find.
    missing_tools: Vec<&'static str>,
}

pub(super) fn read(uid: u32) -> Facts {
    let passwd = super::read("/etc/passwd");
    let name = crate::userns::user_name(&passwd, uid);
    let count = |file: &str| -> u64 {
        crate::userns::ranges_for(&super::read(file), name.as_deref(), uid)
            .iter()
            .map(|r| u64::from(r.count))
            .sum()
    };
    Facts {
        uids: count("/etc/subuid"),
        gids: count("/etc/subgid"),
        who: name.unwrap_or_else(|| uid.to_string()),
        missing_tools: ["newuidmap", "newgidmap"]
            .into_iter()
            // Where hoist itself looks for them, not along PATH.
            .filter(|t| crate::userns::find_helper(t).is_none())
            .collect(),
    }
}

pub(super) fn check(f: &Facts) -> Check {
    let detail = format!(
        "{}: {} subordinate uids, {} subordinate gids; {}",
        f.who,
        f.uids,
        f.gids,
        if f.missing_tools.is_empty() {
            "newuidmap and newgidmap present".to_string()
        } else {
            format!(
                "{} not found (package uidmap)",
                f.missing_tools.join(" and ")
            )
        }
    );
    if f.uids >= WANTED && f.gids >= WANTED && f.missing_tools.is_empty() {
        Check::ok(NAME, detail)
    } else {
        Check::not_ok(
            NAME,
            Status::Missing,
            detail,
            "as this user, hoist maps only its own uid: image files of other owners become this user's (counted in not_reproduced) and `hoist run` refuses to start an agent; give the user 65536 subordinate ids of each (usermod --add-subuids/--add-subgids) and install uidmap",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(uids: u64, gids: u64, missing_tools: Vec<&'static str>) -> Facts {
        Facts {
            who: "root".into(),
            uids,
            gids,
            missing_tools,
        }
    }

    #[test]
    fn enough_ids_and_the_helpers() {
        let c = check(&facts(65536, 100000, vec![]));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "root: 65536 subordinate uids, 100000 subordinate gids; newuidmap and newgidmap present"
        );
    }

    #[test]
    fn too_few_ids_or_no_helper() {
        let c = check(&facts(0, 0, vec![]));
        assert_eq!(c.status, Status::Missing);
        assert!(c.cost.unwrap().contains("usermod --add-subuids"));
        let c = check(&facts(65536, 65536, vec!["newgidmap"]));
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.ends_with("newgidmap not found (package uidmap)"));
        let c = check(&facts(65536, 65535, vec![]));
        assert_eq!(c.status, Status::Missing);
    }
}
