//! The fused root filesystem (docs/images.md, docs/rootfs.md): the benchmark's
//! whole rootfs, then only `/opt/agent` from the agent image, then only
//! `/opt/gateway` from the gateway image. Each axis subtree *replaces* what
//! the benchmark had at that path, as the opaque directory that `hoist bake`
//! writes into the combination image does; parents missing in the
//! benchmark are created 0755 root:root.
//!
//! Two ways to build it, chosen by [`RootfsMode`]:
//! - **overlay**: the benchmark's cached layers are the lower layers of one
//!   overlay with a per-run upper directory, and each axis subtree is its
//!   own overlay mounted on its path. Nothing a run writes reaches the
//!   cache, and a second run on the same base costs a few mounts.
//! - **copy**: the union of the cached layers is copied into a plain
//!   directory by parallel writers ([`copy`]), for hosts where mounting is
//!   not permitted (an unprivileged container). Where the cache cannot be
//!   used (see `copy_source`), or with `HOIST_COPY_FROM_BLOBS=1`, the
//!   layer blobs are applied onto the directory instead.

mod cache;
pub mod copy;
pub mod evict;
pub(crate) use cache::{layers_dir, subtrees_dir};
pub mod gc;
pub mod mount;
pub mod verify;

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cache::{ensure_layer, ensure_layers, ensure_subtree, Fidelity};

use crate::digest::Digest;
use crate::pull::Pulled;
use crate::store::Store;
use crate::unpack::{ApplyOptions, OutputMode, UnpackError};

/// Where each axis subtree goes in the fused rootfs.
pub const AGENT_PATH: &str = "opt/agent";
pub const GATEWAY_PATH: &str = "opt/gateway";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// Overlay when this process may mount, else copy.
    Auto,
    /// Overlay mounts of the cached layers (needs mount privileges).
    Overlay,
    /// The layers applied onto a plain directory.
    Copy,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: Digest,
        #[source]
        source: Box<UnpackError>,
    },
    #[error("{reference} has no directory {path}; the axis image must provide it")]
    MissingSubtree { reference: String, path: String },
    #[error("{out} exists and is not an empty directory; refusing to write over it")]
    OutNotEmpty { out: PathBuf },
    #[error("overlay mount on {target} failed: {source}; use --rootfs copy where mounting is not permitted")]
    Mount {
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("placing {path} in the rootfs: {source}")]
    Place {
        path: String,
        source: std::io::Error,
    },
    #[error("copying /{path} from the layer cache ({op}): {source}")]
    Copy {
        path: String,
        op: &'static str,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The images to fuse.
pub struct Axes<'a> {
    pub benchmark: &'a Pulled,
    pub agent: Option<&'a Pulled>,
    pub gateway: Option<&'a Pulled>,
}

/// What was built, and how to take it down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Materialized {
    pub root: PathBuf,
    pub mode: RootfsMode,
    /// The run's working directory in the store (upper dirs), if overlay.
    pub run_dir: Option<PathBuf>,
    /// What could not be reproduced (unprivileged hoist): entries of the
    /// rootfs whose owner, device node or xattr differs from the image.
    pub not_reproduced: Fidelity,
}

/// Build the fused rootfs at `out` (created; must be absent or empty).
/// `keep` marks an overlay rootfs the user asked for, which `hoist gc`
/// leaves alone while it is mounted.
pub fn materialize(
    store: &Store,
    axes: &Axes<'_>,
    out: &Path,
    mode: RootfsMode,
    keep: bool,
) -> Result<Materialized, RootfsError> {
    materialize_counting(store, axes, out, mode, keep, &|_| {})
}

/// How far [`materialize_counting`] is: the benchmark's layers and the
/// axes' subtrees in place (unpacked, or found in the cache), of all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayersDone {
    pub done: usize,
    pub total: usize,
}

/// Counts the layers in place for a display; starts again when `auto`
/// falls back from overlay to a copy.
/// Layers are unpacked several at once: each steps it from its thread.
struct Counter<'a> {
    told: &'a (dyn Fn(LayersDone) + Sync),
    done: std::sync::atomic::AtomicUsize,
    total: usize,
}

impl Counter<'_> {
    fn restart(&self) {
        self.done.store(0, std::sync::atomic::Ordering::Relaxed);
        self.tell(0);
    }

    fn step(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.tell(done);
    }

    fn tell(&self, done: usize) {
        (self.told)(LayersDone {
            done,
            total: self.total,
        });
    }
}

/// [`materialize`], telling `told` as each layer is in place (for
/// `hoist materialize`'s progress line).
pub fn materialize_counting(
    store: &Store,
    axes: &Axes<'_>,
    out: &Path,
    mode: RootfsMode,
    keep: bool,
    told: &(dyn Fn(LayersDone) + Sync),
) -> Result<Materialized, RootfsError> {
    let count = Counter {
        told,
        done: std::sync::atomic::AtomicUsize::new(0),
        total: axes.benchmark.manifest.layers.len() + axis_subtrees(axes).len(),
    };
    let count = &count;
    prepare_out(out)?;
    // Held until the run's owner.json names the cache entries it reads
    // (overlay) or the copy is made: gc and eviction wait for it.
    let _gc = store.gc_lock_shared().map_err(|e| RootfsError::Io {
        path: store.root().join("gc.lock"),
        source: std::io::Error::other(e.to_string()),
    })?;
    gc::reap_dead_runs(store);
    // Rootless hoist mounts in a mount namespace of its own, which ends
    // with the process: a rootfs the user keeps must be a copy.
    let private_mounts = keep && crate::userns::entered().is_some();
    if mode == RootfsMode::Overlay && private_mounts {
        return Err(RootfsError::Mount {
            target: out.to_path_buf(),
            source: std::io::Error::other("as an unprivileged user, hoist mounts only inside its own mount namespace, which ends when hoist exits; use --rootfs copy (auto does)"),
        });
    }
    match mode {
        RootfsMode::Auto if can_mount() && !private_mounts && !on_overlayfs(store.root()) => {
            match materialize_overlay(store, axes, out, keep, count) {
                // Root may still be refused mounts (a container's default
                // seccomp profile, no CAP_SYS_ADMIN): auto means copy then.
                // A failed overlay leaves `out` empty and unmounted.
                Err(RootfsError::Mount { target, source }) => {
                    tracing::info!(target = %target.display(), error = %source, "overlay refused; copying instead");
                    materialize_copy(store, axes, out, count)
                }
                other => other,
            }
        }
        RootfsMode::Overlay => materialize_overlay(store, axes, out, keep, count),
        _ => materialize_copy(store, axes, out, count),
    }
}

/// Root may mount; an unprivileged process cannot in the host namespace.
pub fn can_mount() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `dir` is on overlayfs (a container's root), which cannot hold
/// the upper directories of another overlay (docs/rootfs.md).
// f_type is i64 here, u32 or c_long on other architectures.
#[allow(clippy::unnecessary_cast)]
pub fn on_overlayfs(dir: &Path) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    rustix::fs::statfs(dir).is_ok_and(|s| s.f_type as i64 == OVERLAYFS_SUPER_MAGIC)
}

fn prepare_out(out: &Path) -> Result<(), RootfsError> {
    match fs::read_dir(out) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(RootfsError::OutNotEmpty {
                    out: out.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(out).map_err(io(out))
        }
        Err(e) => Err(io(out)(e)),
    }
}

fn axis_subtrees<'a>(axes: &'a Axes<'a>) -> Vec<(&'a Pulled, &'static str)> {
    let mut v = Vec::new();
    if let Some(a) = axes.agent {
        v.push((a, AGENT_PATH));
    }
    if let Some(g) = axes.gateway {
        v.push((g, GATEWAY_PATH));
    }
    v
}

fn materialize_overlay(
    store: &Store,
    axes: &Axes<'_>,
    out: &Path,
    keep: bool,
    count: &Counter<'_>,
) -> Result<Materialized, RootfsError> {
    count.restart();
    // Topmost layer first, as overlayfs wants them.
    let CachedSources {
        layers: lowers,
        subtrees,
        fidelity: not_reproduced,
    } = cached_sources(store, axes, count)?;
    // Root of a user namespace may mount overlays only with `userxattr`,
    // reading the user.overlay.* markers its layer cache was written with.
    let userxattr = !crate::userns::in_initial_namespace();
    let uses: Vec<PathBuf> = lowers
        .iter()
        .chain(subtrees.iter().map(|(dir, _)| dir))
        .cloned()
        .collect();
    let run = gc::RunDir::create(store, out, keep, &uses)?;
    let mounted = (|| {
        let target = File::open(out).map_err(io(out))?;
        let (upper, work) = run.upper_work("root")?;
        // An overlay's root directory takes its mode and owner from the
        // upper directory: give it the image's.
        copy_dir_meta(&lowers[0], &upper)?;
        mount::mount_overlay(
            &mount::Overlay {
                lowers: &lowers,
                upper: &upper,
                work: &work,
                userxattr,
            },
            target.as_fd(),
        )
        .map_err(|source| RootfsError::Mount {
            target: out.to_path_buf(),
            source,
        })?;
        let root = File::open(out).map_err(io(out))?;
        for (dir, path) in &subtrees {
            let at = crate::beneath::open_dir_beneath(root.as_fd(), path).map_err(|source| {
                RootfsError::Place {
                    path: format!("/{path}"),
                    source,
                }
            })?;
            let (upper, work) = run.upper_work(path)?;
            copy_dir_meta(dir, &upper)?;
            mount::mount_overlay(
                &mount::Overlay {
                    lowers: std::slice::from_ref(dir),
                    upper: &upper,
                    work: &work,
                    userxattr,
                },
                at.as_fd(),
            )
            .map_err(|source| RootfsError::Mount {
                target: out.join(path),
                source,
            })?;
        }
        Ok(())
    })();
    if let Err(e) = mounted {
        // Leave nothing half-mounted behind; the error says what failed.
        if let Err(u) = mount::unmount_all(out) {
            tracing::warn!(path = %out.display(), error = %u, "could not unmount after a failed materialize");
        }
        run.remove();
        return Err(e);
    }
    Ok(Materialized {
        root: out.to_path_buf(),
        mode: RootfsMode::Overlay,
        run_dir: Some(run.path().to_path_buf()),
        not_reproduced,
    })
}

/// The environment variable that makes `--rootfs copy` apply the layer
/// blobs, as hoist did before it copied from the layer cache.
pub const COPY_FROM_BLOBS_ENV: &str = "HOIST_COPY_FROM_BLOBS";

/// Where a copy rootfs is made from.
#[derive(Debug, PartialEq, Eq)]
enum CopySource {
    /// The unpacked layers of the cache, copied by parallel writers.
    Cache,
    /// The layer blobs, applied one after the other; and why.
    Blobs(String),
}

/// The layer cache, unless the user asked for the blobs, this process may
/// not read every cached file (an unprivileged one cannot open a file the
/// image made 0000, nor give it back its owner), or a layer is missing
/// from the cache and this process cannot write the cache's overlay
/// markers (root without CAP_SYS_ADMIN, in a container's default profile,
/// cannot set `trusted.*`; a file system without xattrs).
fn copy_source(store: &Store, b: &Pulled) -> CopySource {
    if std::env::var_os(COPY_FROM_BLOBS_ENV).is_some_and(|v| v == "1") {
        return CopySource::Blobs(format!("{COPY_FROM_BLOBS_ENV}=1"));
    }
    if crate::unpack::Privileges::Detect.resolve() == crate::unpack::Privileges::Unprivileged {
        return CopySource::Blobs("an unprivileged process cannot read every cached file".into());
    }
    if b.manifest.layers.iter().all(|d| cache::is_cached(store, d)) {
        return CopySource::Cache;
    }
    match probe_cache_markers(store) {
        Ok(()) => CopySource::Cache,
        Err(e) => CopySource::Blobs(format!(
            "a layer is not cached and the layer cache in {} cannot be written here: {e}",
            layers_dir(store).display()
        )),
    }
}

/// Whether this process can write what a cached layer holds besides
/// files: an opaque marker and a 0/0 whiteout.
fn probe_cache_markers(store: &Store) -> std::io::Result<()> {
    let base = layers_dir(store);
    fs::create_dir_all(&base)?;
    let probe = tempfile::Builder::new()
        .prefix(".probe-")
        .tempdir_in(&base)?;
    let key = format!("{}opaque", copy::overlay_prefix());
    copy::Node::path(probe.path()).set_xattr(key.as_bytes(), b"y")?;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        probe.path().join("whiteout"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )?;
    probe.close()
}

fn materialize_copy(
    store: &Store,
    axes: &Axes<'_>,
    out: &Path,
    count: &Counter<'_>,
) -> Result<Materialized, RootfsError> {
    count.restart();
    let not_reproduced = match copy_source(store, axes.benchmark) {
        CopySource::Cache => match cached_sources(store, axes, count) {
            Ok(sources) => copy_from_cache(&sources, out)?,
            // The axis image lacks its subtree: the blobs lack it too.
            Err(e @ RootfsError::MissingSubtree { .. }) => return Err(e),
            // Nothing is written to `out` yet. A layer the cache cannot
            // hold (a hardlink to a lower layer's file, which only the
            // tree form can resolve; the cache's file system full) still
            // applies as a tree; a bad layer gives the same error again.
            Err(e) => {
                tracing::warn!(error = %e, "could not use the layer cache; applying the layer blobs");
                count.restart();
                copy_from_blobs(store, axes, out, count)?
            }
        },
        CopySource::Blobs(why) => {
            tracing::info!(reason = %why, "applying the layer blobs for the copy rootfs");
            copy_from_blobs(store, axes, out, count)?
        }
    };
    Ok(Materialized {
        root: out.to_path_buf(),
        mode: RootfsMode::Copy,
        run_dir: None,
        not_reproduced,
    })
}

/// The cached layers (unpacked now where missing) and axis subtrees an
/// overlay stacks or a copy is made from, and what their unpacking could
/// not reproduce.
struct CachedSources {
    /// Topmost first.
    layers: Vec<PathBuf>,
    subtrees: Vec<(PathBuf, &'static str)>,
    fidelity: Fidelity,
}

fn cached_sources(
    store: &Store,
    axes: &Axes<'_>,
    count: &Counter<'_>,
) -> Result<CachedSources, RootfsError> {
    let b = axes.benchmark;
    let mut fidelity = Fidelity::default();
    let mut layers = Vec::new();
    for (dir, f) in ensure_layers(
        store,
        &b.manifest.layers,
        &b.config.rootfs.diff_ids,
        &|| count.step(),
    )? {
        layers.push(dir);
        fidelity.add(f);
    }
    layers.reverse();
    let mut subtrees = Vec::new();
    for (img, path) in axis_subtrees(axes) {
        let (dir, f) = ensure_subtree(store, img, path)?;
        subtrees.push((dir, path));
        fidelity.add(f);
        count.step();
    }
    Ok(CachedSources {
        layers,
        subtrees,
        fidelity,
    })
}

/// The benchmark's union into `out`, then each axis subtree in place of
/// whatever the benchmark has at its path.
fn copy_from_cache(sources: &CachedSources, out: &Path) -> Result<Fidelity, RootfsError> {
    let mut fidelity = sources.fidelity;
    let root = File::open(out).map_err(io(out))?;
    let layers: Vec<(&Path, copy::Form)> = sources
        .layers
        .iter()
        .map(|d| (d.as_path(), copy::Form::Overlay))
        .collect();
    fidelity.add(copy::copy_union(&layers, root.as_fd(), "")?);
    for (dir, path) in &sources.subtrees {
        let (parent, name) = replace_beneath(&root, path)?;
        let place = |source| RootfsError::Place {
            path: format!("/{path}"),
            source,
        };
        rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(0o700))
            .map_err(|e| place(e.into()))?;
        let sub = crate::beneath::open_dir_beneath(parent.as_fd(), name).map_err(place)?;
        fidelity.add(copy::copy_union(
            &[(dir.as_path(), copy::Form::Tree)],
            sub.as_fd(),
            path,
        )?);
    }
    Ok(fidelity)
}

/// Open the parent of `path` beneath `root` (creating missing parents
/// 0755) and remove whatever is at `path`: an axis replaces it.
fn replace_beneath<'p>(
    root: &File,
    path: &'p str,
) -> Result<(std::os::fd::OwnedFd, &'p str), RootfsError> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let place = |source| RootfsError::Place {
        path: format!("/{path}"),
        source,
    };
    let parent_fd = crate::beneath::open_dir_beneath(root.as_fd(), parent).map_err(place)?;
    crate::unpack::fsops::remove_all(parent_fd.as_fd(), name.as_bytes()).map_err(place)?;
    Ok((parent_fd, name))
}

/// The copy as hoist made it before the cache was used: every layer blob
/// applied onto `out`, then each axis subtree applied from its image's
/// blobs beside it and moved into place.
fn copy_from_blobs(
    store: &Store,
    axes: &Axes<'_>,
    out: &Path,
    count: &Counter<'_>,
) -> Result<Fidelity, RootfsError> {
    let b = axes.benchmark;
    let mut not_reproduced = Fidelity::default();
    for (desc, diff_id) in b.manifest.layers.iter().zip(&b.config.rootfs.diff_ids) {
        let opts = ApplyOptions {
            mode: OutputMode::Tree,
            expected_diff_id: Some(diff_id.clone()),
            ..Default::default()
        };
        not_reproduced.add(cache::apply_blob(store, desc, out, &opts)?.not_reproduced);
        count.step();
    }
    let root = File::open(out).map_err(io(out))?;
    for (img, path) in axis_subtrees(axes) {
        let (parent_fd, name) = replace_beneath(&root, path)?;
        let parent_path = fd_path(&parent_fd).map_err(io(out))?;
        let scratch = sibling_scratch(out, name);
        let f = cache::extract_subtree(
            store,
            &img.manifest.layers,
            &img.config.rootfs.diff_ids,
            path,
            &img.reference,
            &scratch,
            &parent_path.join(name),
        )?;
        not_reproduced.add(f);
        count.step();
    }
    Ok(not_reproduced)
}

/// Give `dst` the mode, owner and xattrs of the directory `src`: an
/// overlay mount shows its upper directory's, not the layers'. Each xattr
/// is copied whole, whatever its size.
fn copy_dir_meta(src: &Path, dst: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::symlink_metadata(src).map_err(io(src))?;
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(io(dst))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io(dst))?;
    let (from, to) = (copy::Node::path(src), copy::Node::path(dst));
    for name in from.xattr_names().map_err(io(src))? {
        if crate::treedigest::is_ignored_xattr(&String::from_utf8_lossy(&name)) {
            continue;
        }
        // Removed since it was listed: nothing to copy.
        if let Some(value) = from.xattr(&name).map_err(io(src))? {
            to.set_xattr(&name, &value).map_err(io(dst))?;
        }
    }
    Ok(())
}

/// A scratch directory beside `out` (same file system, so a rename works).
fn sibling_scratch(out: &Path, name: &str) -> PathBuf {
    let parent = out.parent().unwrap_or(Path::new("."));
    let base = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent.join(format!(".{base}.hoist-{name}-{}", std::process::id()))
}

/// The path of an fd we opened beneath the rootfs; it stays inside, as
/// the kernel resolved it with RESOLVE_IN_ROOT and no symlinks.
fn fd_path(fd: &std::os::fd::OwnedFd) -> std::io::Result<PathBuf> {
    fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(fd)
    ))
}

/// Take down what [`materialize`] built at `root`.
pub fn teardown(m: &Materialized) -> Result<(), RootfsError> {
    if m.mode == RootfsMode::Overlay {
        mount::unmount_all(&m.root).map_err(io(&m.root))?;
        if let Some(run) = &m.run_dir {
            cache::remove_tree(run)?;
        }
    } else {
        cache::remove_tree(&m.root)?;
    }
    Ok(())
}
