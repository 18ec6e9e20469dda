//! The store on a temp directory: its layout, blobs verified on the way
//! in and out, ingest's refusals and resumption, atomic writes, the index
//! and its lookups, use times and locks.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

use super::*;
use crate::manifest::OCI_MANIFEST;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("store")).unwrap();
    (d, s)
}

fn desc(bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: OCI_MANIFEST.to_string(),
        digest: Digest::sha256_of(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: None,
        urls: None,
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn ingest(s: &Store, d: &Descriptor) -> Ingest {
    match s.begin(d).unwrap() {
        Begin::Ingest(i) => *i,
        Begin::Present => panic!("{} is present already", d.digest),
    }
}

/// Whether another open file description could take `op` on `path` now.
fn lockable(path: &Path, op: FlockOperation) -> bool {
    let f = File::open(path).unwrap();
    rustix::fs::flock(&f, op).is_ok()
}

// ---- the layout ---------------------------------------------------------

#[test]
fn open_makes_an_oci_layout_and_hoists_own_directories() {
    let (_d, s) = store();
    assert_eq!(
        fs::read_to_string(s.root().join("oci-layout")).unwrap(),
        OCI_LAYOUT
    );
    let index = s.index().unwrap();
    assert_eq!(index.schema_version, 2);
    assert_eq!(index.media_type.as_deref(), Some(OCI_INDEX));
    assert!(index.manifests.is_empty());
    for dir in ["blobs/sha256", "blobs/sha512", "ingest"] {
        assert!(s.root().join(dir).is_dir(), "{dir}");
    }
    // Readable by all, as skopeo writes layouts.
    let mode = fs::metadata(s.root().join("index.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, BLOB_MODE);
}

#[test]
fn opening_again_keeps_what_is_there() {
    let (_d, s) = store();
    s.record("a", &desc(b"x")).unwrap();
    let again = Store::open(s.root()).unwrap();
    assert!(again.lookup("a").unwrap().is_some());
}

#[test]
fn a_directory_without_the_marker_is_not_a_layout() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("index.json"), "{}").unwrap();
    let e = Store::view(d.path()).index().unwrap_err();
    assert!(matches!(e, StoreError::NotALayout { .. }), "{e}");
    fs::write(d.path().join("oci-layout"), OCI_LAYOUT).unwrap();
    fs::write(d.path().join("index.json"), "not json").unwrap();
    let e = Store::view(d.path()).index().unwrap_err();
    assert!(matches!(e, StoreError::BadIndex { .. }), "{e}");
}

#[test]
fn view_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::view(&d.path().join("none"));
    assert!(!s.root().exists());
    assert!(s.lookup("x").is_err());
    assert!(!s.root().exists());
}

#[test]
fn blob_paths_are_by_algorithm_and_hex() {
    let (_d, s) = store();
    let d = Digest::sha256_of(b"x");
    assert_eq!(s.blob_path(&d), s.root().join("blobs/sha256").join(d.hex()));
}

// ---- blobs ---------------------------------------------------------------

#[test]
fn put_blob_verifies_and_read_blob_verifies_again() {
    let (_d, s) = store();
    let d = Digest::sha256_of(b"manifest");
    s.put_blob(&d, b"manifest").unwrap();
    assert!(s.has_blob(&d, 8));
    assert!(!s.has_blob(&d, 9), "a blob of another size is not it");
    assert_eq!(s.read_blob(&d, 1024).unwrap(), b"manifest");
    // Someone else's write to the disk is caught on the way out.
    fs::write(s.blob_path(&d), b"manifesT").unwrap();
    let e = s.read_blob(&d, 1024).unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
}

#[test]
fn put_blob_refuses_bytes_that_are_not_the_digest() {
    let (_d, s) = store();
    let d = Digest::sha256_of(b"good");
    let e = s.put_blob(&d, b"evil").unwrap_err();
    match e {
        StoreError::DigestMismatch { expected, found } => {
            assert_eq!(expected, d);
            assert_eq!(found, Digest::sha256_of(b"evil"));
        }
        e => panic!("{e}"),
    }
    assert!(!s.blob_path(&d).exists());
    assert!(names(&s.root().join("blobs/sha256")).is_empty());
}

#[test]
fn read_blob_bounds_and_names_what_is_missing() {
    let (_d, s) = store();
    let d = Digest::sha256_of(b"0123456789");
    assert!(matches!(
        s.read_blob(&d, 100).unwrap_err(),
        StoreError::Missing { .. }
    ));
    s.put_blob(&d, b"0123456789").unwrap();
    match s.read_blob(&d, 4).unwrap_err() {
        StoreError::SizeMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected, 4);
            assert_eq!(found, 5, "reading stops one byte past the bound");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn verify_bytes_names_both_digests() {
    let d = Digest::sha256_of(b"a");
    assert!(verify_bytes(&d, b"a").is_ok());
    let e = verify_bytes(&d, b"b").unwrap_err();
    assert!(e.to_string().contains(&d.to_string()), "{e}");
}

// ---- ingest ---------------------------------------------------------------

#[test]
fn ingest_commits_only_what_hashes_to_the_digest() {
    let (_d, s) = store();
    let d = desc(b"layer bytes");
    let mut i = ingest(&s, &d);
    assert_eq!(i.offset(), 0);
    i.write(b"layer ").unwrap();
    i.write(b"bytes").unwrap();
    i.commit().unwrap();
    assert_eq!(fs::read(s.blob_path(&d.digest)).unwrap(), b"layer bytes");
    assert!(matches!(s.begin(&d).unwrap(), Begin::Present));
    // Only the lock is left in ingest/, no partial.
    assert!(names(&s.ingest_dir()).iter().all(|n| n.ends_with(".lock")));
}

#[test]
fn a_digest_mismatch_leaves_no_blob_and_no_partial() {
    let (_d, s) = store();
    let d = desc(b"expected!");
    let mut i = ingest(&s, &d);
    i.write(b"different").unwrap();
    let e = i.commit().unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(!s.blob_path(&d.digest).exists());
    assert!(!s.has_blob(&d.digest, d.size));
    assert!(
        names(&s.ingest_dir()).iter().all(|n| n.ends_with(".lock")),
        "{:?}",
        names(&s.ingest_dir())
    );
    // The next attempt starts from nothing.
    assert_eq!(ingest(&s, &d).offset(), 0);
}

#[test]
fn more_bytes_than_the_descriptor_says_are_refused_at_once() {
    let (_d, s) = store();
    let d = desc(b"four");
    let mut i = ingest(&s, &d);
    i.write(b"fo").unwrap();
    match i.write(b"urX").unwrap_err() {
        StoreError::SizeMismatch {
            expected, found, ..
        } => assert_eq!((expected, found), (4, 5)),
        e => panic!("{e}"),
    }
    let short = ingest_after_drop(&s, &d, i);
    match short.commit().unwrap_err() {
        StoreError::SizeMismatch {
            expected, found, ..
        } => assert_eq!((expected, found), (4, 2)),
        e => panic!("{e}"),
    }
    assert!(!s.blob_path(&d.digest).exists());
}

/// Drop `i` (its lock goes with it) and begin again.
fn ingest_after_drop(s: &Store, d: &Descriptor, i: Ingest) -> Ingest {
    drop(i);
    ingest(s, d)
}

#[test]
fn an_interrupted_download_resumes_with_its_bytes_hashed() {
    let (_d, s) = store();
    let d = desc(b"first half, second half");
    let mut i = ingest(&s, &d);
    i.write(b"first half, ").unwrap();
    let mut i = ingest_after_drop(&s, &d, i);
    assert_eq!(i.offset(), 12);
    i.write(b"second half").unwrap();
    i.commit().unwrap();
    assert_eq!(
        s.read_blob(&d.digest, 100).unwrap(),
        b"first half, second half"
    );
}

#[test]
fn a_partial_longer_than_the_blob_starts_over() {
    let (_d, s) = store();
    let d = desc(b"abc");
    let partial = s
        .ingest_dir()
        .join(format!("sha256-{}.partial", d.digest.hex()));
    fs::write(&partial, b"far too long").unwrap();
    let mut i = ingest(&s, &d);
    assert_eq!(i.offset(), 0);
    i.write(b"abc").unwrap();
    i.commit().unwrap();
    assert!(s.has_blob(&d.digest, 3));
}

#[test]
fn reset_starts_again_from_byte_zero() {
    let (_d, s) = store();
    let d = desc(b"right");
    let mut i = ingest(&s, &d);
    i.write(b"wro").unwrap();
    i.reset().unwrap();
    assert_eq!(i.offset(), 0);
    i.write(b"right").unwrap();
    i.commit().unwrap();
    assert!(s.has_blob(&d.digest, 5));
}

#[test]
fn an_ingest_holds_its_blobs_lock() {
    let (_d, s) = store();
    let d = desc(b"locked");
    let lock = s
        .ingest_dir()
        .join(format!("sha256-{}.lock", d.digest.hex()));
    let i = ingest(&s, &d);
    assert!(!lockable(&lock, FlockOperation::NonBlockingLockExclusive));
    drop(i);
    assert!(lockable(&lock, FlockOperation::NonBlockingLockExclusive));
}

// ---- write_atomic -----------------------------------------------------------

#[test]
fn write_atomic_replaces_whole_and_leaves_no_temp() {
    let (_d, s) = store();
    let p = s.root().join("some.json");
    s.write_atomic(&p, b"a longer first version").unwrap();
    s.write_atomic(&p, b"short").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"short");
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        BLOB_MODE
    );
    let left: Vec<String> = names(s.root())
        .into_iter()
        .filter(|n| n.starts_with(crate::atomic::TEMP_PREFIX))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn write_atomic_names_the_path_it_could_not_write() {
    let (_d, s) = store();
    let p = s.root().join("no/such/dir/file");
    match s.write_atomic(&p, b"x").unwrap_err() {
        StoreError::Io { path, .. } => assert_eq!(path, p),
        e => panic!("{e}"),
    }
}

// ---- the index ----------------------------------------------------------------

#[test]
fn record_names_lookup_finds_and_a_new_record_replaces() {
    let (_d, s) = store();
    let (a, b) = (desc(b"a"), desc(b"b"));
    s.record("reg/b:1", &b).unwrap();
    s.record("reg/a:1", &a).unwrap();
    let found = s.lookup("reg/a:1").unwrap().unwrap();
    assert_eq!(found.digest, a.digest);
    assert_eq!(ref_name_of(&found), Some("reg/a:1"));
    assert!(s.lookup("reg/c:1").unwrap().is_none());
    // Sorted by name.
    let index = s.index().unwrap();
    let order: Vec<_> = index.manifests.iter().filter_map(ref_name).collect();
    assert_eq!(order, ["reg/a:1", "reg/b:1"]);
    // The same name again points at the new manifest, once.
    s.record("reg/a:1", &b).unwrap();
    let index = s.index().unwrap();
    assert_eq!(index.manifests.len(), 2);
    assert_eq!(s.lookup("reg/a:1").unwrap().unwrap().digest, b.digest);
}

#[test]
fn recording_an_unchanged_entry_rewrites_nothing() {
    let (_d, s) = store();
    let a = desc(b"a");
    s.record("x", &a).unwrap();
    let index = s.root().join("index.json");
    let past = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(&index)
        .unwrap()
        .set_modified(past)
        .unwrap();
    s.record("x", &a).unwrap();
    assert_eq!(fs::metadata(&index).unwrap().modified().unwrap(), past);
}

#[test]
fn an_empty_name_resolves_only_a_lone_entry() {
    let (_d, s) = store();
    assert!(s.lookup("").unwrap().is_none());
    s.record("one", &desc(b"1")).unwrap();
    assert_eq!(
        s.lookup("").unwrap().unwrap().digest,
        Digest::sha256_of(b"1")
    );
    s.record("two", &desc(b"2")).unwrap();
    assert!(s.lookup("").unwrap().is_none());
}

#[test]
fn forget_drops_what_it_picks_and_returns_it() {
    let (_d, s) = store();
    let (a, b) = (desc(b"a"), desc(b"b"));
    s.record("a", &a).unwrap();
    s.record("b", &b).unwrap();
    let gone = s.forget(|d| d.digest == a.digest).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(ref_name(&gone[0]), Some("a"));
    assert!(s.lookup("a").unwrap().is_none());
    assert!(s.lookup("b").unwrap().is_some());
    // The blob stays until gc.
    assert!(s.forget(|_| false).unwrap().is_empty());
    assert_eq!(s.index().unwrap().manifests.len(), 1);
}

#[test]
fn the_index_lock_is_released_after_each_change() {
    let (_d, s) = store();
    s.record("a", &desc(b"a")).unwrap();
    let lock = s.root().join("index.json.lock");
    assert!(lockable(&lock, FlockOperation::NonBlockingLockExclusive));
    let _held = s.index_lock().unwrap();
    assert!(!lockable(&lock, FlockOperation::NonBlockingLockExclusive));
}

// ---- use times ------------------------------------------------------------------

#[test]
fn mark_used_and_last_used() {
    let (_d, s) = store();
    let m = Digest::sha256_of(b"manifest");
    assert_eq!(s.last_used(&m), None);
    s.mark_used(&m).unwrap();
    let path = s.root().join("used").join(m.hex());
    assert!(path.is_file());
    // Set it in the past, then use it again: the time moves on.
    let past = SystemTime::now() - Duration::from_secs(86400);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(past)
        .unwrap();
    assert_eq!(s.last_used(&m), Some(past));
    s.mark_used(&m).unwrap();
    assert!(s.last_used(&m).unwrap() > past);
    assert_eq!(fs::read(&path).unwrap(), b"", "only the time is kept");
}

// ---- locks ---------------------------------------------------------------------

#[test]
fn flocked_holds_its_lock_while_the_file_is_open() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.lock");
    let held = flocked(&p, FlockOperation::LockExclusive).unwrap();
    assert!(!lockable(&p, FlockOperation::NonBlockingLockShared));
    drop(held);
    assert!(lockable(&p, FlockOperation::NonBlockingLockExclusive));
    // Never truncated: a lock file may hold what its owner wrote.
    fs::write(&p, b"pid 1").unwrap();
    let _again = flocked(&p, FlockOperation::LockShared).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"pid 1");
}

#[test]
fn gc_lock_shared_by_pulls_exclusive_for_gc() {
    let (_d, s) = store();
    let lock = s.root().join("gc.lock");
    let a = s.gc_lock_shared().unwrap();
    let b = s.gc_lock_shared().unwrap();
    assert!(!lockable(&lock, FlockOperation::NonBlockingLockExclusive));
    drop((a, b));
    let gc = s.gc_lock_exclusive().unwrap();
    assert!(!lockable(&lock, FlockOperation::NonBlockingLockShared));
    drop(gc);
    assert!(lockable(&lock, FlockOperation::NonBlockingLockShared));
}

#[test]
fn flocked_names_a_path_it_cannot_open() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("no/such/x.lock");
    match flocked(&p, FlockOperation::LockShared).unwrap_err() {
        StoreError::Io { path, .. } => assert_eq!(path, p),
        e => panic!("{e}"),
    }
}
