//! Rootless hoist: an unprivileged user runs `materialize`, `run`, `gc`
//! and `tree-digest DIR` as root of a user namespace of its own, as
//! `podman unshare` does, so that an image's root-owned 0700 and 0600
//! files stay root-owned inside and the agent user cannot read them.
//!
//! Root in the namespace is the user; image ids 1.. map to the user's
//! subordinate ranges from `/etc/subuid` and `/etc/subgid`, written by the
//! setuid `newuidmap`/`newgidmap` helpers (only they may map ids other than
//! one's own). With no ranges or no helpers, only root is mapped: every
//! other owner in an image is then not reproduced, and hoist counts and
//! reports those entries ([`crate::unpack::LayerStats`]).
//!
//! Entering happens once, at start-up, while the process is still
//! single-threaded (a multi-threaded process may not `unshare` a user
//! namespace). A helper (`hoist __userns-map`), started before the
//! unshare, writes the maps once this process is in its new namespace.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::thread::UnshareFlags;
use serde::Serialize;

use crate::sys;

/// A run of subordinate ids: `start..start + count` on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// The user namespace hoist entered, for `run.json` and messages.
#[derive(Clone, Debug, Serialize)]
pub struct Rootless {
    /// The host uid and gid that are root inside.
    pub host_uid: u32,
    pub host_gid: u32,
    /// Ids 1.. inside map onto these host ranges, in order.
    pub subuids: Vec<IdRange>,
    pub subgids: Vec<IdRange>,
    /// How many uids and gids, from 0, the namespace maps.
    pub mapped_uids: u64,
    pub mapped_gids: u64,
    /// Why only root is mapped, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limitation: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error("entering a user namespace as uid {uid}: {source}; unprivileged user namespaces may be disabled here (see `hoist doctor`), run as root otherwise")]
    Unshare { uid: u32, source: std::io::Error },
    #[error("mapping ids in hoist's user namespace: {0}")]
    Map(String),
}

static ENTERED: OnceLock<Rootless> = OnceLock::new();

/// The namespace this process entered with [`enter`], if it did.
pub fn entered() -> Option<&'static Rootless> {
    ENTERED.get()
}

/// Whether this process is in the initial user namespace (all 2^32 ids
/// mapped to themselves), where root's ownership and devices are real.
pub fn in_initial_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| is_identity_map(&m))
        .unwrap_or(true)
}

fn is_identity_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// The subordinate ranges `/etc/subuid`-style `text` grants to the user
/// `name` (or, as shadow-utils also accepts, its numeric `id`).
pub fn ranges_for(text: &str, name: Option<&str>, id: u32) -> Vec<IdRange> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if who != id && Some(who) != name {
                return None;
            }
            let range = IdRange {
                start: start.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            };
            (range.count > 0).then_some(range)
        })
        .collect()
}

/// The login name of `uid` from `/etc/passwd` (never NSS modules: hoist
/// loads no libraries, and subuid files name local users).
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    })
}

/// A `newuidmap`-style argument list: 0 → own id, then 1.. → the ranges.
fn map_args(own: u32, ranges: &[IdRange]) -> Vec<String> {
    let mut args = vec!["0".to_string(), own.to_string(), "1".to_string()];
    let mut inside = 1u64;
    for r in ranges {
        args.extend([inside.to_string(), r.start.to_string(), r.count.to_string()]);
        inside += u64::from(r.count);
    }
    args
}

fn extent(ranges: &[IdRange]) -> u64 {
    1 + ranges.iter().map(|r| u64::from(r.count)).sum::<u64>()
}

/// Where `newuidmap` or `newgidmap` is: the system's directories only,
/// never a PATH entry (`hoist doctor` reports what this finds).
pub fn find_helper(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Enter a new user namespace (and a mount namespace owned by it) as its
/// root. Call only from a single-threaded process that is not root.
pub fn enter(self_exe: &Path) -> Result<&'static Rootless, RootlessError> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = user_name(&passwd, uid);
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut subuids = ranges_for(&read("/etc/subuid"), name.as_deref(), uid);
    let mut subgids = ranges_for(&read("/etc/subgid"), name.as_deref(), uid);
    let helpers = (find_helper("newuidmap"), find_helper("newgidmap"));
    let who = name.clone().unwrap_or_else(|| uid.to_string());
    let mut limitation = match (&helpers, subuids.is_empty() || subgids.is_empty()) {
        (_, true) => Some(format!(
            "no subordinate ids for {who} in /etc/subuid and /etc/subgid"
        )),
        ((None, _), _) | ((_, None), _) => {
            Some("newuidmap/newgidmap (package uidmap) are not installed".to_string())
        }
        _ => None,
    };

    // The mapper must be started before the unshare: it stays in our
    // current namespace, where newuidmap checks its credentials.
    let mut mapper = match (&limitation, &helpers) {
        (None, (Some(nu), Some(ng))) => Some(
            Command::new(self_exe)
                .arg("__userns-map")
                .arg(nu)
                .arg(ng)
                .arg(map_args(uid, &subuids).join(" "))
                .arg(map_args(gid, &subgids).join(" "))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| RootlessError::Map(format!("starting the id mapper: {e}")))?,
        ),
        _ => None,
    };
    if let Err(source) = sys::unshare(UnshareFlags::NEWUSER) {
        if let Some(m) = mapper.as_mut() {
            let _ = m.kill(); // it only waits on its stdin
            let _ = m.wait();
        }
        return Err(RootlessError::Unshare { uid, source });
    }
    if let Some(mut m) = mapper {
        let mapped = m
            .stdin
            .take()
            .map(|mut s| s.write_all(b"m"))
            .unwrap_or(Ok(()));
        let mut err = String::new();
        if let Some(mut e) = m.stderr.take() {
            let _ = e.read_to_string(&mut err); // diagnostics only
        }
        let status = m.wait();
        if mapped.is_err() || !status.as_ref().is_ok_and(|s| s.success()) {
            // Still unmapped: fall back to mapping only ourselves.
            limitation = Some(format!(
                "newuidmap/newgidmap refused the subordinate ranges of {who}: {}",
                err.trim()
            ));
        }
    }
    if limitation.is_some() {
        subuids.clear();
        subgids.clear();
        // A process may map its own ids in a namespace it made, once
        // setgroups is denied.
        let own = std::fs::write("/proc/self/setgroups", "deny")
            .and_then(|()| std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n")))
            .and_then(|()| std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n")));
        own.map_err(|e| RootlessError::Map(format!("writing our own map: {e}")))?;
    }
    // Mounts made from here on (a run's overlay) are this process's own.
    sys::unshare(UnshareFlags::NEWNS)
        .map_err(|e| RootlessError::Map(format!("entering a mount namespace: {e}")))?;
    crate::confine::mounts::make_private()
        .map_err(|e| RootlessError::Map(format!("making mounts private: {e}")))?;
    let state = Rootless {
        host_uid: uid,
        host_gid: gid,
        mapped_uids: extent(&subuids),
        mapped_gids: extent(&subgids),
        subuids,
        subgids,
        limitation,
    };
    Ok(ENTERED.get_or_init(|| state))
}

/// `hoist __userns-map NEWUIDMAP NEWGIDMAP UIDMAP GIDMAP`: wait until the
/// parent says it has unshared (a byte on stdin), then map its ids.
pub fn map_stage(args: &[std::ffi::OsString]) -> i32 {
    let [nu, ng, uids, gids] = args else {
        crate::errln!("usage: hoist __userns-map NEWUIDMAP NEWGIDMAP UIDMAP GIDMAP");
        return 2;
    };
    let mut go = [0u8; 1];
    if std::io::stdin().read_exact(&mut go).is_err() {
        return 1; // the parent gave up before unsharing
    }
    let parent = rustix::process::getppid()
        .map(|p| p.as_raw_nonzero().get().to_string())
        .unwrap_or_default();
    for (helper, map) in [(nu, uids), (ng, gids)] {
        let map = map.to_string_lossy();
        let out = Command::new(helper)
            .arg(&parent)
            .args(map.split(' '))
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                crate::err!("{}", String::from_utf8_lossy(&o.stderr));
                return 1;
            }
            Err(e) => {
                crate::errln!("{}: {e}", Path::new(helper).display());
                return 1;
            }
        }
    }
    0
}

/// Wait (up to 10 s, while `alive` says so) until process `pid` has left
/// our user namespace, then map in its new one every id ours maps, each to
/// itself. Only a process with CAP_SETUID in the parent namespace may map
/// a range; the sandbox stage and the install jail wait for it.
pub fn map_ids_when_unshared(
    pid: i32,
    alive: &mut dyn FnMut() -> std::io::Result<bool>,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ns_of = |p: &str| std::fs::metadata(format!("/proc/{p}/ns/user")).map(|m| m.ino());
    let own = ns_of("self")?;
    let start = Instant::now();
    while ns_of(&pid.to_string())? == own {
        if !alive()? {
            return Err(std::io::Error::other(
                "it ended before entering its user namespace",
            ));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(std::io::Error::other(
                "it did not enter a user namespace within 10 s",
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for map in ["uid_map", "gid_map"] {
        let own = std::fs::read_to_string(format!("/proc/self/{map}"))?;
        std::fs::write(format!("/proc/{pid}/{map}"), identity_of(&own))?;
    }
    Ok(())
}

/// Each id our namespace maps, mapped to itself: one line per extent of
/// our own map, since a child's extent must lie within one of the
/// parent's (rootless hoist's map is root, then the subordinate ranges).
fn identity_of(own_map: &str) -> String {
    own_map
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3).then(|| format!("{} {} {}\n", f[0], f[0], f[2]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_follows_each_extent_of_our_map() {
        assert_eq!(identity_of("0 0 4294967295\n"), "0 0 4294967295\n");
        assert_eq!(
            identity_of("         0       1001          1\n         1     100000      65536\n"),
            "0 0 1\n1 1 65536\n"
        );
        assert_eq!(identity_of(""), "");
    }

    use super::*;

    #[test]
    fn ranges_by_name_or_id() {
        let text = "# x\nalice:100000:65536\n1001:200000:1000\nbob:300000:0\n\nalice:500000:10\n";
        assert_eq!(
            ranges_for(text, Some("alice"), 1000),
            vec![
                IdRange {
                    start: 100000,
                    count: 65536
                },
                IdRange {
                    start: 500000,
                    count: 10
                }
            ]
        );
        assert_eq!(
            ranges_for(text, Some("carol"), 1001),
            vec![IdRange {
                start: 200000,
                count: 1000
            }]
        );
        assert!(ranges_for(text, Some("bob"), 7).is_empty());
        assert!(ranges_for("garbage\nalice:x:1\n", Some("alice"), 1).is_empty());
    }

    #[test]
    fn map_arguments_stack_ranges_after_root() {
        let r = [
            IdRange {
                start: 100000,
                count: 65536,
            },
            IdRange { start: 5, count: 2 },
        ];
        assert_eq!(
            map_args(1000, &r).join(" "),
            "0 1000 1 1 100000 65536 65537 5 2"
        );
        assert_eq!(extent(&r), 65539);
        assert_eq!(extent(&[]), 1);
    }

    #[test]
    fn identity_map_detection() {
        assert!(is_identity_map("         0          0 4294967295\n"));
        assert!(!is_identity_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_identity_map("0 0 65536\n"));
    }

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/a:/bin/sh\n";
        assert_eq!(user_name(p, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(p, 5), None);
    }
}
