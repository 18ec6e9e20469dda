//! Layer media types (image-spec media-types.md, Docker's image manifest v2
//! schema 2) and the magic bytes each compression must start with.

use std::io::{self, Cursor, Read};

use super::UnpackError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const PEEK: usize = 6;

impl Compression {
    /// The compression a layer media type declares; `None` for anything
    /// that is not a tar layer (configs, encrypted layers, foreign formats),
    /// which must never be parsed as tar.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        Some(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// Why `head` (the first bytes of the blob) cannot be this compression,
    /// or `None` when it can.
    fn mismatch(self, head: &[u8]) -> Option<&'static str> {
        let compressed = [GZIP_MAGIC, ZSTD_MAGIC, BZIP2_MAGIC, XZ_MAGIC]
            .iter()
            .any(|m| head.starts_with(m));
        match self {
            Compression::Gzip if !head.starts_with(GZIP_MAGIC) => Some("gzip magic bytes missing"),
            Compression::Zstd if !head.starts_with(ZSTD_MAGIC) => Some("zstd magic bytes missing"),
            Compression::None if compressed => {
                Some("an uncompressed tar type, but the bytes are compressed")
            }
            _ => None,
        }
    }
}

/// Reads the first bytes of `reader`, checks them against `compression`,
/// and returns a reader that yields the whole stream again.
pub(crate) fn check_magic<R: Read>(
    mut reader: R,
    compression: Compression,
    media_type: &str,
) -> Result<impl Read, UnpackError> {
    let mut head = [0u8; PEEK];
    let mut filled = 0;
    while filled < PEEK {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(UnpackError::io("<layer blob>", "read", source)),
        }
    }
    if let Some(reason) = compression.mismatch(&head[..filled]) {
        return Err(UnpackError::CompressionMismatch {
            media_type: media_type.to_string(),
            reason,
        });
    }
    Ok(Cursor::new(head).take(filled as u64).chain(reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_media_types() {
        use Compression::*;
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
        ] {
            assert_eq!(Compression::from_media_type(mt), Some(c), "{mt}");
        }
    }

    #[test]
    fn other_media_types_are_refused() {
        for mt in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/octet-stream",
            "",
        ] {
            assert_eq!(Compression::from_media_type(mt), Option::None, "{mt}");
        }
    }

    #[test]
    fn magic_must_match() {
        let tar = [0u8; 1024];
        let gz = [0x1f, 0x8b, 8, 0, 0, 0];
        let zst = [0x28, 0xb5, 0x2f, 0xfd, 0, 0];
        assert!(Compression::None.mismatch(&tar).is_none());
        assert!(Compression::None.mismatch(&[]).is_none());
        assert!(Compression::None.mismatch(&gz).is_some());
        assert!(Compression::None.mismatch(&zst).is_some());
        assert!(Compression::Gzip.mismatch(&gz).is_none());
        assert!(Compression::Gzip.mismatch(&tar).is_some());
        assert!(Compression::Gzip.mismatch(&[]).is_some());
        assert!(Compression::Zstd.mismatch(&gz).is_some());
        assert!(Compression::Zstd.mismatch(&zst).is_none());
    }

    #[test]
    fn peeked_bytes_are_replayed() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut out = Vec::new();
        let mut r = check_magic(&data[..], Compression::None, "t").unwrap();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
