//! Which axes (docs/images.md) an image can serve: a benchmark holds
//! `/tasks/<id>/task.json`, an agent `/opt/agent/run`, a gateway
//! `/opt/gateway/run`. Read from the layers' tar headers, without
//! unpacking anything, when every layer is on this machine; otherwise from
//! the labels the sample images carry (`io.hoist.axis`, `io.hoist.tasks`,
//! set by `scripts/build-samples`), which are a claim, not a check.
//!
//! The layers are applied in order with the OCI whiteout rules
//! (image-spec layer.md "Whiteouts") to the few paths that decide the axes
//! ([`Union`], pure), so a task deleted by an upper layer is not counted.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use serde::Serialize;

use crate::digest::Hasher;
use crate::manifest::Descriptor;
use crate::pipeline::task::is_safe_id;
use crate::unpack::path::{classify, normalize, PathProblem, Role};
use crate::unpack::{Compression, Limits, HEADER_BUDGET};

/// The label the sample images name their axis with.
pub const AXIS_LABEL: &str = "io.hoist.axis";
/// The label the sample benchmark images list their tasks in (commas).
pub const TASKS_LABEL: &str = "io.hoist.tasks";

/// What an image can serve as. `None`: not known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Axes {
    pub source: AxesSource,
    /// Why the layers were not read, or failed to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub benchmark: Option<bool>,
    pub agent: Option<bool>,
    pub gateway: Option<bool>,
    /// The benchmark's task ids, sorted, when known.
    pub tasks: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AxesSource {
    /// Read from the layers' tar headers: what a run would find.
    Layers,
    /// Taken from `io.hoist.axis` / `io.hoist.tasks`: what the image says.
    Labels,
    /// Neither the layers nor a label were there.
    Unknown,
}

/// The axes from `labels`, or unknown, with `note` saying why the layers
/// were not read.
pub fn from_labels(labels: &BTreeMap<String, String>, note: String) -> Axes {
    let tasks: Option<Vec<String>> = labels.get(TASKS_LABEL).map(|t| {
        let mut ids: Vec<String> = t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        ids.sort();
        ids
    });
    let axis = labels.get(AXIS_LABEL).map(String::as_str);
    let said = |name: &str| (axis == Some(name)).then_some(true);
    let source = match (axis, &tasks) {
        (None, None) => AxesSource::Unknown,
        _ => AxesSource::Labels,
    };
    Axes {
        source,
        note: Some(note),
        benchmark: said("benchmark").or(tasks.as_ref().map(|t| !t.is_empty())),
        agent: said("agent"),
        gateway: said("gateway"),
        tasks,
    }
}

/// The axes from the layer blobs at `paths` (one per descriptor of
/// `layers`, in order), each verified against its digest as it is read.
pub fn from_layers(layers: &[Descriptor], paths: &[&Path]) -> Result<Axes, String> {
    let mut union = Union::default();
    for (i, (desc, path)) in layers.iter().zip(paths).enumerate() {
        scan_layer(&mut union, i, desc, path).map_err(|e| format!("layer {}: {e}", desc.digest))?;
    }
    let tasks = union.tasks();
    Ok(Axes {
        source: AxesSource::Layers,
        note: None,
        benchmark: Some(!tasks.is_empty()),
        agent: Some(union.has(b"opt/agent/run")),
        gateway: Some(union.has(b"opt/gateway/run")),
        tasks: Some(tasks),
    })
}

/// An entry's type, as far as the axes care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    Regular { executable: bool },
    Hardlink,
    Symlink,
    Other,
}

/// The paths of the layers' union that decide the axes, each with the
/// layer that put it there (whiteouts hide only lower layers' entries).
#[derive(Debug, Default)]
pub(crate) struct Union {
    found: BTreeMap<Vec<u8>, usize>,
}

impl Union {
    /// `DIR/.wh.NAME` in `layer`: the lower layers' `NAME` and all below.
    pub(crate) fn whiteout(&mut self, layer: usize, target: &[u8]) {
        self.found
            .retain(|p, l| *l >= layer || !(p == target || under(p, target)));
    }

    /// `DIR/.wh..wh..opq` in `layer`: the lower layers' contents of `DIR`.
    pub(crate) fn opaque(&mut self, layer: usize, dir: &[u8]) {
        self.found.retain(|p, l| *l >= layer || !under(p, dir));
    }

    /// An ordinary entry at `path`. Anything but a directory replaces
    /// whatever was there, its contents included; a directory merges.
    pub(crate) fn entry(&mut self, layer: usize, path: &[u8], kind: Kind) {
        if kind != Kind::Dir {
            self.found.retain(|p, _| !under(p, path));
        }
        self.found.remove(path);
        if decides(path, kind) {
            self.found.insert(path.to_vec(), layer);
        }
    }

    pub(crate) fn has(&self, path: &[u8]) -> bool {
        self.found.contains_key(path)
    }

    /// The ids of `tasks/<id>/task.json` present, sorted.
    pub(crate) fn tasks(&self) -> Vec<String> {
        self.found
            .keys()
            .filter_map(|p| task_id(p))
            .map(String::from)
            .collect()
    }
}

/// `p` lies strictly below `dir` (the root, empty, holds everything).
fn under(p: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
}

/// The id of `tasks/<id>/task.json`, as `hoist tasks` accepts ids.
fn task_id(p: &[u8]) -> Option<&str> {
    let rest = p.strip_prefix(b"tasks/")?.strip_suffix(b"/task.json")?;
    let id = std::str::from_utf8(rest).ok()?;
    is_safe_id(id).then_some(id)
}

/// Whether an entry decides an axis: a task's `task.json` (a regular
/// file, as `hoist tasks` requires), or an axis's `run` (the supervisor
/// executes it: an executable file, or a link to one).
fn decides(path: &[u8], kind: Kind) -> bool {
    if task_id(path).is_some() {
        return matches!(kind, Kind::Regular { .. } | Kind::Hardlink);
    }
    if path == b"opt/agent/run" || path == b"opt/gateway/run" {
        return matches!(
            kind,
            Kind::Regular { executable: true } | Kind::Hardlink | Kind::Symlink
        );
    }
    false
}

/// Apply one layer blob's entries to `union`.
fn scan_layer(union: &mut Union, index: usize, desc: &Descriptor, path: &Path) -> io::Result<()> {
    let compression = Compression::from_media_type(&desc.media_type)
        .ok_or_else(|| io::Error::other(format!("{} is not a tar layer type", desc.media_type)))?;
    let file = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let hashed = Rc::new(std::cell::RefCell::new((desc.digest.hasher(), 0u64)));
    let blob = Hashing {
        inner: &file,
        state: hashed.clone(),
    };
    let decoded: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(blob),
        // Multi-member, as Go's gzip reader (and so Docker) reads it.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
    };
    let budget = Rc::new(Cell::new(None));
    let limited = Budgeted {
        inner: BufReader::with_capacity(256 * 1024, decoded),
        header: budget.clone(),
        total: Limits::default().max_uncompressed_bytes,
    };
    let mut archive = tar::Archive::new(limited);
    read_entries(&mut archive, &budget, union, index)?;
    // The digest covers the whole blob: read what the decoder left.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())?;
    drop(rest);
    io::copy(
        &mut Hashing {
            inner: &file,
            state: hashed.clone(),
        },
        &mut io::sink(),
    )?;
    let (hasher, n) = Rc::try_unwrap(hashed)
        .map_err(|_| io::Error::other("layer reader still shared"))?
        .into_inner();
    check_blob(desc, hasher, n)
}

/// Each entry of the archive into `union`, its data read past (outside
/// the header budget: the parser would otherwise skip it within).
fn read_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    budget: &Cell<Option<u64>>,
    union: &mut Union,
    index: usize,
) -> io::Result<()> {
    let mut entries = archive.entries()?;
    loop {
        // What the parser reads between entries (PAX records, long
        // names) it keeps in memory: bounded as unpack bounds it.
        budget.set(Some(HEADER_BUDGET));
        let next = entries.next();
        budget.set(None);
        let Some(entry) = next else { return Ok(()) };
        let mut entry = entry?;
        apply_entry(union, index, &entry)?;
        io::copy(&mut entry, &mut io::sink())?;
    }
}

fn check_blob(desc: &Descriptor, hasher: Hasher, n: u64) -> io::Result<()> {
    if n != desc.size {
        return Err(io::Error::other(format!(
            "the blob is {n} bytes, the manifest says {}",
            desc.size
        )));
    }
    let found = hasher.finish();
    if found != desc.digest {
        return Err(io::Error::other(format!(
            "the blob's bytes hash to {found}"
        )));
    }
    Ok(())
}

fn apply_entry<R: Read>(
    union: &mut Union,
    layer: usize,
    entry: &tar::Entry<'_, R>,
) -> io::Result<()> {
    let raw = entry.path_bytes();
    let bad =
        |why: &str| io::Error::other(format!("entry {:?}: {why}", String::from_utf8_lossy(&raw)));
    let path = normalize(&raw).map_err(|p| match p {
        PathProblem::Escape => bad("it climbs above the root"),
        PathProblem::Invalid(why) => bad(why),
    })?;
    match classify(&path).map_err(bad)? {
        Role::Whiteout { target } => union.whiteout(layer, &target.key()),
        Role::Opaque { dir } => union.opaque(layer, &dir.key()),
        Role::AufsMeta => {}
        Role::Plain if path.is_root() => {}
        Role::Plain => union.entry(layer, &path.key(), kind_of(entry.header())),
    }
    Ok(())
}

fn kind_of(h: &tar::Header) -> Kind {
    use tar::EntryType as T;
    match h.entry_type() {
        T::Directory => Kind::Dir,
        T::Regular | T::Continuous | T::GNUSparse => Kind::Regular {
            executable: h.mode().is_ok_and(|m| m & 0o111 != 0),
        },
        T::Link => Kind::Hardlink,
        T::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Hashes and counts every byte read from the blob file.
struct Hashing<'f> {
    inner: &'f File,
    state: Rc<std::cell::RefCell<(Hasher, u64)>>,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.borrow_mut();
        s.0.update(&buf[..n]);
        s.1 += n as u64;
        Ok(n)
    }
}

/// The uncompressed stream under the tar parser: at most `total` bytes,
/// and at most `header` bytes while the parser looks for an entry.
struct Budgeted<R> {
    inner: R,
    header: Rc<Cell<Option<u64>>>,
    total: u64,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut max = buf.len().min(self.total.min(usize::MAX as u64) as usize);
        if let Some(left) = self.header.get() {
            max = max.min(left.min(usize::MAX as u64) as usize);
        }
        if max == 0 && !buf.is_empty() {
            return Err(io::Error::other(
                "the layer is over hoist's size limits for a tar stream or its headers",
            ));
        }
        let n = self.inner.read(&mut buf[..max])?;
        self.total -= n as u64;
        if let Some(left) = self.header.get() {
            self.header.set(Some(left - n as u64));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: Kind = Kind::Regular { executable: true };
    const FILE: Kind = Kind::Regular { executable: false };

    #[test]
    fn tasks_and_runs_are_found() {
        let mut u = Union::default();
        u.entry(0, b"tasks", Kind::Dir);
        u.entry(0, b"tasks/b/task.json", FILE);
        u.entry(0, b"tasks/a/task.json", Kind::Hardlink);
        u.entry(0, b"opt/agent/run", EXE);
        assert_eq!(u.tasks(), ["a", "b"]);
        assert!(u.has(b"opt/agent/run"));
        assert!(!u.has(b"opt/gateway/run"));
    }

    #[test]
    fn only_what_a_run_would_accept_counts() {
        let mut u = Union::default();
        u.entry(0, b"tasks/a/task.json", Kind::Symlink);
        u.entry(0, b"tasks/../task.json", FILE);
        u.entry(0, b"tasks/x/y/task.json", FILE);
        u.entry(0, b"opt/agent/run", FILE);
        u.entry(0, b"opt/gateway/run", Kind::Symlink);
        assert!(u.tasks().is_empty());
        assert!(!u.has(b"opt/agent/run"), "not executable");
        assert!(u.has(b"opt/gateway/run"));
    }

    #[test]
    fn whiteout_hides_lower_layers_only() {
        let mut u = Union::default();
        u.entry(0, b"tasks/a/task.json", FILE);
        u.entry(0, b"tasks/b/task.json", FILE);
        u.entry(1, b"tasks/c/task.json", FILE);
        u.whiteout(1, b"tasks/a");
        u.whiteout(1, b"tasks/c");
        assert_eq!(u.tasks(), ["b", "c"]);
        u.whiteout(2, b"tasks");
        assert!(u.tasks().is_empty());
    }

    #[test]
    fn opaque_directory_hides_lower_contents() {
        let mut u = Union::default();
        u.entry(0, b"opt/agent/run", EXE);
        u.entry(0, b"tasks/a/task.json", FILE);
        u.entry(1, b"tasks/b/task.json", FILE);
        u.opaque(1, b"tasks");
        u.opaque(1, b"opt/agent");
        assert_eq!(u.tasks(), ["b"]);
        assert!(!u.has(b"opt/agent/run"));
    }

    #[test]
    fn a_file_or_link_replaces_a_directory_and_its_contents() {
        let mut u = Union::default();
        u.entry(0, b"tasks/a/task.json", FILE);
        u.entry(0, b"opt/gateway/run", EXE);
        u.entry(1, b"tasks", Kind::Symlink);
        u.entry(1, b"opt", FILE);
        assert!(u.tasks().is_empty());
        assert!(!u.has(b"opt/gateway/run"));
        // A directory merges with the lower one.
        u.entry(2, b"tasks/a/task.json", FILE);
        u.entry(3, b"tasks", Kind::Dir);
        assert_eq!(u.tasks(), ["a"]);
        // A directory where the file was replaces it.
        u.entry(4, b"tasks/a/task.json", Kind::Dir);
        assert!(u.tasks().is_empty());
    }

    #[test]
    fn labels_are_a_claim() {
        let labels: BTreeMap<String, String> = [
            (AXIS_LABEL.to_string(), "benchmark".to_string()),
            (TASKS_LABEL.to_string(), "z,a".to_string()),
        ]
        .into();
        let a = from_labels(&labels, "why".into());
        assert_eq!(a.source, AxesSource::Labels);
        assert_eq!(a.benchmark, Some(true));
        assert_eq!(a.agent, None);
        assert_eq!(
            a.tasks.as_deref(),
            Some(&["a".to_string(), "z".to_string()][..])
        );
        let agent: BTreeMap<String, String> =
            [(AXIS_LABEL.to_string(), "agent".to_string())].into();
        let a = from_labels(&agent, "why".into());
        assert_eq!((a.benchmark, a.agent, a.tasks), (None, Some(true), None));
        let a = from_labels(&BTreeMap::new(), "why".into());
        assert_eq!(a.source, AxesSource::Unknown);
        assert_eq!((a.benchmark, a.agent, a.gateway), (None, None, None));
    }

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    /// `bytes` as the layer blob `dir/name`, with a descriptor that names
    /// the bytes' own digest.
    fn layer(dir: &Path, name: &str, bytes: Vec<u8>) -> (Descriptor, std::path::PathBuf) {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let desc = Descriptor {
            media_type: TAR.into(),
            digest: Digest::sha256_of(&bytes),
            size: bytes.len() as u64,
            platform: None,
            annotations: None,
            urls: None,
        };
        (desc, path)
    }

    fn tar_of(entries: &[(&str, tar::EntryType, u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(0);
            if *kind == tar::EntryType::Symlink {
                b.append_link(&mut h, path, "target").unwrap();
            } else {
                b.append_data(&mut h, path, io::empty()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    use crate::digest::Digest;
    use tar::EntryType as T;

    #[test]
    fn layers_are_read_in_order_with_their_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let lower = tar_of(&[
            ("tasks/", T::Directory, 0o700),
            ("tasks/a/task.json", T::Regular, 0o600),
            ("tasks/b/task.json", T::Regular, 0o600),
            ("opt/agent/run", T::Regular, 0o755),
        ]);
        let upper = tar_of(&[
            ("tasks/.wh.a", T::Regular, 0o600),
            ("opt/agent/.wh..wh..opq", T::Regular, 0o600),
            ("opt/gateway/run", T::Symlink, 0o777),
        ]);
        let (l0, p0) = layer(d.path(), "0", lower);
        let (l1, p1) = layer(d.path(), "1", upper);
        let a = from_layers(&[l0, l1], &[&p0, &p1]).unwrap();
        assert_eq!(a.source, AxesSource::Layers);
        assert_eq!(a.tasks.as_deref(), Some(&["b".to_string()][..]));
        assert_eq!(
            (a.benchmark, a.agent, a.gateway),
            (Some(true), Some(false), Some(true))
        );
    }

    #[test]
    fn a_blob_that_is_not_its_digest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut desc, path) = layer(
            d.path(),
            "0",
            tar_of(&[("tasks/a/task.json", T::Regular, 0o600)]),
        );
        desc.digest = Digest::sha256_of(b"other bytes");
        let err = from_layers(&[desc], &[&path]).unwrap_err();
        assert!(err.contains("hash to"), "{err}");
    }

    #[test]
    fn a_long_name_over_the_header_budget_is_refused_not_buffered() {
        // A GNU long-name entry the parser would hold in memory whole.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(T::GNULongName);
        h.set_size(HEADER_BUDGET + 1024);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        let body = (HEADER_BUDGET + 1024).div_ceil(512) * 512;
        bytes.resize(bytes.len() + body as usize, b'a');
        bytes.extend(tar_of(&[("tasks/a/task.json", T::Regular, 0o600)]));
        let d = tempfile::tempdir().unwrap();
        let (desc, path) = layer(d.path(), "0", bytes);
        let err = from_layers(&[desc], &[&path]).unwrap_err();
        assert!(err.contains("size limits"), "{err}");
    }

    #[test]
    fn a_path_that_climbs_out_is_refused() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(T::Regular);
        h.set_size(0);
        h.as_ustar_mut().unwrap().name[..17].copy_from_slice(b"../tasks/a/task.j");
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.resize(bytes.len() + 1024, 0);
        let d = tempfile::tempdir().unwrap();
        let (desc, path) = layer(d.path(), "0", bytes);
        let err = from_layers(&[desc], &[&path]).unwrap_err();
        assert!(err.contains("climbs above the root"), "{err}");
    }
}
