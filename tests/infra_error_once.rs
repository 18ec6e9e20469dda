//! One error per failure (issue 13 §6): an infrastructure error inside
//! the sandbox is printed once, naming its stage. The supervisor used to
//! print it on its stderr (which is hoist's) and hoist again from
//! result.json; now result.json carries it and hoist prints it, as the
//! verdict line of `hoist run`, on stderr under `--quiet`, and as the task's
//! line of `hoist eval`.
//!
//! The failure: an agent image whose /opt/agent has no `run` (DESIGN §2),
//! which the supervisor finds inside the sandbox. Needs root, the samples
//! (`HOIST_SAMPLES_OCI`) and the static hoist; skips with the reason
//! otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::*;

const MISSING: &str = "/opt/agent/run is missing from the rootfs";

struct Env {
    pyfix: String,
    task: String,
    /// An OCI layout holding the agent image without `run`, and the store.
    dir: PathBuf,
}

fn env() -> Option<Env> {
    if !require_root("the sandbox tests", "namespaces, overlay mounts") {
        return None;
    }
    if static_hoist().is_none() {
        skip("no static hoist: run scripts/build-static");
        return None;
    }
    let oci = env_or_skip("HOIST_SAMPLES_OCI")?;
    let task = env_or_skip("HOIST_SAMPLES_PYFIX_TASKS")?
        .split_whitespace()
        .next()?
        .to_string();
    // This file's own store, kept between runs for its layer cache.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("infra-error-once");
    write_agent_without_run(&dir.join("layout"));
    Some(Env {
        pyfix: format!("oci:{oci}:pyfix"),
        task,
        dir,
    })
}

impl Env {
    fn agent(&self) -> String {
        format!("oci:{}:no-run", self.dir.join("layout").display())
    }

    fn hoist(&self, global: &[&str], args: &[&str], out: &Path) -> Output {
        run(hoist(&self.dir.join("store"))
            .args(global)
            .args(args)
            .args(["--benchmark", &self.pyfix, "--agent", &self.agent()])
            .arg("--out")
            .arg(out))
    }
}

/// An OCI layout whose image `no-run` holds /opt/agent, empty: an agent
/// the host accepts (the axis has its directory) and the supervisor
/// refuses.
fn write_agent_without_run(dir: &Path) {
    use sha2::Digest as _;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        (digest, bytes.len())
    };
    let mut tar = tar::Builder::new(Vec::new());
    for path in ["opt/", "opt/agent/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_704_067_200);
        h.set_size(0);
        tar.append_data(&mut h, path, std::io::empty()).unwrap();
    }
    let (layer, layer_size) = blob(&tar.into_inner().unwrap());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let (config, config_size) = blob(
        format!(
            r#"{{"architecture": "{arch}", "os": "linux", "config": {{}},
                "rootfs": {{"type": "layers", "diff_ids": ["{layer}"]}}}}"#
        )
        .as_bytes(),
    );
    let (manifest, manifest_size) = blob(
        format!(
            r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {{"mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": "{config}", "size": {config_size}}},
                "layers": [{{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                             "digest": "{layer}", "size": {layer_size}}}]}}"#
        )
        .as_bytes(),
    );
    let index = format!(
        r#"{{"schemaVersion": 2, "manifests": [{{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "{manifest}", "size": {manifest_size},
            "annotations": {{"org.opencontainers.image.ref.name": "no-run"}}}}]}}"#
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
}

/// Everything the command printed, stdout then stderr.
fn printed(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

#[test]
fn a_sandbox_infra_error_is_printed_once_naming_its_stage() {
    let Some(e) = env() else { return };
    let task = e.task.as_str();
    let out = tempfile::tempdir().unwrap();
    let o = e.hoist(&[], &["run", "--task", task], out.path());
    let all = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert_eq!(all.matches(MISSING).count(), 1, "{all}");
    assert!(
        stdout(&o).starts_with(&format!(
            "{task}: infrastructure error at sandbox: {MISSING}"
        )),
        "{all}"
    );
    let r = read_json(&out.path().join("task/result.json"));
    assert_eq!(r["infra_error"]["stage"], "sandbox", "{r:#}");

    // --quiet prints errors: this one, once, on stderr.
    let out = tempfile::tempdir().unwrap();
    let o = e.hoist(&["--quiet"], &["run", "--task", task], out.path());
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o).matches(MISSING).count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("error: {task}: infrastructure error at sandbox: ")),
        "{}",
        stderr(&o)
    );

    // hoist eval: the task's line, once (no retry).
    let out = tempfile::tempdir().unwrap();
    let o = e.hoist(&[], &["eval", "--task", task, "--retries", "0"], out.path());
    let all = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert_eq!(all.matches(MISSING).count(), 1, "{all}");
    assert!(
        all.contains(&format!(
            "[1/1] {task}: infrastructure error at sandbox: {MISSING}"
        )),
        "{all}"
    );
}
