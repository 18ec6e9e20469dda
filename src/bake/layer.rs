//! Appended layer blobs, written into the store: the tar stream is hashed
//! as it is written (the diff_id), gzip-compressed with a fixed level and
//! no timestamp or file name, and hashed again (the blob digest), into a
//! temp file that is renamed into `blobs/` under that digest.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};

use super::tar::TarWriter;
use super::BakeError;
use crate::atomic::{Durability, Temp};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::Descriptor;
use crate::store::{Store, BLOB_MODE};

/// gzip level 6, zlib's default: a fixed level keeps the bytes stable.
const GZIP_LEVEL: u32 = 6;
/// The gzip header's OS byte: 255, "unknown", as Go's compress/gzip writes.
const GZIP_OS_UNKNOWN: u8 = 255;
/// Bumped whenever the bytes a layer is written as change, so that a
/// cached layer from an older format is not reused.
const FORMAT: &str = "hoist-bake-layer/1";

/// A layer blob in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

impl Layer {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: super::image::OCI_LAYER_GZIP.to_string(),
            digest: self.digest.clone(),
            size: self.size,
            platform: None,
            annotations: None,
            urls: None,
        }
    }
}

/// Counts and hashes what passes through.
struct Tee<W> {
    inner: W,
    hasher: Hasher,
    bytes: u64,
}

impl<W: Write> Tee<W> {
    fn new(inner: W) -> Tee<W> {
        Tee {
            inner,
            hasher: Hasher::new(Algorithm::Sha256),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write a layer whose tar entries `fill` appends, into the store.
pub fn write_layer(
    store: &Store,
    mtime: u64,
    fill: impl FnOnce(&mut TarWriter<&mut dyn Write>) -> io::Result<()>,
) -> Result<Layer, BakeError> {
    let dir = store.root().join("ingest");
    fs::create_dir_all(&dir).map_err(super::io_err(&dir))?;
    let tmp = Temp::in_dir(&dir, BLOB_MODE).map_err(super::io_err(&dir))?;
    let file = tmp.file().try_clone().map_err(super::io_err(tmp.path()))?;
    let compressed = Tee::new(BufWriter::with_capacity(1 << 20, file));
    let gz = GzBuilder::new()
        .operating_system(GZIP_OS_UNKNOWN)
        .write(compressed, Compression::new(GZIP_LEVEL));
    let mut plain = Tee::new(gz);
    {
        let sink: &mut dyn Write = &mut plain;
        let mut tar = TarWriter::new(sink, mtime);
        fill(&mut tar).map_err(super::io_err(tmp.path()))?;
        tar.finish().map_err(super::io_err(tmp.path()))?;
    }
    let diff_id = plain.hasher.finish();
    let compressed = plain.inner.finish().map_err(super::io_err(tmp.path()))?;
    let (digest, size) = (compressed.hasher.finish(), compressed.bytes);
    compressed
        .inner
        .into_inner()
        .map_err(|e| super::io_err(tmp.path())(e.into_error()))?;
    let target = store.blob_path(&digest);
    if !store.has_blob(&digest, size) {
        tmp.commit(&target, Durability::Synced)
            .map_err(super::io_err(&target))?;
    }
    Ok(Layer {
        digest,
        size,
        diff_id,
    })
}

/// A layer cached under `key` (which names its whole input), rebuilt
/// when the cache entry or its blob is missing.
pub fn cached_layer(
    store: &Store,
    key: &str,
    build: impl FnOnce() -> Result<Layer, BakeError>,
) -> Result<Layer, BakeError> {
    let id = Digest::sha256_of(format!("{FORMAT}\n{key}").as_bytes());
    let path = store
        .root()
        .join("bake-layers")
        .join(format!("{}.json", id.hex()));
    let cached: Option<Layer> = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(layer) = cached.filter(|l| store.has_blob(&l.digest, l.size)) {
        return Ok(layer);
    }
    let layer = build()?;
    let dir = store.root().join("bake-layers");
    fs::create_dir_all(&dir).map_err(super::io_err(&dir))?;
    let json = serde_json::to_vec(&layer).map_err(|e| super::io_err(&path)(e.into()))?;
    store.write_atomic(&path, &json).map_err(BakeError::Store)?;
    Ok(layer)
}

/// The sha256 of a file's content, streamed.
pub fn file_digest(path: &Path) -> Result<Digest, BakeError> {
    let mut f = File::open(path).map_err(super::io_err(path))?;
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(super::io_err(path))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tar::{Kind, Meta};
    use super::*;

    #[test]
    fn a_layer_is_reproducible_and_verifiable() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let build = || {
            write_layer(&store, 0, |w| {
                w.append(b".hoist/", &Meta::root(Kind::Dir, 0o755), None)?;
                w.append(
                    b".hoist/hoist",
                    &Meta::root(Kind::File(5), 0o755),
                    Some(&mut &b"hello"[..]),
                )
            })
            .unwrap()
        };
        let a = build();
        let b = build();
        assert_eq!(a, b);
        let blob = fs::read(store.blob_path(&a.digest)).unwrap();
        assert_eq!(Digest::sha256_of(&blob), a.digest);
        assert_eq!(blob.len() as u64, a.size);
        // gzip header: no mtime, no name, OS unknown.
        assert_eq!(&blob[3..10], &[0, 0, 0, 0, 0, 0, GZIP_OS_UNKNOWN][..]);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(Digest::sha256_of(&plain), a.diff_id);
        // Nothing left behind in ingest/.
        let left: Vec<_> = fs::read_dir(t.path().join("ingest")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn cached_layers_are_reused_while_their_blob_exists() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let make = || write_layer(&store, 0, |_| Ok(()));
        let a = cached_layer(&store, "k", make).unwrap();
        let b = cached_layer(&store, "k", || panic!("rebuilt")).unwrap();
        assert_eq!(a, b);
        fs::remove_file(store.blob_path(&a.digest)).unwrap();
        let c = cached_layer(&store, "k", make).unwrap();
        assert_eq!(a, c);
    }
}
