//! `dockerfile:PATH` references (docs/dockerfile.md): an axis image built
//! here from a Dockerfile, by a daemonless builder (buildah; `docker
//! build` where only docker is present), written to an OCI layout and
//! imported into the store through the `oci:` path of [`crate::pull`],
//! then pinned like any image. The build inputs — the context's tree and
//! the Dockerfile — have a digest of their own, so an unchanged
//! Dockerfile reuses its stored image and `--locked` tells a changed one
//! from an unchanged one without building.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::{self, Descriptor, Index, Manifest, ANNOTATION_REF_NAME};
use crate::platform::Platform;
use crate::pull::{
    pull_as, stored_complete, Progress, PullError, PullOptions, PullPolicy, Pulled, Record,
};
use crate::reference::{LayoutRef, Reference};
use crate::registry::Client;
use crate::store::Store;
use crate::treedigest::{read_dir_tree, TreeError};

pub const PREFIX: &str = "dockerfile:";
/// The store entry's annotation that records the build inputs' digest.
/// How a build's scratch directory under the store's `ingest/` starts.
pub const SCRATCH_PREFIX: &str = "build-";

pub const INPUTS_ANNOTATION: &str = "io.github.hoist.build-inputs";
/// `buildah` or `docker`: the builder to use, when not the first found.
pub const BUILDER_VAR: &str = "HOIST_BUILDER";
/// What a context directory's Dockerfile may be called (buildah's names).
const FILE_NAMES: [&str; 2] = ["Dockerfile", "Containerfile"];
/// Bumped when what goes into the inputs digest changes.
const INPUTS_VERSION: &str = "hoist.build-inputs/v1";
/// The name the image has in the builder's own storage, for one build.
const BUILT_NAME: &str = "localhost/hoist-build";

/// `dockerfile:PATH[@DIGEST]`: PATH a Dockerfile, or a context directory
/// that holds one; with a digest, the image built from it that the store
/// holds (a pin: nothing is built).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerfileRef {
    pub path: PathBuf,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{reference}: the reference needs a path (dockerfile:PATH, PATH a Dockerfile or a directory holding one)")]
    NoPath { reference: String },
    #[error("{reference}: {}: {source}", .path.display())]
    Path {
        reference: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{reference}: {} holds no file named Dockerfile or Containerfile; name the file itself (dockerfile:DIR/FILE)", .path.display())]
    NoDockerfile { reference: String, path: PathBuf },
    #[error("{reference}: {} holds both a Dockerfile and a Containerfile; name the one to build (dockerfile:DIR/FILE)", .path.display())]
    TwoDockerfiles { reference: String, path: PathBuf },
    #[error("{reference}: {} is neither a file nor a directory", .path.display())]
    NotAFile { reference: String, path: PathBuf },
    #[error("{reference}: reading the build context {}: {source}", .path.display())]
    Context {
        reference: String,
        path: PathBuf,
        source: TreeError,
    },
    #[error("{reference}: building it needs buildah or docker, and {}; install buildah (apt-get install buildah), or set {BUILDER_VAR} to the one to use", if *.forced { format!("{BUILDER_VAR} names one that is not on PATH") } else { "neither is on PATH".to_string() })]
    NoBuilder { reference: String, forced: bool },
    #[error(
        "{reference}: {BUILDER_VAR}={value:?} is not a builder hoist knows (buildah or docker)"
    )]
    UnknownBuilder { reference: String, value: String },
    #[error("{reference}: `{command}` failed ({status}){}", stderr_tail(.stderr))]
    Failed {
        reference: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{reference}: running {tool}: {source}")]
    Spawn {
        reference: String,
        tool: String,
        source: std::io::Error,
    },
    #[error("{reference}: the image docker built ({}): {message}", .path.display())]
    Archive {
        reference: String,
        path: PathBuf,
        message: String,
    },
    #[error("{reference}: the store holds no image {digest} built from it, and a pinned image is never rebuilt; run `hoist lock` (or a run without --locked) to build it")]
    NotStored { reference: String, digest: Digest },
    #[error("{reference} has not been built into the store for these build inputs, and --pull never builds nothing; run without --pull never to build it")]
    NotBuilt { reference: String },
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("{0}")]
    Join(String),
}

fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n  {tail}")
    }
}

impl BuildError {
    /// A reference to nothing buildable, or no builder: exit code 2.
    pub fn is_usage(&self) -> bool {
        match self {
            BuildError::Pull(p) => p.is_usage(),
            BuildError::NoPath { .. }
            | BuildError::Path { .. }
            | BuildError::NoDockerfile { .. }
            | BuildError::TwoDockerfiles { .. }
            | BuildError::NotAFile { .. }
            | BuildError::NoBuilder { .. }
            | BuildError::UnknownBuilder { .. }
            | BuildError::NotStored { .. }
            | BuildError::NotBuilt { .. } => true,
            _ => false,
        }
    }

    /// A pinned digest that did not match: exit code 3.
    pub fn is_pin_mismatch(&self) -> bool {
        matches!(self, BuildError::Pull(p) if p.is_pin_mismatch())
    }
}

impl DockerfileRef {
    /// `None` when `s` is not a `dockerfile:` reference. A trailing
    /// `@sha256:…` is a pin when it parses as a digest, else part of the
    /// path.
    pub fn parse(s: &str) -> Option<Result<DockerfileRef, BuildError>> {
        let rest = s.strip_prefix(PREFIX)?;
        let (path, digest) = match rest.rsplit_once('@') {
            Some((p, d)) => match d.parse::<Digest>() {
                Ok(d) => (p, Some(d)),
                Err(_) => (rest, None),
            },
            None => (rest, None),
        };
        if path.is_empty() {
            return Some(Err(BuildError::NoPath {
                reference: s.to_string(),
            }));
        }
        Some(Ok(DockerfileRef {
            path: PathBuf::from(path),
            digest,
        }))
    }

    /// This reference pinned to the image `digest`.
    pub fn pinned(&self, digest: Digest) -> DockerfileRef {
        DockerfileRef {
            path: self.path.clone(),
            digest: Some(digest),
        }
    }
}

impl fmt::Display for DockerfileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.path.display())?;
        match &self.digest {
            Some(d) => write!(f, "@{d}"),
            None => Ok(()),
        }
    }
}

/// What a build reads: the context directory, the Dockerfile in it, and
/// the digest of both.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub digest: Digest,
}

impl Inputs {
    /// The name the built image is recorded under in the store.
    pub fn store_name(&self) -> String {
        format!("{PREFIX}{}", self.dockerfile.display())
    }
}

/// Where `r`'s Dockerfile and context are, and the digest of the inputs:
/// the context is PATH's directory (PATH itself, or the Dockerfile's),
/// never anything above it.
pub fn inputs(r: &DockerfileRef) -> Result<Inputs, BuildError> {
    let (context, dockerfile) = locate(r)?;
    let tree = read_dir_tree(&context).map_err(|source| BuildError::Context {
        reference: r.to_string(),
        path: context.clone(),
        source,
    })?;
    let name = dockerfile.strip_prefix(&context).unwrap_or(&dockerfile);
    let digest = inputs_digest(&name.to_string_lossy(), &tree.listing());
    Ok(Inputs {
        context,
        dockerfile,
        digest,
    })
}

/// The digest of a build's inputs: the Dockerfile's name in its context
/// and the context's canonical listing (paths, types, modes, owners,
/// contents; the Dockerfile's among them), modification times left out
/// as the build's `--timestamp 0` leaves them out of the image.
pub fn inputs_digest(dockerfile: &str, listing: &str) -> Digest {
    Digest::sha256_of(format!("{INPUTS_VERSION}\n{dockerfile}\n{listing}").as_bytes())
}

fn locate(r: &DockerfileRef) -> Result<(PathBuf, PathBuf), BuildError> {
    let path_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Path {
            reference: r.to_string(),
            path,
            source,
        }
    };
    let path = std::fs::canonicalize(&r.path).map_err(path_err(&r.path))?;
    let meta = std::fs::metadata(&path).map_err(path_err(&r.path))?;
    if meta.is_file() {
        let context = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        return Ok((context, path));
    }
    if !meta.is_dir() {
        return Err(BuildError::NotAFile {
            reference: r.to_string(),
            path: r.path.clone(),
        });
    }
    let found: Vec<PathBuf> = FILE_NAMES
        .iter()
        .map(|n| path.join(n))
        .filter(|p| p.is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok((path.clone(), one.clone())),
        [] => Err(BuildError::NoDockerfile {
            reference: r.to_string(),
            path: r.path.clone(),
        }),
        _ => Err(BuildError::TwoDockerfiles {
            reference: r.to_string(),
            path: r.path.clone(),
        }),
    }
}

/// The tool that builds: buildah, which needs no daemon, else docker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Builder {
    Buildah(PathBuf),
    Docker(PathBuf),
}

impl Builder {
    /// [`BUILDER_VAR`] when set, else the first of buildah and docker on
    /// `PATH`.
    pub fn find(reference: &str) -> Result<Builder, BuildError> {
        let forced = std::env::var(BUILDER_VAR).ok().filter(|v| !v.is_empty());
        let wanted: &[&str] = match forced.as_deref() {
            None => &["buildah", "docker"],
            Some("buildah") => &["buildah"],
            Some("docker") => &["docker"],
            Some(other) => {
                return Err(BuildError::UnknownBuilder {
                    reference: reference.to_string(),
                    value: other.to_string(),
                })
            }
        };
        let found = wanted.iter().find_map(|tool| {
            let program = match *tool {
                // As container mode finds its docker.
                "docker" => std::env::var("HOIST_DOCKER").unwrap_or_else(|_| "docker".into()),
                other => other.to_string(),
            };
            on_path(&program).map(|p| (*tool, p))
        });
        match found {
            Some(("buildah", p)) => Ok(Builder::Buildah(p)),
            Some((_, p)) => Ok(Builder::Docker(p)),
            None => Err(BuildError::NoBuilder {
                reference: reference.to_string(),
                forced: forced.is_some(),
            }),
        }
    }
}

/// `tool` itself when it names a path, else the first on `PATH`.
fn on_path(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if tool.contains('/') {
        return Some(PathBuf::from(tool)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The image of `r` in the store, built if need be: a pinned reference
/// must be stored (it is never rebuilt, and its context is not read);
/// otherwise an image the store recorded for the same build inputs is
/// used as stored (unless `--pull always`), and anything else is built
/// and imported. The image keeps `r` as its reference.
pub async fn obtain(
    store: &Store,
    client: &Client,
    r: &DockerfileRef,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, BuildError> {
    let mut pulled = match &r.digest {
        Some(pin) => stored_pin(store, client, r, pin, opts, progress).await?,
        None => unpinned(store, client, r, opts, progress).await?,
    };
    pulled.reference = r.to_string();
    Ok(pulled)
}

async fn unpinned(
    store: &Store,
    client: &Client,
    r: &DockerfileRef,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, BuildError> {
    let inputs = {
        let r = r.clone();
        blocking(move || inputs(&r)).await?
    };
    let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    let stored = match opts.policy {
        PullPolicy::Always => None,
        _ => built_for(store, &inputs, &wanted)?,
    };
    let record = inputs_record(inputs.store_name(), Some(&inputs.digest));
    let mut pulled = match stored {
        Some(digest) => from_store(store, client, digest, record, opts, progress).await?,
        None if opts.policy == PullPolicy::Never => {
            return Err(BuildError::NotBuilt {
                reference: r.to_string(),
            })
        }
        None => build_and_import(store, client, r, &inputs, record, opts, progress).await?,
    };
    pulled.build_inputs = Some(inputs.digest);
    Ok(pulled)
}

/// The pinned image `pin` of `r`, from the store: recorded under the
/// Dockerfile's name when that entry is this image (its inputs kept),
/// else under `NAME@DIGEST`, so that a newer build's entry stays.
async fn stored_pin(
    store: &Store,
    client: &Client,
    r: &DockerfileRef,
    pin: &Digest,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, BuildError> {
    let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    if !stored_complete(store, pin, &wanted) {
        return Err(BuildError::NotStored {
            reference: r.to_string(),
            digest: pin.clone(),
        });
    }
    let (_, dockerfile) = locate(r)?;
    let name = format!("{PREFIX}{}", dockerfile.display());
    let entry = store.lookup(&name).map_err(PullError::from)?;
    let inputs = entry.filter(|e| e.digest == *pin).and_then(|e| {
        e.annotations?
            .get(INPUTS_ANNOTATION)?
            .parse::<Digest>()
            .ok()
    });
    let record = match &inputs {
        Some(d) => inputs_record(name, Some(d)),
        None => inputs_record(format!("{name}@{pin}"), None),
    };
    let mut pulled = from_store(store, client, pin.clone(), record, opts, progress).await?;
    pulled.build_inputs = inputs;
    Ok(pulled)
}

fn inputs_record(name: String, inputs: Option<&Digest>) -> Record {
    Record {
        name,
        annotations: inputs
            .map(|d| (INPUTS_ANNOTATION.to_string(), d.to_string()))
            .into_iter()
            .collect(),
    }
}

/// The image `digest` read from the store as the OCI layout it is: its
/// blobs are all there, so nothing is copied.
async fn from_store(
    store: &Store,
    client: &Client,
    digest: Digest,
    record: Record,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, BuildError> {
    let from = LayoutRef {
        path: store.root().to_path_buf(),
        tag: None,
        digest: Some(digest),
    };
    import(store, client, &from, record, opts, progress).await
}

/// The image the store recorded as built from `inputs`, if it still
/// holds all of it.
fn built_for(
    store: &Store,
    inputs: &Inputs,
    wanted: &Platform,
) -> Result<Option<Digest>, BuildError> {
    let Some(entry) = store
        .lookup(&inputs.store_name())
        .map_err(PullError::from)?
    else {
        return Ok(None);
    };
    let same = entry
        .annotations
        .as_ref()
        .and_then(|a| a.get(INPUTS_ANNOTATION))
        .is_some_and(|d| *d == inputs.digest.to_string());
    Ok((same && stored_complete(store, &entry.digest, wanted)).then_some(entry.digest))
}

async fn build_and_import(
    store: &Store,
    client: &Client,
    r: &DockerfileRef,
    inputs: &Inputs,
    record: Record,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, BuildError> {
    let given = r.to_string();
    let builder = Builder::find(&given)?;
    // Held while the scratch directory exists: `hoist gc`, which takes it
    // exclusively, removes only the scratch of builds that were killed.
    let _gc = {
        let store = store.clone();
        blocking(move || Ok(store.gc_lock_shared().map_err(PullError::from)?)).await?
    };
    // The builder's storage and the layout live only for this build; the
    // store's own directory keeps them on the store's filesystem.
    let scratch = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in(store.ingest_dir())
        .map_err(|source| BuildError::Path {
            reference: given.clone(),
            path: store.ingest_dir(),
            source,
        })?;
    // And this, on the directory itself, while the build lives: `hoist
    // system df` and gc tell a live build's scratch from a dead one's by it.
    let _alive = crate::rootfs::gc::hold_build_scratch(scratch.path()).map_err(|source| {
        BuildError::Path {
            reference: given.clone(),
            path: scratch.path().to_path_buf(),
            source,
        }
    })?;
    let layout = scratch.path().join("layout");
    {
        let (given, inputs, dir, layout) = (
            given.clone(),
            inputs.clone(),
            scratch.path().to_path_buf(),
            layout.clone(),
        );
        blocking(move || build(&builder, &given, &inputs, &dir, &layout)).await?;
    }
    let from = LayoutRef {
        path: layout,
        tag: Some("latest".into()),
        digest: None,
    };
    import(store, client, &from, record, opts, progress).await
}

/// Pull the image `from` names into the store, recorded as `record`
/// says.
async fn import(
    store: &Store,
    client: &Client,
    from: &LayoutRef,
    record: Record,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, BuildError> {
    let reference = Reference::Layout(from.clone());
    Ok(pull_as(store, client, &reference, opts, progress, Some(record)).await?)
}

/// Build `inputs` with `builder` into the OCI layout `layout` (tag
/// `latest`), `dir` the build's scratch directory.
fn build(
    builder: &Builder,
    reference: &str,
    inputs: &Inputs,
    dir: &Path,
    layout: &Path,
) -> Result<(), BuildError> {
    match builder {
        Builder::Buildah(tool) => buildah(tool, reference, inputs, dir, layout),
        Builder::Docker(tool) => docker(tool, reference, inputs, dir, layout),
    }
}

/// buildah with storage of its own under `dir` (vfs: works anywhere,
/// touches neither podman's nor the host's storage), every timestamp 0,
/// then pushed to the layout; its storage removed by buildah itself
/// (a rootless build's files may belong to subordinate ids).
fn buildah(
    tool: &Path,
    reference: &str,
    inputs: &Inputs,
    dir: &Path,
    layout: &Path,
) -> Result<(), BuildError> {
    let storage = |c: &mut Command| {
        c.arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--storage-driver", "vfs"]);
    };
    let image = format!("{BUILT_NAME}:latest");
    let mut b = Command::new(tool);
    storage(&mut b);
    b.args(["build", "--timestamp", "0", "--quiet", "-f"])
        .arg(&inputs.dockerfile)
        .args(["-t", &image])
        .arg(&inputs.context);
    let built = run(&mut b, reference);
    let pushed = built.and_then(|()| {
        let mut p = Command::new(tool);
        storage(&mut p);
        // A push to a layout needs no credentials, and buildah refuses
        // an auth file DOCKER_CONFIG names that is not there.
        p.args(["push", "--quiet", &image])
            .arg(format!("oci:{}:latest", layout.display()))
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE");
        run(&mut p, reference)
    });
    let mut clean = Command::new(tool);
    storage(&mut clean);
    clean.args(["rmi", "--all", "--force"]);
    // Best effort: the scratch directory is removed after in any case;
    // a failure here only leaves what that removal then deletes.
    let _ = clean.output();
    pushed
}

/// `docker build` (the daemon's builder: not daemonless, not run as the
/// invoking user, timestamps not reproducible), then `docker save`'s
/// archive converted to an OCI layout; the tag removed after.
fn docker(
    tool: &Path,
    reference: &str,
    inputs: &Inputs,
    dir: &Path,
    layout: &Path,
) -> Result<(), BuildError> {
    let tag = format!(
        "{BUILT_NAME}:{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| "latest".into())
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    let archive = dir.join("image.tar");
    let mut b = Command::new(tool);
    b.args(["build", "--quiet", "-f"])
        .arg(&inputs.dockerfile)
        .args(["-t", &tag])
        .arg(&inputs.context)
        .env("SOURCE_DATE_EPOCH", "0");
    let saved = run(&mut b, reference).and_then(|()| {
        let mut s = Command::new(tool);
        s.args(["save", "-o"]).arg(&archive).arg(&tag);
        run(&mut s, reference)
    });
    let mut rmi = Command::new(tool);
    rmi.args(["rmi", "--force", &tag]);
    // Best effort: an image left in the daemon costs space, not
    // correctness, and `docker image prune` finds it by its name.
    let _ = rmi.output();
    saved?;
    archive_to_layout(&archive, &dir.join("archive"), layout).map_err(|message| {
        BuildError::Archive {
            reference: reference.to_string(),
            path: archive.clone(),
            message,
        }
    })
}

fn run(c: &mut Command, reference: &str) -> Result<(), BuildError> {
    let tool = c.get_program().to_string_lossy().into_owned();
    let out = c.output().map_err(|source| BuildError::Spawn {
        reference: reference.to_string(),
        tool: tool.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(BuildError::Failed {
        reference: reference.to_string(),
        command: format!("{tool} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `docker save`'s archive (manifest.json, the config, uncompressed layer
/// tars) as an OCI layout: the config and layers are the same bytes, so
/// the image's diff ids and tree are the daemon's.
fn archive_to_layout(archive: &Path, unpacked: &Path, layout: &Path) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let file = std::fs::File::open(archive).map_err(|e| e.to_string())?;
    tar::Archive::new(file)
        .unpack(unpacked)
        .map_err(|e| format!("unpacking: {e}"))?;
    let listed = std::fs::read(unpacked.join("manifest.json")).map_err(|e| e.to_string())?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&listed).map_err(|e| format!("manifest.json: {e}"))?;
    let [entry] = entries.as_slice() else {
        return Err(format!(
            "manifest.json lists {} images, not one",
            entries.len()
        ));
    };
    let store = Store::init_layout(layout).map_err(|e| e.to_string())?;
    let blob = |name: &str, media_type: &str| -> Result<Descriptor, String> {
        let plain = Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(format!(
                "manifest.json names {name:?}, not a file in the archive"
            ));
        }
        let src = unpacked.join(name);
        let (digest, size) = hash_file(&src)?;
        let dest = store.blob_path(&digest);
        std::fs::copy(&src, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(descriptor(media_type, digest, size))
    };
    let config = blob(&entry.config, manifest::OCI_CONFIG)?;
    let layers = entry
        .layers
        .iter()
        .map(|l| blob(l, "application/vnd.oci.image.layer.v1.tar"))
        .collect::<Result<Vec<_>, _>>()?;
    let m = Manifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.to_string()),
        config,
        layers,
        annotations: None,
    };
    let bytes = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
    let digest = Digest::sha256_of(&bytes);
    store.put_blob(&digest, &bytes).map_err(|e| e.to_string())?;
    let mut top = descriptor(manifest::OCI_MANIFEST, digest, bytes.len() as u64);
    top.annotations = Some(
        [(ANNOTATION_REF_NAME.to_string(), "latest".to_string())]
            .into_iter()
            .collect(),
    );
    let index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.to_string()),
        manifests: vec![top],
        annotations: None,
    };
    let bytes = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    store
        .write_atomic(&layout.join("index.json"), &bytes)
        .map_err(|e| e.to_string())
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: None,
        urls: None,
    }
}

fn hash_file(path: &Path) -> Result<(Digest, u64), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok((hasher.finish(), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BuildError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> DockerfileRef {
        DockerfileRef::parse(s).unwrap().unwrap()
    }

    #[test]
    fn references() {
        assert!(DockerfileRef::parse("oci:x").is_none());
        assert!(matches!(
            DockerfileRef::parse("dockerfile:"),
            Some(Err(BuildError::NoPath { .. }))
        ));
        let r = parse("dockerfile:agents/a");
        assert_eq!((r.path, r.digest), ("agents/a".into(), None));
        let r = parse(&format!("dockerfile:a/Dockerfile@{D}"));
        assert_eq!(r.digest.as_ref().map(|d| d.to_string()).as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("dockerfile:a/Dockerfile@{D}"));
        // An '@' that is not a digest is part of the path.
        assert_eq!(parse("dockerfile:a@b").path, PathBuf::from("a@b"));
    }

    #[test]
    fn inputs_digest_covers_name_and_listing() {
        let a = inputs_digest("Dockerfile", "x f 0644 0 0 size=1 sha256=aa\n");
        assert_eq!(
            a,
            inputs_digest("Dockerfile", "x f 0644 0 0 size=1 sha256=aa\n")
        );
        assert_ne!(
            a,
            inputs_digest("Containerfile", "x f 0644 0 0 size=1 sha256=aa\n")
        );
        assert_ne!(
            a,
            inputs_digest("Dockerfile", "x f 0755 0 0 size=1 sha256=aa\n")
        );
    }

    #[test]
    fn a_directory_holds_one_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let r = DockerfileRef {
            path: dir.path().to_path_buf(),
            digest: None,
        };
        assert!(matches!(locate(&r), Err(BuildError::NoDockerfile { .. })));
        std::fs::write(dir.path().join("Containerfile"), "FROM scratch\n").unwrap();
        let (ctx, file) = locate(&r).unwrap();
        assert_eq!(file, ctx.join("Containerfile"));
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        assert!(matches!(locate(&r), Err(BuildError::TwoDockerfiles { .. })));
        let named = DockerfileRef {
            path: dir.path().join("Dockerfile"),
            digest: None,
        };
        assert_eq!(
            locate(&named).unwrap(),
            (ctx.clone(), ctx.join("Dockerfile"))
        );
        let missing = DockerfileRef {
            path: dir.path().join("nope"),
            digest: None,
        };
        let e = locate(&missing).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("nope"), "{e}");
    }
}
