use std::fmt;
use std::io;

use crate::digest::Digest;

/// Which decompression bound a layer crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BombKind {
    /// More uncompressed bytes (or bytes written to files) than
    /// [`Limits::max_uncompressed_bytes`](super::Limits).
    UncompressedSize,
    /// Uncompressed bytes grew past [`Limits::max_ratio`](super::Limits)
    /// times the compressed bytes read.
    Ratio,
    /// One entry's headers (PAX records, GNU long names, sparse maps) were
    /// larger than [`HEADER_BUDGET`](super::HEADER_BUDGET); the tar parser
    /// holds those in memory.
    HeaderSize,
}

impl fmt::Display for BombKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BombKind::UncompressedSize => "uncompressed size",
            BombKind::Ratio => "compression ratio",
            BombKind::HeaderSize => "entry header size",
        })
    }
}

/// Everything that can go wrong applying one layer. Each variant names the
/// entry (its name as written in the tar) where there is one.
///
/// On any error the target is left partly written: unpack into a fresh
/// directory and discard it on error.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "unsupported layer media type {media_type:?}: hoist unpacks OCI and Docker tar layers \
         (uncompressed, gzip or zstd)"
    )]
    UnsupportedMediaType { media_type: String },

    #[error("layer bytes do not match media type {media_type:?}: {reason}")]
    CompressionMismatch {
        media_type: String,
        reason: &'static str,
    },

    #[error("the layer's compressed stream is corrupt: {source}")]
    Decompress { source: io::Error },

    #[error(
        "layer refused as a decompression bomb: {kind} limit of {limit} exceeded \
         ({compressed} compressed bytes read, {uncompressed} uncompressed)"
    )]
    BombLimit {
        kind: BombKind,
        limit: u64,
        compressed: u64,
        uncompressed: u64,
    },

    #[error("the layer is not a valid tar stream (after entry {after:?}): {source}")]
    Tar { after: String, source: io::Error },

    #[error("layer entry {entry:?} ends early: {expected} bytes declared, {found} present")]
    Truncated {
        entry: String,
        expected: u64,
        found: u64,
    },

    #[error("layer entry {entry:?} escapes the target directory")]
    PathEscape { entry: String },

    #[error("layer entry {entry:?} has an invalid name: {reason}")]
    BadPath { entry: String, reason: &'static str },

    #[error(
        "layer entry {entry:?} goes through the symbolic link {component:?}; \
         hoist never writes through a symlink"
    )]
    SymlinkInPath { entry: String, component: String },

    #[error("layer entry {entry:?} is a bad whiteout: {reason}")]
    BadWhiteout { entry: String, reason: &'static str },

    #[error("layer entry {entry:?} is a bad hardlink to {target:?}: {reason}")]
    BadHardlink {
        entry: String,
        target: String,
        reason: &'static str,
    },

    #[error("layer entry {entry:?} is invalid: {reason}")]
    BadEntry { entry: String, reason: String },

    #[error("layer diff_id mismatch: the config says {expected}, the layer is {found}")]
    DiffIdMismatch { expected: Digest, found: Digest },

    #[error("an overlay-form layer must be unpacked into an empty directory")]
    TargetNotEmpty,

    #[error("layer entry {entry:?}: {op} failed: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
}

impl UnpackError {
    pub(crate) fn io(entry: &str, op: &'static str, source: impl Into<io::Error>) -> Self {
        UnpackError::Io {
            entry: entry.to_string(),
            op,
            source: source.into(),
        }
    }
}
