//! The tree digest record of a cache entry, `<entry>.treedigest`: the
//! digest of the entry's stored listing ([`read_stored_tree`]), written
//! when the entry was made, for `hoist store verify` to compare with.
//!
//! The listing is the stored view, not `hoist tree-digest`'s image view:
//! that one leaves out overlayfs's own xattrs (an opaque marker hides a
//! whole lower directory, a redirect or metacopy xattr points overlayfs
//! elsewhere), reads owners from `user.hoist.owner` instead of the inode,
//! and does not list the root directory (whose mode and owner an overlay
//! shows). A tamperer could change any of those and keep the image digest.
//!
//! Modification times are in (an overlay shows its layers' and tools act
//! on them), though the contract leaves them out (docs/rootfs.md). What is left
//! out, and why it cannot change what a run sees:
//! - atimes and ctimes, which reading and renaming change;
//! - `security.selinux`, which the host's policy stamps and relabels;
//! - `trusted.*` in the caches of unprivileged flavours, which their
//!   writer cannot see and their `userxattr` overlay mounts never read.
//!
//! Owners are recorded as host ids (mapped out through the writer's
//! `/proc/self/uid_map`), so real root can check a rootless user's cache
//! and that user can check it from inside hoist's user namespace.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{self, Durability};
use crate::digest::Digest;
use crate::rootfs::RootfsError;
use crate::treedigest::{read_stored_tree, Tree, TreeError};

/// The listing a record's digest is of. A record naming another listing
/// (written by a hoist that listed differently) cannot be compared.
pub const LISTING: &str = "hoist-stored-tree/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRecord {
    pub digest: Digest,
    pub listing: String,
    /// The cache directory the entry was made for (`layers`,
    /// `layers-userns-…`, `subtrees`, …): its flavour.
    pub cache: String,
    /// The hoist that wrote it, for a human reading the store.
    pub hoist: String,
}

/// Why an entry's record cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordProblem {
    /// No record: the entry was cached by a hoist older than the records.
    Missing,
    /// Not readable as a record of [`LISTING`].
    Unusable(String),
}

pub fn record_path(entry: &Path) -> PathBuf {
    entry.with_extension("treedigest")
}

/// The digest of the directory `dir` as an entry of the cache directory
/// named `cache`, seen from this process.
pub fn entry_digest(dir: &Path, cache: &str) -> Result<Digest, RootfsError> {
    let mut tree = read_stored_tree(dir)
        .map_err(|TreeError::Io { path, source }| RootfsError::Io { path, source })?;
    normalise(
        &mut tree,
        is_root_flavour(cache),
        &IdMaps::of_this_process(),
    );
    Ok(tree.digest())
}

/// Digest the complete directory `dir` and record it for the entry
/// `entry` (where `dir` is about to be renamed), by temp file and rename.
pub fn write(dir: &Path, entry: &Path, cache: &str) -> Result<TreeRecord, RootfsError> {
    let record = TreeRecord {
        digest: entry_digest(dir, cache)?,
        listing: LISTING.to_string(),
        cache: cache.to_string(),
        hoist: env!("CARGO_PKG_VERSION").to_string(),
    };
    let path = record_path(entry);
    let written = crate::json::to_vec(&record, "a cache entry's tree digest record")
        .map_err(std::io::Error::from)
        // Unsynced: the entry beside it is not synced either (see atomic).
        .and_then(|bytes| atomic::write(&path, &bytes, 0o644, Durability::Unsynced));
    written.map_err(|source| RootfsError::Io { path, source })?;
    Ok(record)
}

/// The record of `entry`, or why there is none to compare with.
pub fn read(entry: &Path) -> Result<TreeRecord, RecordProblem> {
    let path = record_path(entry);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RecordProblem::Missing),
        Err(e) => return Err(RecordProblem::Unusable(format!("{}: {e}", path.display()))),
    };
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Result<TreeRecord, RecordProblem> {
    let record: TreeRecord = serde_json::from_slice(bytes)
        .map_err(|e| RecordProblem::Unusable(format!("not a tree digest record: {e}")))?;
    if record.listing != LISTING {
        return Err(RecordProblem::Unusable(format!(
            "listing {:?}, this hoist compares {LISTING:?}",
            record.listing
        )));
    }
    Ok(record)
}

/// Real root's caches are `layers` and `subtrees`; the others carry a
/// flavour suffix (`-userns-…`, `-unprivileged`).
fn is_root_flavour(cache: &str) -> bool {
    !cache.contains('-')
}

/// A user namespace's id maps: (inside, outside, count) ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMaps {
    uid: Vec<(u32, u32, u32)>,
    gid: Vec<(u32, u32, u32)>,
}

impl IdMaps {
    fn of_this_process() -> IdMaps {
        // Unreadable maps (no /proc) mean no namespace to map out of.
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        IdMaps {
            uid: parse_id_map(&read("/proc/self/uid_map")),
            gid: parse_id_map(&read("/proc/self/gid_map")),
        }
    }
}

/// `/proc/PID/uid_map` lines: `inside outside count`.
fn parse_id_map(text: &str) -> Vec<(u32, u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(str::parse::<u32>);
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(i)), Some(Ok(o)), Some(Ok(c))) => Some((i, o, c)),
                _ => None,
            }
        })
        .collect()
}

/// The host id of `id` as seen inside the namespace; an id the map does
/// not cover (none, when there is no map) is kept.
fn to_host(map: &[(u32, u32, u32)], id: u32) -> u32 {
    map.iter()
        .find(|(inside, _, count)| id >= *inside && u64::from(id - inside) < u64::from(*count))
        .map(|(inside, outside, _)| outside + (id - inside))
        .unwrap_or(id)
}

/// Bring a stored tree to what its record covers (see the module docs).
fn normalise(tree: &mut Tree, root_flavour: bool, maps: &IdMaps) {
    for e in tree.entries.values_mut() {
        e.xattrs
            .retain(|k, _| k != "security.selinux" && (root_flavour || !k.starts_with("trusted.")));
        e.uid = to_host(&maps.uid, e.uid);
        e.gid = to_host(&maps.gid, e.gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::treedigest::{Entry, Kind};
    use std::collections::BTreeMap;

    #[test]
    fn ids_map_out_through_the_ranges() {
        let map =
            parse_id_map("         0       1000          1\n         1     100000      65536\n");
        assert_eq!(map, vec![(0, 1000, 1), (1, 100000, 65536)]);
        assert_eq!(to_host(&map, 0), 1000);
        assert_eq!(to_host(&map, 1), 100000);
        assert_eq!(to_host(&map, 65536), 165535);
        // Past the ranges (the kernel shows such ids as the overflow id).
        assert_eq!(to_host(&map, 65537), 65537);
        let identity = parse_id_map("0 0 4294967295\n");
        assert_eq!(to_host(&identity, 4294967294), 4294967294);
        assert_eq!(to_host(&[], 7), 7);
    }

    fn entry(xattrs: &[(&str, &[u8])]) -> Entry {
        Entry {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            content: None,
            link: None,
            rdev: None,
            xattrs: xattrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect::<BTreeMap<_, _>>(),
            mtime: None,
        }
    }

    #[test]
    fn overlay_markers_stay_in_the_flavour_that_reads_them() {
        let all: [(&str, &[u8]); 4] = [
            ("trusted.overlay.opaque", b"y"),
            ("user.overlay.opaque", b"y"),
            ("user.hoist.owner", b"0:0"),
            ("security.selinux", b"system_u:object_r:x"),
        ];
        let mut tree = Tree::default();
        tree.entries.insert(b"d".to_vec(), entry(&all));
        let names = |t: &Tree| -> Vec<String> {
            t.entries[&b"d".to_vec()].xattrs.keys().cloned().collect()
        };
        let mut root = tree.clone();
        normalise(&mut root, true, &IdMaps::default());
        assert_eq!(
            names(&root),
            [
                "trusted.overlay.opaque",
                "user.hoist.owner",
                "user.overlay.opaque"
            ]
        );
        let mut userns = tree.clone();
        normalise(&mut userns, false, &IdMaps::default());
        assert_eq!(names(&userns), ["user.hoist.owner", "user.overlay.opaque"]);
    }

    #[test]
    fn owners_are_recorded_as_host_ids() {
        let mut tree = Tree::default();
        tree.entries.insert(b"f".to_vec(), entry(&[]));
        let maps = IdMaps {
            uid: vec![(0, 1000, 1), (1, 100000, 65536)],
            gid: vec![(0, 1000, 1), (1, 100000, 65536)],
        };
        normalise(&mut tree, false, &maps);
        let e = &tree.entries[&b"f".to_vec()];
        assert_eq!((e.uid, e.gid), (1000, 1000));
    }

    #[test]
    fn records_of_another_listing_are_unusable() {
        let good = format!(
            r#"{{"digest":"sha256:{}","listing":"{LISTING}","cache":"layers","hoist":"0.1.0"}}"#,
            "a".repeat(64)
        );
        assert!(parse(good.as_bytes()).is_ok());
        let other = good.replace(LISTING, "hoist-stored-tree/v0");
        assert!(matches!(
            parse(other.as_bytes()),
            Err(RecordProblem::Unusable(_))
        ));
        assert!(matches!(parse(b"{"), Err(RecordProblem::Unusable(_))));
    }

    #[test]
    fn the_flavour_is_the_cache_directory_suffix() {
        assert!(is_root_flavour("layers"));
        assert!(is_root_flavour("subtrees"));
        assert!(!is_root_flavour("layers-userns-0123456789ab"));
        assert!(!is_root_flavour("subtrees-unprivileged"));
    }
}
