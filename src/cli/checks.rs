//! The cheap checks that come before the costly work (issue 13 §3): each
//! failure is a [`UsageError`] (exit 2) that names the flag.

use std::path::{Path, PathBuf};

use hoist::exit::UsageError;
use hoist::inspect::axes;
use hoist::pipeline::task::{choose_task, is_safe_id, TaskError};
use hoist::pull::Pulled;
use hoist::store::Store;

/// A timeout: seconds, or a number with `s`, `m` or `h` (`90s`, `10m`,
/// `1h`, `1h30m`); at least one second. For clap's `value_parser`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad =
        || "not a duration: give seconds, or a number with s, m or h (90s, 10m, 1h)".to_string();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            last_unit = false;
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        digits.clear();
        last_unit = true;
    }
    if !last_unit {
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.checked_add(n).ok_or_else(bad)?;
    }
    if total == 0 {
        return Err("a timeout must be at least one second".into());
    }
    Ok(total)
}

/// `--recordings DIR`: a directory that exists, made absolute (it is bound
/// into the sandbox or the container by path).
pub fn recordings_dir(path: &Path) -> Result<PathBuf, UsageError> {
    let flag = "--recordings";
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(path)
            .map_err(|e| UsageError::new(flag, format!("{}: {e}", path.display()))),
        Ok(_) => Err(UsageError::new(
            flag,
            format!("{} is not a directory", path.display()),
        )),
        Err(e) => Err(UsageError::new(flag, format!("{}: {e}", path.display()))),
    }
}

/// `--out DIR`: absent, or a directory (whether it must be empty is the
/// command's to say), never a file.
pub fn out_dir(path: &Path) -> Result<(), UsageError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => Err(UsageError::new(
            "--out",
            format!(
                "{} is a file, not a directory; give a new or empty directory",
                path.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// What a store holds (src/store, src/rootfs) before its `oci-layout`
/// file is written.
const STORE_ENTRIES: [&str; 6] = [
    "blobs",
    "index.json",
    "index.json.lock",
    "ingest",
    "gc.lock",
    "oci-layout",
];

/// `--store DIR` (or `HOIST_STORE`): absent, an empty directory, or an
/// OCI image layout already (a store hoist made, or one skopeo wrote).
pub fn store_dir(path: &Path, flag: &str) -> Result<(), UsageError> {
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(UsageError::new(flag, format!("{}: {e}", path.display()))),
        Ok(m) => m,
    };
    if !meta.is_dir() {
        return Err(UsageError::new(
            flag,
            format!("{} is a file, not a directory", path.display()),
        ));
    }
    if path.join("oci-layout").is_file() {
        return Ok(());
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| UsageError::new(flag, format!("{}: {e}", path.display())))?;
    // Another hoist may be making the store right now: what it has made
    // so far is not someone else's content.
    let foreign = entries.flatten().find(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        !(STORE_ENTRIES.contains(&name.as_ref()) || name.starts_with(".tmp-"))
    });
    match foreign {
        None => Ok(()),
        Some(_) => Err(UsageError::new(
            flag,
            format!(
                "{} is neither empty nor a hoist store (it has no oci-layout file); give a new or empty directory, or an existing store",
                path.display()
            ),
        )),
    }
}

/// The tasks of a pulled benchmark image, from its layers' tar headers
/// (nothing unpacked), remembered in the store by manifest digest: the
/// layers of a digest never change, and a large image's scan costs
/// seconds.
pub fn benchmark_tasks(store: &Store, image: &Pulled) -> anyhow::Result<Vec<String>> {
    let dir = store.root().join("task-lists");
    let cached = dir.join(image.manifest_digest.hex());
    if let Some(ids) = std::fs::read(&cached)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .filter(|ids| ids.iter().all(|id| is_safe_id(id)))
    {
        return Ok(ids);
    }
    let paths: Vec<PathBuf> = image
        .manifest
        .layers
        .iter()
        .map(|l| store.blob_path(&l.digest))
        .collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let found = axes::from_layers(&image.manifest.layers, &refs)
        .map_err(|e| anyhow::anyhow!("listing the tasks of {}: {e}", image.reference))?;
    let ids = found.tasks.unwrap_or_default();
    // Only a cache: without it the next run scans again.
    let remembered = std::fs::create_dir_all(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(store.write_atomic(&cached, &serde_json::to_vec(&ids)?)?));
    if let Err(e) = remembered {
        tracing::debug!(error = %e, "could not remember the task list");
    }
    Ok(ids)
}

/// The image `reference` holds tasks: it is a benchmark.
pub fn require_tasks(reference: &str, tasks: &[String]) -> Result<(), UsageError> {
    match tasks {
        [] => check_task(reference, tasks, None).map(drop),
        _ => Ok(()),
    }
}

/// The benchmark image `reference` holds tasks, and `task` is one of them
/// (or, left out, the only one).
pub fn check_task(
    reference: &str,
    tasks: &[String],
    task: Option<&str>,
) -> Result<String, UsageError> {
    choose_task(task, tasks).map_err(|e| match e {
        TaskError::NoTasks => UsageError::new(
            "--benchmark",
            format!("{reference} is not a benchmark image: it has no /tasks/<id>/task.json"),
        ),
        TaskError::Ambiguous(ids) => UsageError::new(
            "--task",
            format!(
                "{reference} holds {} tasks; choose one: {}",
                ids.len(),
                ids.join(", ")
            ),
        ),
        TaskError::NotFound { id, available } => UsageError::new(
            "--task",
            format!(
                "{reference} has no task {id:?}; its tasks: {}",
                available.join(", ")
            ),
        ),
        other => UsageError::new("--task", other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2m5", 125),
        ] {
            assert_eq!(parse_duration(text), Ok(secs), "{text}");
        }
        for bad in ["", "0", "0s", "-5", "5x", "m", "1.5h", "h1"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("at least one second"));
    }

    #[test]
    fn task_choice_names_the_flag() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let e = check_task("r", &ids, Some("c")).unwrap_err();
        assert_eq!(e.flag, "--task");
        assert!(e.message.contains("a, b"), "{e}");
        let e = check_task("r", &ids, None).unwrap_err();
        assert!(e.message.contains("holds 2 tasks"), "{e}");
        let e = check_task("r", &[], None).unwrap_err();
        assert_eq!(e.flag, "--benchmark");
        assert!(e.message.contains("not a benchmark image"), "{e}");
        assert_eq!(check_task("r", &ids[..1], None).unwrap(), "a");
    }

    #[test]
    fn store_dir_must_be_empty_or_a_layout() {
        let d = tempfile::tempdir().unwrap();
        assert!(store_dir(&d.path().join("new"), "--store").is_ok());
        assert!(store_dir(d.path(), "--store").is_ok());
        std::fs::write(d.path().join("x"), "").unwrap();
        let e = store_dir(d.path(), "--store").unwrap_err();
        assert!(e.message.contains("neither empty nor"), "{e}");
        assert!(store_dir(&d.path().join("x"), "--store").is_err());
        std::fs::write(d.path().join("oci-layout"), "{}").unwrap();
        assert!(store_dir(d.path(), "--store").is_ok());
        // A store another hoist is making: blobs/ before oci-layout.
        let making = tempfile::tempdir().unwrap();
        std::fs::create_dir(making.path().join("blobs")).unwrap();
        std::fs::write(making.path().join(".tmp-x1"), "").unwrap();
        assert!(store_dir(making.path(), "--store").is_ok());
    }
}
