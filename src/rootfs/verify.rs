//! `hoist store verify`: re-hash every blob, compare every cached layer
//! and subtree with the tree digest recorded when it was made
//! ([`cache::record`]), and drop what differs.
//!
//! Locks, as `hoist gc` and the layer cache take them: the store's gc lock
//! exclusively (no pull or bake is writing blobs or using a subtree), then
//! each entry's own `<key>.lock` (no unpack of it is in progress). A cache
//! entry may also be a lower layer of a mounted overlay, which holds no
//! lock: an entry to drop is first renamed aside (so no new run finds it,
//! and ensure_layer unpacks it afresh), and then removed only if no run is
//! live. Checking for live runs after the rename closes the race with a
//! run starting: a run that found the entry before the rename either
//! already has its run directory (live: the entry stays, moved aside) or
//! mounts after the rename, which fails on the missing path rather than
//! reading a half-removed tree.
//!
//! An entry without a record (cached by an older hoist) is dropped, not
//! re-derived: nothing says what it held when it was made, and the next
//! run that needs it unpacks it again, from its verified blob, at the
//! cost verify would have paid to check it. An entry that cannot be read
//! whole is dropped for the same reason. A blob that cannot be read is
//! only reported: it may be the one copy of an image.

use std::fs;
use std::path::{Path, PathBuf};

use super::cache::{self, cache_dirs, entry_lock_path, lock_file, record, remove_tree, stats_path};
use super::{gc, RootfsError};
use crate::digest::Digest;
use crate::store::verify::{Action, Dropped, Kind, NotChecked, Reason, VerifyReport};
use crate::store::Store;

/// Verify the whole store; see the module docs.
pub fn verify(store: &Store) -> Result<VerifyReport, RootfsError> {
    let as_io = |e: crate::store::StoreError| RootfsError::Io {
        path: store.root().to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let _gc = store.gc_lock_exclusive().map_err(as_io)?;
    let mut report = VerifyReport::default();
    store.verify_blobs(&mut report).map_err(as_io)?;
    for dir in cache_dirs(store, "layers") {
        for alg in ["sha256", "sha512"] {
            verify_cache_dir(store, &dir, &dir.join(alg), Kind::Layer, &mut report);
        }
    }
    for dir in cache_dirs(store, "subtrees") {
        verify_cache_dir(store, &dir, &dir, Kind::Subtree, &mut report);
    }
    Ok(report)
}

/// Check every entry of one cache directory (`entries` holds them; `cache`
/// is the flavoured directory that names how they were made).
fn verify_cache_dir(
    store: &Store,
    cache: &Path,
    entries: &Path,
    kind: Kind,
    report: &mut VerifyReport,
) {
    let name = cache::cache_name(cache);
    let Ok(listing) = fs::read_dir(entries) else {
        return;
    };
    let mut names: Vec<String> = listing
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if !readable_flavour(&name) {
        if names.iter().any(|n| !n.contains('.')) {
            report.not_checked.push(NotChecked {
                path: cache.to_path_buf(),
                why: format!(
                    "made by hoist running as another user ({name}): run `hoist store verify` as root or as that user"
                ),
            });
        }
        return;
    }
    let digest_of = |key: &str| match kind {
        Kind::Subtree => format!("sha256:{key}"),
        _ => format!(
            "{}:{key}",
            entries.file_name().unwrap_or_default().to_string_lossy()
        ),
    };
    for n in &names {
        let path = entries.join(n);
        if n.contains(".dropped-") {
            purge_aside(store, &path, report);
        } else if !n.contains('.') {
            match kind {
                Kind::Subtree => report.subtrees += 1,
                _ => report.layers += 1,
            }
            verify_entry(store, &path, &name, kind, digest_of(n), report);
        }
    }
}

/// Whether this process sees a cache of flavour `cache` as its writer did:
/// real root sees every flavour's; anyone else only their own.
fn readable_flavour(cache: &str) -> bool {
    let flavour = cache::flavour();
    flavour.is_empty() || cache.ends_with(flavour)
}

fn verify_entry(
    store: &Store,
    entry: &Path,
    cache: &str,
    kind: Kind,
    digest: String,
    report: &mut VerifyReport,
) {
    let _lock = match lock_file(&entry_lock_path(entry)) {
        Ok(l) => {
            keep_lock_usable(&l, entry);
            l
        }
        Err(e) => {
            report.not_checked.push(NotChecked {
                path: entry.to_path_buf(),
                why: format!("could not take its lock: {e}"),
            });
            return;
        }
    };
    let reason = match check_entry(entry, cache) {
        Ok(None) => return,
        Ok(Some(reason)) => reason,
        // Removed since the listing (gc, or another verify): nothing to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => Reason::Unreadable { why: e.to_string() },
    };
    match drop_entry(store, entry, report) {
        Ok(action) => report.dropped.push(Dropped {
            kind,
            digest,
            path: entry.to_path_buf(),
            reason,
            action,
        }),
        Err(e) => report.not_checked.push(NotChecked {
            path: entry.to_path_buf(),
            why: format!("{kind} {digest} must be dropped but could not be: {e}"),
        }),
    }
}

/// Real root checking a rootless user's cache may have just created the
/// entry's lock file: give it to the owner of the cache directory, or that
/// user's hoist could no longer open it to unpack the entry.
fn keep_lock_usable(lock: &fs::File, entry: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(mine), Some(Ok(dir))) = (lock.metadata(), entry.parent().map(fs::metadata)) else {
        return;
    };
    if (mine.uid(), mine.gid()) == (dir.uid(), dir.gid()) {
        return;
    }
    let owner = (
        rustix::fs::Uid::from_raw(dir.uid()),
        rustix::fs::Gid::from_raw(dir.gid()),
    );
    if let Err(e) = rustix::fs::fchown(lock, Some(owner.0), Some(owner.1)) {
        tracing::warn!(path = %entry_lock_path(entry).display(), error = %e, "could not give a lock file to its cache's owner");
    }
}

/// What is wrong with the cache entry `entry`, if anything.
fn check_entry(entry: &Path, cache: &str) -> std::io::Result<Option<Reason>> {
    let meta = fs::symlink_metadata(entry)?;
    if !meta.is_dir() {
        let found = if meta.is_symlink() {
            "a symlink"
        } else {
            "not a directory"
        };
        return Ok(Some(Reason::WrongType {
            found: found.to_string(),
        }));
    }
    let recorded = match record::read(entry) {
        Ok(r) => r.digest,
        Err(record::RecordProblem::Missing) => return Ok(Some(Reason::NoRecord)),
        Err(record::RecordProblem::Unusable(why)) => return Ok(Some(Reason::BadRecord { why })),
    };
    let found = match record::entry_digest(entry, cache) {
        Ok(d) => d,
        Err(RootfsError::Io { path, source }) => {
            return Ok(Some(Reason::Unreadable {
                why: format!("{}: {source}", path.display()),
            }))
        }
        Err(e) => return Ok(Some(Reason::Unreadable { why: e.to_string() })),
    };
    Ok(differs(recorded, found))
}

fn differs(recorded: Digest, found: Digest) -> Option<Reason> {
    (recorded != found).then_some(Reason::TreeDigest { recorded, found })
}

/// Take `entry` out of the cache (holding its lock): rename it aside, drop
/// its records, and remove it unless a live run may have it mounted.
fn drop_entry(
    store: &Store,
    entry: &Path,
    report: &mut VerifyReport,
) -> Result<Action, RootfsError> {
    let aside = aside_path(entry);
    fs::rename(entry, &aside).map_err(|source| RootfsError::Io {
        path: entry.to_path_buf(),
        source,
    })?;
    for rec in [stats_path(entry), record::record_path(entry)] {
        match fs::remove_file(&rec) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RootfsError::Io {
                    path: rec,
                    source: e,
                })
            }
            _ => {}
        }
    }
    // After the rename, not before: see the module docs.
    if !gc::live_runs(store).is_empty() {
        return Ok(Action::MovedAside { to: aside });
    }
    // Out of the cache's way already; what stays (an immutable file, say)
    // is reported, and the next verify tries again.
    if let Err(e) = remove_tree(&aside) {
        report.not_checked.push(NotChecked {
            path: aside.clone(),
            why: format!("could not remove a dropped entry: {e}"),
        });
        return Ok(Action::MovedAside { to: aside });
    }
    Ok(Action::Removed)
}

/// `<key>.dropped-<pid>-<n>` beside the entry: its key first, so `hoist
/// gc` sweeps it with the entry's other companions.
fn aside_path(entry: &Path) -> PathBuf {
    let name = entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid = std::process::id();
    (0u32..)
        .map(|n| entry.with_file_name(format!("{name}.dropped-{pid}-{n}")))
        .find(|p| fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| entry.with_file_name(format!("{name}.dropped-{pid}")))
}

/// Remove an entry an earlier verify moved aside, once no run is live.
fn purge_aside(store: &Store, path: &Path, report: &mut VerifyReport) {
    if !gc::live_runs(store).is_empty() {
        return;
    }
    if let Err(e) = remove_tree(path) {
        report.not_checked.push(NotChecked {
            path: path.to_path_buf(),
            why: format!("could not remove an entry dropped earlier: {e}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_names_keep_the_key_first() {
        let t = tempfile::tempdir().unwrap();
        let entry = t.path().join("abc");
        let a = aside_path(&entry);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("abc.dropped-"), "{name}");
        assert_eq!(name.split('.').next(), Some("abc"));
        fs::create_dir(&a).unwrap();
        assert_ne!(aside_path(&entry), a);
    }

    #[test]
    fn only_a_different_digest_differs() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        assert_eq!(differs(a.clone(), a.clone()), None);
        assert_eq!(
            differs(a.clone(), b.clone()),
            Some(Reason::TreeDigest {
                recorded: a,
                found: b
            })
        );
    }
}
