//! `hoist store verify`, the blob half and the report: every file under
//! `blobs/ALG/` must hash to its name. A blob that does not is dropped
//! (removed), so the next pull fetches it again: [`Store::has_blob`]
//! trusts a present file of the right size, and only this check looks at
//! its bytes again. The layer and subtree caches are checked by
//! `rootfs::verify`, which fills the rest of the [`VerifyReport`].

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use serde::Serialize;

use super::{io_err, Store, StoreError};
use crate::digest::Digest;

/// What `hoist store verify` checked, dropped and could not check.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub blobs: usize,
    pub layers: usize,
    pub subtrees: usize,
    pub dropped: Vec<Dropped>,
    pub not_checked: Vec<NotChecked>,
}

impl VerifyReport {
    /// Everything verified: nothing dropped, nothing left unchecked.
    pub fn clean(&self) -> bool {
        self.dropped.is_empty() && self.not_checked.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Blob,
    Layer,
    Subtree,
}

/// One thing removed from the store, and why.
#[derive(Debug, Serialize)]
pub struct Dropped {
    pub kind: Kind,
    /// The blob's or layer's digest, or a subtree's cache key.
    pub digest: String,
    pub path: PathBuf,
    pub reason: Reason,
    pub action: Action,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Reason {
    /// The blob's bytes hash to another digest.
    Hash { found: Digest },
    /// A symlink, directory, device or fifo where a file or directory
    /// belongs.
    WrongType { found: String },
    /// A file under `blobs/ALG/` whose name is no digest of ALG.
    NotADigest,
    /// The cache entry's tree digest is not the one recorded.
    TreeDigest { recorded: Digest, found: Digest },
    /// A cache entry with no tree digest record (an older hoist's).
    NoRecord,
    /// A record that cannot be compared (garbled, another listing).
    BadRecord { why: String },
    /// The cache entry could not be read whole.
    Unreadable { why: String },
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Removed,
    /// A live run may have the entry mounted as an overlay lower layer:
    /// it is renamed out of the cache's way (no new run uses it) and
    /// removed by the next verify that finds no live run.
    MovedAside {
        to: PathBuf,
    },
}

/// Something verify could not check, or could not drop.
#[derive(Debug, Serialize)]
pub struct NotChecked {
    pub path: PathBuf,
    pub why: String,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Blob => "blob",
            Kind::Layer => "layer",
            Kind::Subtree => "subtree",
        })
    }
}

impl fmt::Display for Dropped {
    /// One line: `blob sha256:… hashes to sha256:…`, `layer sha256:… tree
    /// digest differs: recorded …, found …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.kind, self.digest)?;
        match &self.reason {
            Reason::Hash { found } => write!(f, "hashes to {found}")?,
            Reason::WrongType { found } => write!(f, "is {found}")?,
            Reason::NotADigest => write!(f, "is not named by a digest ({})", self.path.display())?,
            Reason::TreeDigest { recorded, found } => {
                write!(f, "tree digest differs: recorded {recorded}, found {found}")?
            }
            Reason::NoRecord => write!(f, "has no tree digest record (cached by an older hoist)")?,
            Reason::BadRecord { why } => write!(f, "has an unusable tree digest record: {why}")?,
            Reason::Unreadable { why } => write!(f, "could not be read: {why}")?,
        }
        if let Action::MovedAside { to } = &self.action {
            write!(
                f,
                "; a live run may have it mounted, so it was moved aside to {} until none is",
                to.display()
            )?;
        }
        Ok(())
    }
}

impl Store {
    /// Re-hash every blob, remove each that does not hash to its name, and
    /// add what was checked and dropped to `report`.
    pub fn verify_blobs(&self, report: &mut VerifyReport) -> Result<(), StoreError> {
        for alg in ["sha256", "sha512"] {
            let dir = self.root().join("blobs").join(alg);
            let names = match fs::read_dir(&dir) {
                Ok(rd) => rd
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io_err(&dir))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for name in names {
                let name = name.to_string_lossy().into_owned();
                // A write in progress or one a crash left (crate::atomic):
                // never read as a blob, and gc removes it.
                if name.starts_with(crate::atomic::TEMP_PREFIX) {
                    continue;
                }
                let path = dir.join(&name);
                report.blobs += 1;
                let label = format!("{alg}:{name}");
                let reason = match format!("{alg}:{name}").parse::<Digest>() {
                    Err(_) => Some(Reason::NotADigest),
                    Ok(digest) => match check_blob(&path, &digest) {
                        Ok(problem) => problem,
                        Err(e) => {
                            report.not_checked.push(NotChecked {
                                path,
                                why: format!("reading the blob: {e}"),
                            });
                            continue;
                        }
                    },
                };
                if let Some(reason) = reason {
                    drop_blob(report, label, path, reason);
                }
            }
        }
        Ok(())
    }
}

fn drop_blob(report: &mut VerifyReport, digest: String, path: PathBuf, reason: Reason) {
    let removed = match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
        _ => fs::remove_file(&path),
    };
    match removed {
        Ok(()) => report.dropped.push(Dropped {
            kind: Kind::Blob,
            digest,
            path,
            reason,
            action: Action::Removed,
        }),
        Err(e) => report.not_checked.push(NotChecked {
            why: format!("blob {digest} must be dropped but could not be removed: {e}"),
            path,
        }),
    }
}

/// What is wrong with the blob file at `path`, expected to hash to
/// `digest`; `None` when nothing is.
fn check_blob(path: &Path, digest: &Digest) -> io::Result<Option<Reason>> {
    let meta = fs::symlink_metadata(path)?;
    if let Some(found) = wrong_type(&meta) {
        return Ok(Some(Reason::WrongType { found }));
    }
    // NOFOLLOW and NONBLOCK: whatever replaced the file since the lstat,
    // opening it neither follows a link nor waits on a fifo.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::open(path, flags, Mode::empty())?);
    if let Some(found) = wrong_type(&file.metadata()?) {
        return Ok(Some(Reason::WrongType { found }));
    }
    let found = hash(file, digest)?;
    Ok((&found != digest).then_some(Reason::Hash { found }))
}

/// What a blob is when it is not a regular file.
fn wrong_type(meta: &fs::Metadata) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return None;
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    Some(what.to_string())
}

fn hash(mut file: File, like: &Digest) -> io::Result<Digest> {
    let mut h = like.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(blobs: &[&[u8]]) -> (tempfile::TempDir, Store, Vec<Digest>) {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let digests = blobs
            .iter()
            .map(|b| {
                let d = Digest::sha256_of(b);
                store.put_blob(&d, b).unwrap();
                d
            })
            .collect();
        (t, store, digests)
    }

    #[test]
    fn good_blobs_verify() {
        let (_t, store, _) = store_with(&[b"one", b"two"]);
        let mut report = VerifyReport::default();
        store.verify_blobs(&mut report).unwrap();
        assert_eq!(report.blobs, 2);
        assert!(report.clean(), "{report:?}");
    }

    #[test]
    fn a_changed_blob_is_dropped_with_what_it_hashes_to() {
        let (_t, store, d) = store_with(&[b"one", b"two"]);
        let path = store.blob_path(&d[0]);
        fs::write(&path, b"one!").unwrap();
        let mut report = VerifyReport::default();
        store.verify_blobs(&mut report).unwrap();
        assert_eq!(report.dropped.len(), 1, "{report:?}");
        let line = report.dropped[0].to_string();
        let found = Digest::sha256_of(b"one!");
        assert_eq!(line, format!("blob {} hashes to {found}", d[0]));
        assert!(!path.exists());
        assert!(store.has_blob(&d[1], 3));
    }

    #[test]
    fn links_fifos_and_strays_are_dropped_without_being_followed() {
        let (_t, store, d) = store_with(&[b"one", b"two"]);
        let (a, b) = (store.blob_path(&d[0]), store.blob_path(&d[1]));
        fs::remove_file(&a).unwrap();
        // A link to a file with the right content is still not the blob.
        let elsewhere = store.root().join("elsewhere");
        fs::write(&elsewhere, b"one").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &a).unwrap();
        fs::remove_file(&b).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &b,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        fs::write(b.with_file_name("not-a-digest"), b"").unwrap();
        let mut report = VerifyReport::default();
        store.verify_blobs(&mut report).unwrap();
        let mut reasons: Vec<_> = report.dropped.iter().map(|x| &x.reason).collect();
        reasons.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            reasons,
            [
                &Reason::NotADigest,
                &Reason::WrongType {
                    found: "a fifo".into()
                },
                &Reason::WrongType {
                    found: "a symlink".into()
                },
            ]
        );
        assert!(elsewhere.exists(), "the link's target is left alone");
        let mut again = VerifyReport::default();
        store.verify_blobs(&mut again).unwrap();
        assert!(again.clean(), "{again:?}");
    }
}
