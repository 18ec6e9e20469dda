//! The combination image's config and manifest, built from the
//! benchmark's: pure functions over JSON, no I/O.
//!
//! The config is the benchmark's own JSON with only what the appended
//! layers require changed: `rootfs.diff_ids` and `history` extended, and
//! the axis labels added. Every other field (Env, Cmd, User, created, …)
//! is kept as the benchmark author wrote it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::manifest::{Descriptor, Manifest, OCI_CONFIG, OCI_MANIFEST};

pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The label and annotation key prefix.
pub const KEY_PREFIX: &str = "io.github.hoist";

/// One appended layer, as the config records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub diff_id: Digest,
    pub created_by: String,
}

/// The keys recording which axis images a combination was baked from.
pub fn axis_keys(axis: &str) -> (String, String) {
    (
        format!("{KEY_PREFIX}.{axis}.ref"),
        format!("{KEY_PREFIX}.{axis}.digest"),
    )
}

/// The key recording the hoist version that baked the image.
pub fn version_key() -> String {
    format!("{KEY_PREFIX}.version")
}

/// The benchmark's config with `added` layers and `labels` (which win
/// over labels of the same name). `created` is the fixed time written in
/// the new history entries. History is extended only when the benchmark
/// has one, so that its entries keep matching its layers.
pub fn combined_config(
    base: &[u8],
    added: &[Appended],
    labels: &BTreeMap<String, String>,
    created: &str,
) -> Result<Vec<u8>, String> {
    let mut v: Value = serde_json::from_slice(base).map_err(|e| e.to_string())?;
    let obj = v.as_object_mut().ok_or("the config is not a JSON object")?;
    let diff_ids = obj
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .ok_or("the config has no rootfs.diff_ids")?;
    diff_ids.extend(added.iter().map(|a| Value::String(a.diff_id.to_string())));
    if let Some(history) = obj.get_mut("history").and_then(Value::as_array_mut) {
        if !history.is_empty() {
            history.extend(added.iter().map(|a| {
                serde_json::json!({"created": created, "created_by": a.created_by, "comment": "hoist bake"})
            }));
        }
    }
    let config = obj
        .entry("config")
        .or_insert_with(|| Value::Object(Map::new()));
    if config.is_null() {
        *config = Value::Object(Map::new());
    }
    let config = config
        .as_object_mut()
        .ok_or("the config's `config` field is not an object")?;
    let existing = config
        .entry("Labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if existing.is_null() {
        *existing = Value::Object(Map::new());
    }
    let existing = existing
        .as_object_mut()
        .ok_or("the config's Labels field is not an object")?;
    for (k, val) in labels {
        existing.insert(k.clone(), Value::String(val.clone()));
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

/// The OCI media type for a benchmark layer: Docker schema 2 types are
/// renamed to their OCI equivalents (the bytes are the same format), so
/// the combination is one consistent OCI manifest that can carry
/// annotations.
pub fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => OCI_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.foreign.diff.tar" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar"
        }
        other => other,
    }
}

/// The combination's manifest: the benchmark's layers (same blobs), then
/// the appended ones.
pub fn combined_manifest(
    config_digest: Digest,
    config_size: u64,
    base_layers: &[Descriptor],
    appended: &[Descriptor],
    annotations: BTreeMap<String, String>,
) -> Manifest {
    let mut layers: Vec<Descriptor> = base_layers
        .iter()
        .map(|d| Descriptor {
            media_type: oci_layer_type(&d.media_type).to_string(),
            ..d.clone()
        })
        .collect();
    layers.extend(appended.iter().cloned());
    Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: Descriptor {
            media_type: OCI_CONFIG.to_string(),
            digest: config_digest,
            size: config_size,
            platform: None,
            annotations: None,
            urls: None,
        },
        layers,
        annotations: Some(annotations),
    }
}

/// A Unix time in seconds as the RFC 3339 UTC text image configs use.
pub fn created_at(epoch: u64) -> String {
    crate::pipeline::clock::rfc3339_from_unix_millis(epoch.saturating_mul(1000))
        .replace(".000Z", "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn labels() -> BTreeMap<String, String> {
        [(
            "io.github.hoist.agent.digest".to_string(),
            "sha256:x".to_string(),
        )]
        .into()
    }

    #[test]
    fn config_gets_layers_history_and_labels() {
        let base = serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["A=1"], "Labels": {"keep": "me", "io.github.hoist.agent.digest": "old"}},
            "rootfs": {"type": "layers", "diff_ids": [d(1).to_string()]},
            "history": [{"created_by": "base"}]
        });
        let added = [Appended {
            diff_id: d(2),
            created_by: "agent".into(),
        }];
        let out = combined_config(
            &serde_json::to_vec(&base).unwrap(),
            &added,
            &labels(),
            "1970-01-01T00:00:00Z",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["rootfs"]["diff_ids"],
            serde_json::json!([d(1).to_string(), d(2).to_string()])
        );
        assert_eq!(v["history"][1]["created"], "1970-01-01T00:00:00Z");
        assert_eq!(v["history"][1]["created_by"], "agent");
        assert_eq!(v["config"]["Labels"]["keep"], "me");
        assert_eq!(
            v["config"]["Labels"]["io.github.hoist.agent.digest"],
            "sha256:x"
        );
        assert_eq!(v["config"]["Env"], serde_json::json!(["A=1"]));
        assert_eq!(v["created"], "2024-01-01T00:00:00Z");
    }

    #[test]
    fn config_without_history_or_labels() {
        let base = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": null,
            "rootfs": {"type": "layers", "diff_ids": []}
        });
        let added = [Appended {
            diff_id: d(2),
            created_by: "agent".into(),
        }];
        let out =
            combined_config(&serde_json::to_vec(&base).unwrap(), &added, &labels(), "t").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("history").is_none(), "no history invented");
        assert_eq!(
            v["config"]["Labels"]["io.github.hoist.agent.digest"],
            "sha256:x"
        );
    }

    #[test]
    fn config_is_deterministic_and_checked() {
        let base =
            br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let a = combined_config(base, &[], &labels(), "t").unwrap();
        let b = combined_config(base, &[], &labels(), "t").unwrap();
        assert_eq!(a, b);
        assert!(combined_config(b"[]", &[], &labels(), "t").is_err());
        assert!(combined_config(br#"{"os":"linux"}"#, &[], &labels(), "t").is_err());
    }

    #[test]
    fn docker_layer_types_become_oci() {
        let base = [Descriptor {
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            digest: d(1),
            size: 10,
            platform: None,
            annotations: None,
            urls: None,
        }];
        let m = combined_manifest(d(9), 5, &base, &[], BTreeMap::new());
        assert_eq!(m.layers[0].media_type, OCI_LAYER_GZIP);
        assert_eq!(m.layers[0].digest, d(1));
        assert_eq!(m.config.media_type, OCI_CONFIG);
        assert_eq!(
            oci_layer_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }

    #[test]
    fn created_at_is_rfc3339() {
        assert_eq!(created_at(0), "1970-01-01T00:00:00Z");
        assert_eq!(created_at(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
