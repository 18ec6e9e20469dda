//! Manifests, indexes and image configs (OCI image-spec and Docker schema2),
//! parsed strictly from untrusted bytes. Pure: no I/O here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Every manifest type hoist accepts, for the `Accept` header.
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Manifests and configs larger than this are refused before parsing
/// (containerd uses the same 4 MiB bound).
pub const MAX_DOCUMENT_SIZE: u64 = 4 << 20;

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// The bytes of the config and the layers, as the manifest states
    /// them: saturating, since a manifest may state any size.
    pub fn total_size(&self) -> u64 {
        self.layers
            .iter()
            .fold(self.config.size, |total, l| total.saturating_add(l.size))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The parts of an image config hoist reads; the rest is kept as raw bytes
/// in the store.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// A manifest-like document after classification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document is {size} bytes, over the {MAX_DOCUMENT_SIZE}-byte limit for manifests")]
    TooLarge { size: u64 },
    #[error("document is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("document has both `manifests` and `layers`/`config`: it is neither a manifest nor an index")]
    Ambiguous,
    #[error("document has neither `manifests` nor `layers`: not a manifest or an index")]
    Unknown,
    #[error("document says its mediaType is {declared:?} but the registry sent Content-Type {content_type:?}")]
    ContentTypeMismatch {
        declared: String,
        content_type: String,
    },
    #[error("mediaType {0:?} is not a manifest or index type hoist accepts")]
    UnsupportedMediaType(String),
    #[error("mediaType {declared:?} does not describe a document of this shape ({shape})")]
    ShapeMismatch {
        declared: String,
        shape: &'static str,
    },
    #[error("schemaVersion {0} is not supported (expected 2)")]
    SchemaVersion(u32),
    #[error("image config is not valid: {0}")]
    Config(serde_json::Error),
    #[error("the config has {diff_ids} diff_ids but the manifest has {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
}

fn is_manifest_type(t: &str) -> bool {
    t == OCI_MANIFEST || t == DOCKER_MANIFEST
}

fn is_index_type(t: &str) -> bool {
    t == OCI_INDEX || t == DOCKER_LIST
}

/// Classify and parse a manifest or index. `content_type` is the registry's
/// `Content-Type` (without parameters), if it named a manifest type.
/// A document is refused when its shape is ambiguous, or when its own
/// `mediaType`, its shape and the `Content-Type` disagree.
pub fn parse_document(bytes: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(ManifestError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    let raw: serde_json::Value = serde_json::from_slice(bytes)?;
    let has = |k: &str| raw.get(k).is_some();
    let index_shape = has("manifests");
    let manifest_shape = has("layers") || has("config");
    let declared = raw.get("mediaType").and_then(|v| v.as_str());
    let content_type = content_type.filter(|t| is_manifest_type(t) || is_index_type(t));
    if let (Some(d), Some(c)) = (declared, content_type) {
        if d != c {
            return Err(ManifestError::ContentTypeMismatch {
                declared: d.to_string(),
                content_type: c.to_string(),
            });
        }
    }
    let effective = declared.or(content_type);
    if let Some(t) = effective {
        if !is_manifest_type(t) && !is_index_type(t) {
            return Err(ManifestError::UnsupportedMediaType(t.to_string()));
        }
    }
    let doc = match (index_shape, manifest_shape) {
        (true, true) => return Err(ManifestError::Ambiguous),
        (false, false) => return Err(ManifestError::Unknown),
        (true, false) => {
            if let Some(t) = effective.filter(|t| !is_index_type(t)) {
                return Err(ManifestError::ShapeMismatch {
                    declared: t.to_string(),
                    shape: "an index",
                });
            }
            Document::Index(serde_json::from_value(raw)?)
        }
        (false, true) => {
            if let Some(t) = effective.filter(|t| !is_manifest_type(t)) {
                return Err(ManifestError::ShapeMismatch {
                    declared: t.to_string(),
                    shape: "a manifest",
                });
            }
            Document::Manifest(serde_json::from_value(raw)?)
        }
    };
    let version = match &doc {
        Document::Manifest(m) => m.schema_version,
        Document::Index(i) => i.schema_version,
    };
    if version != 2 {
        return Err(ManifestError::SchemaVersion(version));
    }
    Ok(doc)
}

/// Parse an image config and check it against its manifest.
pub fn parse_config(bytes: &[u8], manifest: &Manifest) -> Result<ImageConfig, ManifestError> {
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(ManifestError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    let config: ImageConfig = serde_json::from_slice(bytes).map_err(ManifestError::Config)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ManifestError::LayerCount {
            diff_ids: config.rootfs.diff_ids.len(),
            layers: manifest.layers.len(),
        });
    }
    Ok(config)
}

/// The media type to record for a manifest in an index.
pub fn manifest_media_type(m: &Manifest) -> &str {
    m.media_type.as_deref().unwrap_or(OCI_MANIFEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":0}},"layers":[]}}"#
        )
    }

    #[test]
    fn a_manifests_total_size_saturates() {
        let Document::Manifest(mut m) =
            parse_document(manifest(OCI_MANIFEST).as_bytes(), Some(OCI_MANIFEST)).unwrap()
        else {
            panic!("not a manifest")
        };
        m.config.size = 7;
        assert_eq!(m.total_size(), 7);
        m.layers = vec![m.config.clone(); 2];
        m.layers[1].size = u64::MAX;
        assert_eq!(m.total_size(), u64::MAX);
    }

    #[test]
    fn parses_manifest_and_index() {
        let m = parse_document(manifest(OCI_MANIFEST).as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert!(matches!(m, Document::Manifest(_)));
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let Document::Index(i) = parse_document(i.as_bytes(), Some(OCI_INDEX)).unwrap() else {
            panic!()
        };
        assert_eq!(
            i.manifests[0].platform.as_ref().unwrap().architecture,
            "amd64"
        );
    }

    #[test]
    fn refuses_manifest_that_is_also_an_index() {
        let both = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D}","size":0}},"layers":[],"manifests":[]}}"#
        );
        assert!(matches!(
            parse_document(both.as_bytes(), None),
            Err(ManifestError::Ambiguous)
        ));
    }

    #[test]
    fn refuses_media_type_disagreeing_with_content_type() {
        let e =
            parse_document(manifest(OCI_MANIFEST).as_bytes(), Some(DOCKER_MANIFEST)).unwrap_err();
        assert!(
            matches!(e, ManifestError::ContentTypeMismatch { .. }),
            "{e}"
        );
        let e = parse_document(manifest(OCI_INDEX).as_bytes(), None).unwrap_err();
        assert!(matches!(e, ManifestError::ShapeMismatch { .. }), "{e}");
        let e = parse_document(manifest("text/plain").as_bytes(), None).unwrap_err();
        assert!(matches!(e, ManifestError::UnsupportedMediaType(_)), "{e}");
    }

    #[test]
    fn refuses_invalid_digest_inside_descriptor() {
        let bad = manifest(OCI_MANIFEST).replace(D, "sha256:../../x");
        assert!(parse_document(bad.as_bytes(), None).is_err());
    }

    #[test]
    fn refuses_oversized_and_wrong_version() {
        let big = vec![b' '; (MAX_DOCUMENT_SIZE + 1) as usize];
        assert!(matches!(
            parse_document(&big, None),
            Err(ManifestError::TooLarge { .. })
        ));
        let v1 = manifest(OCI_MANIFEST).replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(matches!(
            parse_document(v1.as_bytes(), None),
            Err(ManifestError::SchemaVersion(1))
        ));
    }

    #[test]
    fn config_layer_count_must_match() {
        let Document::Manifest(m) =
            parse_document(manifest(OCI_MANIFEST).as_bytes(), None).unwrap()
        else {
            panic!()
        };
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
        );
        assert!(matches!(
            parse_config(cfg.as_bytes(), &m),
            Err(ManifestError::LayerCount {
                diff_ids: 1,
                layers: 0
            })
        ));
    }
}
