//! Layer unpacking (docs/rootfs.md, "Unpacking a layer"): one layer blob,
//! streamed, onto a directory handle, with nothing able to reach outside it.
//!
//! * The media type alone decides the decompressor; bytes that do not match
//!   it, and every non-layer type, are refused before any tar is parsed.
//! * The uncompressed stream is hashed to its last byte (padding and
//!   anything after the end-of-archive blocks included), so the diff_id is
//!   the one the image config names.
//! * Decompression is bounded ([`Limits`]), and so is what the tar parser
//!   may hold in memory for one entry's headers ([`HEADER_BUDGET`]).
//! * Every file-system change is confined to the target (see `fsops`):
//!   no symlink is followed, `..` cannot climb out, hardlinks only link
//!   inodes inside the target.
//!
//! Two output forms ([`OutputMode`]): a tree as `docker export` shows it
//! (whiteouts delete), or the layer alone as an overlayfs layer (whiteouts
//! kept as overlayfs reads them). The `tar` crate only parses; all writing
//! is done here.

mod apply;
mod error;
pub(crate) mod fsops;
mod media;
mod meta;
pub(crate) mod path;
mod stream;

use std::io::{self, Read};
use std::os::fd::AsFd;

use crate::digest::{Algorithm, Digest, Hasher};

pub use error::{BombKind, UnpackError};
pub use media::Compression;

/// Where an unprivileged hoist records an entry's true owner ("UID:GID")
/// when it could not give the entry that owner. Read back as the entry's
/// uid and gid; never taken from a layer.
pub const OWNER_XATTR: &str = "user.hoist.owner";

/// The most the tar parser may read while looking for the next entry: its
/// header blocks, PAX records, GNU long names and sparse maps, all of which
/// it keeps in memory. Go's archive/tar allows 1 MiB per PAX header and per
/// long name; this leaves room for one of each.
pub const HEADER_BUDGET: u64 = 4 << 20;

/// What the layer becomes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// Applied onto an existing tree, as `docker export` would show the
    /// result: a whiteout deletes the lower entry, an opaque marker empties
    /// the lower directory. Used to materialize by copying.
    #[default]
    Tree,
    /// The layer alone, in an empty directory, ready to be an overlayfs
    /// layer: a whiteout becomes a 0/0 character device, an opaque marker
    /// the `trusted.overlay.opaque=y` xattr (`user.overlay.*` when
    /// unprivileged, for `userxattr` mounts).
    OverlayLayer,
}

/// Whether to reproduce ownership, devices and `trusted.*` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Privileges {
    /// Privileged exactly when the effective uid is 0.
    #[default]
    Detect,
    /// Chown to the layer's ids, create devices, use `trusted.overlay.*`.
    Root,
    /// Root of a user namespace (rootless hoist): chown to the layer's ids
    /// where the namespace maps them (the rest counted in [`LayerStats`]),
    /// skip devices other than whiteouts, use `user.overlay.*`.
    UserNamespace,
    /// Keep this process's ids (counted in [`LayerStats`]), skip devices
    /// other than whiteouts, use `user.overlay.*`.
    Unprivileged,
}

impl Privileges {
    /// `Detect` made concrete: root in the initial user namespace is
    /// `Root`, root of any other is `UserNamespace`.
    pub fn resolve(self) -> Privileges {
        match self {
            Privileges::Detect if !rustix::process::geteuid().is_root() => Privileges::Unprivileged,
            Privileges::Detect if crate::userns::in_initial_namespace() => Privileges::Root,
            Privileges::Detect => Privileges::UserNamespace,
            other => other,
        }
    }
}

/// Decompression bounds. A layer that crosses one fails with
/// [`UnpackError::BombLimit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most uncompressed bytes in the stream, and most bytes written to
    /// files (a sparse entry expands beyond its bytes in the stream).
    pub max_uncompressed_bytes: u64,
    /// Most uncompressed bytes per compressed byte, checked once more than
    /// `ratio_grace_bytes` have come out. gzip cannot exceed about 1032:1,
    /// zstd can go far beyond; real layers stay under 100:1.
    pub max_ratio: u64,
    pub ratio_grace_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 64 << 30,
            max_ratio: 2048,
            ratio_grace_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub mode: OutputMode,
    /// The layer's diff_id from the image config; a layer whose
    /// uncompressed digest differs fails with [`UnpackError::DiffIdMismatch`]
    /// (after it was written: unpack into a fresh directory).
    pub expected_diff_id: Option<Digest>,
    pub limits: Limits,
    pub privileges: Privileges,
    /// Apply only what can affect this subtree (e.g. `opt/agent`): entries
    /// inside it, and entries, whiteouts and opaque markers on the way to
    /// it. The rest of the stream is still read and hashed. A hardlink from
    /// inside to a file outside the subtree then fails, naming the entry.
    pub subtree: Option<String>,
    /// Write every file on the calling thread, in stream order, instead of
    /// handing small files to writer threads. The tree is the same either
    /// way; this is the reference the parallel unpack is tested against.
    pub single_writer: bool,
}

/// What applying a layer found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// The digest of the uncompressed stream (the config's diff_id), in the
    /// algorithm of `expected_diff_id`, sha256 when none was given.
    pub diff_id: Digest,
    /// Bytes read from the blob.
    pub compressed_bytes: u64,
    /// Bytes of the uncompressed tar stream, trailing data included.
    pub uncompressed_bytes: u64,
    /// Tar entries, whiteouts and opaque markers included.
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// What could not be reproduced (unprivileged runs).
    pub not_reproduced: Fidelity,
}

/// What applying layers could not reproduce: zero everywhere as root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fidelity {
    /// Entries whose owner (uid or gid) is not the image's.
    pub ownership_not_reproduced: u64,
    /// Device nodes not created.
    pub devices_not_created: u64,
    /// Extended attributes the file system or our privileges refused.
    pub xattrs_not_set: u64,
}

impl Fidelity {
    pub fn add(&mut self, o: Fidelity) {
        self.ownership_not_reproduced += o.ownership_not_reproduced;
        self.devices_not_created += o.devices_not_created;
        self.xattrs_not_set += o.xattrs_not_set;
    }

    pub fn is_exact(&self) -> bool {
        *self == Fidelity::default()
    }
}

/// Applies the layer blob `reader` of type `media_type` onto the directory
/// `target`. Reads the blob to its end. No helper program is run.
///
/// On error the target is left partly written; the caller unpacks into a
/// fresh directory and discards it on error.
pub fn apply_layer(
    reader: impl Read,
    media_type: &str,
    target: impl AsFd,
    opts: &ApplyOptions,
) -> Result<LayerStats, UnpackError> {
    let compression = Compression::from_media_type(media_type).ok_or_else(|| {
        UnpackError::UnsupportedMediaType {
            media_type: media_type.to_string(),
        }
    })?;
    let target = target.as_fd();
    if opts.mode == OutputMode::OverlayLayer && !is_empty_dir(target)? {
        return Err(UnpackError::TargetNotEmpty);
    }
    let blob = media::check_magic(reader, compression, media_type)?;
    let hasher = match &opts.expected_diff_id {
        Some(d) => d.hasher(),
        None => Hasher::new(Algorithm::Sha256),
    };
    let (tap, state) = stream::tap(blob, compression, &opts.limits, hasher)?;
    let mut archive = tar::Archive::new(tap);
    let powers = apply::Powers::of(opts.privileges.resolve());
    let mut applier = apply::Applier::new(target, opts, powers, state.clone());
    applier.run(&mut archive)?;
    // The digest covers every byte, so read past the end-of-archive blocks.
    let mut tap = archive.into_inner();
    io::copy(&mut tap, &mut io::sink()).map_err(|e| state.read_error("<end of archive>", e))?;
    let diff_id = state.finish().ok_or_else(|| {
        UnpackError::io(
            "<layer blob>",
            "hash",
            io::Error::other("digest already taken"),
        )
    })?;
    if let Some(expected) = &opts.expected_diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffIdMismatch {
                expected: expected.clone(),
                found: diff_id,
            });
        }
    }
    let c = &applier.counts;
    Ok(LayerStats {
        diff_id,
        compressed_bytes: state.compressed(),
        uncompressed_bytes: state.uncompressed(),
        entries: c.entries,
        whiteouts: c.whiteouts,
        opaque_dirs: c.opaque_dirs,
        not_reproduced: c.not_reproduced,
    })
}

fn is_empty_dir(dir: std::os::fd::BorrowedFd<'_>) -> Result<bool, UnpackError> {
    let names = fsops::list(dir).map_err(|e| UnpackError::io("<target>", "list", e))?;
    Ok(names.is_empty())
}
