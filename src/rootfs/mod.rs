//! The fused root filesystem (DESIGN §2, §5 "materialize"): the benchmark's
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
//! - **copy**: the layers are applied onto a plain directory, for hosts
//!   where mounting is not permitted (an unprivileged container).

mod cache;
pub mod evict;
pub(crate) use cache::{layers_dir, subtrees_dir};
pub mod gc;
pub mod mount;
pub mod verify;

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cache::{ensure_layer, ensure_subtree, Fidelity};

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
    Overlay,
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
            match materialize_overlay(store, axes, out, keep) {
                // Root may still be refused mounts (a container's default
                // seccomp profile, no CAP_SYS_ADMIN): auto means copy then.
                // A failed overlay leaves `out` empty and unmounted.
                Err(RootfsError::Mount { target, source }) => {
                    tracing::info!(target = %target.display(), error = %source, "overlay refused; copying instead");
                    materialize_copy(store, axes, out)
                }
                other => other,
            }
        }
        RootfsMode::Overlay => materialize_overlay(store, axes, out, keep),
        _ => materialize_copy(store, axes, out),
    }
}

/// Root may mount; an unprivileged process cannot in the host namespace.
pub fn can_mount() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `dir` is on overlayfs (a container's root), which cannot hold
/// the upper directories of another overlay (DESIGN §5 "materialize").
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
) -> Result<Materialized, RootfsError> {
    let b = axes.benchmark;
    let mut lowers = Vec::new();
    let mut not_reproduced = Fidelity::default();
    for (desc, diff_id) in b.manifest.layers.iter().zip(&b.config.rootfs.diff_ids) {
        let (dir, f) = ensure_layer(store, desc, diff_id)?;
        lowers.push(dir);
        not_reproduced.add(f);
    }
    // overlayfs wants the topmost layer first.
    lowers.reverse();
    let mut subtrees = Vec::new();
    for (img, path) in axis_subtrees(axes) {
        let (dir, f) = ensure_subtree(store, img, path)?;
        subtrees.push((dir, path));
        not_reproduced.add(f);
    }
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

fn materialize_copy(
    store: &Store,
    axes: &Axes<'_>,
    out: &Path,
) -> Result<Materialized, RootfsError> {
    let b = axes.benchmark;
    let mut not_reproduced = Fidelity::default();
    for (desc, diff_id) in b.manifest.layers.iter().zip(&b.config.rootfs.diff_ids) {
        let opts = ApplyOptions {
            mode: OutputMode::Tree,
            expected_diff_id: Some(diff_id.clone()),
            ..Default::default()
        };
        not_reproduced.add(cache::apply_blob(store, desc, out, &opts)?.not_reproduced);
    }
    let root = File::open(out).map_err(io(out))?;
    for (img, path) in axis_subtrees(axes) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent_fd =
            crate::beneath::open_dir_beneath(root.as_fd(), parent).map_err(|source| {
                RootfsError::Place {
                    path: format!("/{path}"),
                    source,
                }
            })?;
        // The axis replaces whatever the benchmark had there.
        remove_beneath(&parent_fd, name).map_err(|source| RootfsError::Place {
            path: format!("/{path}"),
            source,
        })?;
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
    }
    Ok(Materialized {
        root: out.to_path_buf(),
        mode: RootfsMode::Copy,
        run_dir: None,
        not_reproduced,
    })
}

/// Give `dst` the mode, owner and xattrs of the directory `src`: an
/// overlay mount shows its upper directory's, not the layers'.
fn copy_dir_meta(src: &Path, dst: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::symlink_metadata(src).map_err(io(src))?;
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(io(dst))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io(dst))?;
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(src, &mut names).unwrap_or(0);
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if crate::treedigest::is_ignored_xattr(&String::from_utf8_lossy(name)) {
            continue;
        }
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(src, name, &mut value) {
            rustix::fs::lsetxattr(dst, name, &value[..len], rustix::fs::XattrFlags::empty())
                .map_err(|e| io(dst)(e.into()))?;
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

fn remove_beneath(parent: &std::os::fd::OwnedFd, name: &str) -> std::io::Result<()> {
    let p = fd_path(parent)?.join(name);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
        Ok(_) => fs::remove_file(&p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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
