//! Writing the combination as a `docker save` archive
//! (`docker-archive:PATH[:NAME:TAG]`), which `docker load` reads:
//! `manifest.json`, the config as `HEX.json`, and each layer uncompressed
//! as `DIFFID/layer.tar` (the form Docker itself writes). Every layer is
//! decompressed under the unpacker's bomb limits, and its diff_id checked
//! against the config before it goes in. The archive itself is written
//! reproducibly too, to a temp file renamed into place.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

use super::tar::{Kind, Meta, TarWriter};
use super::{io_err, BakeError, Baked};
use crate::atomic::{Durability, Temp};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::Descriptor;
use crate::store::Store;
use crate::unpack::{Compression, Limits};

pub fn write_docker_archive(
    store: &Store,
    baked: &Baked,
    path: &Path,
    name: Option<&str>,
) -> Result<(), BakeError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // 0644: as readable as `docker save`'s.
    let tmp = Temp::in_dir(dir, 0o644).map_err(io_err(dir))?;
    let file = tmp.file().try_clone().map_err(io_err(tmp.path()))?;
    let mut w = TarWriter::new(BufWriter::with_capacity(1 << 20, file), 0);
    let werr = |e| io_err(tmp.path())(e);

    let config_name = format!("{}.json", baked.config_digest.hex());
    let mut config = &baked.config_bytes[..];
    w.append(
        config_name.as_bytes(),
        &Meta::root(Kind::File(baked.config_bytes.len() as u64), 0o644),
        Some(&mut config),
    )
    .map_err(werr)?;

    let mut layer_paths = Vec::new();
    for (desc, diff_id) in baked.manifest.layers.iter().zip(&baked.diff_ids) {
        let layer_path = format!("{}/layer.tar", diff_id.hex());
        if !layer_paths.contains(&layer_path) {
            let mut plain = decompress(store, desc, diff_id, dir)?;
            let size = plain.metadata().map_err(io_err(dir))?.len();
            let dir_entry = format!("{}/", diff_id.hex());
            w.append(dir_entry.as_bytes(), &Meta::root(Kind::Dir, 0o755), None)
                .map_err(io_err(tmp.path()))?;
            w.append(
                layer_path.as_bytes(),
                &Meta::root(Kind::File(size), 0o644),
                Some(&mut BufReader::with_capacity(1 << 20, &mut plain)),
            )
            .map_err(io_err(tmp.path()))?;
        }
        layer_paths.push(layer_path);
    }

    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": name.map(|n| vec![n.to_string()]),
        "Layers": layer_paths,
    }]);
    let manifest = crate::json::to_vec(&manifest, "the archive's manifest.json")?;
    w.append(
        b"manifest.json",
        &Meta::root(Kind::File(manifest.len() as u64), 0o644),
        Some(&mut &manifest[..]),
    )
    .map_err(io_err(tmp.path()))?;
    let out = w.finish().map_err(io_err(tmp.path()))?;
    out.into_inner()
        .map_err(|e| io_err(tmp.path())(e.into_error()))?;
    tmp.commit(path, Durability::Synced).map_err(io_err(path))
}

/// The layer's tar, decompressed into an anonymous temp file in `dir`,
/// rewound, after its diff_id was checked.
fn decompress(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    dir: &Path,
) -> Result<File, BakeError> {
    let compression =
        Compression::from_media_type(&desc.media_type).ok_or_else(|| BakeError::LayerType {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
        })?;
    let blob = store.blob_path(&desc.digest);
    let raw = BufReader::with_capacity(
        1 << 20,
        File::open(&blob).map_err(io_err(&blob))?.take(desc.size),
    );
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(io_err(&blob))?)
        }
    };
    let limits = Limits::default();
    let max = limits.max_uncompressed_bytes.min(
        limits
            .ratio_grace_bytes
            .max(desc.size.saturating_mul(limits.max_ratio)),
    );
    let mut out = tempfile::tempfile_in(dir).map_err(io_err(dir))?;
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let copied = {
        let mut tee = HashingWriter {
            inner: BufWriter::new(&mut out),
            hasher: &mut hasher,
        };
        let n = io::copy(&mut reader.take(max + 1), &mut tee).map_err(io_err(&blob))?;
        tee.flush().map_err(io_err(dir))?;
        n
    };
    if copied > max {
        return Err(BakeError::Io {
            path: blob,
            source: io::Error::other(format!(
                "layer {} decompresses to more than {max} bytes (the unpacker's bomb limits); refusing it",
                desc.digest
            )),
        });
    }
    let found = hasher.finish();
    if &found != diff_id {
        return Err(BakeError::DiffId {
            digest: desc.digest.clone(),
            expected: diff_id.clone(),
            found,
        });
    }
    out.rewind().map_err(io_err(dir))?;
    Ok(out)
}

struct HashingWriter<'a, W> {
    inner: W,
    hasher: &'a mut Hasher,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
