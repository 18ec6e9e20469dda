//! JSON to bytes, the failure kept. serde_json fails for a map whose keys
//! are not strings or numbers, a path that is not UTF-8, or a `Serialize`
//! impl that returns an error. hoist's documents are built so that none of
//! that happens; but a fallback to empty bytes (`unwrap_or_default`) would
//! turn the day it does into an empty `run.json`, a blob stored under the
//! digest of nothing, or an empty argument to a sandbox stage. So the
//! error is returned, naming the document, and the caller reports it.

use serde::Serialize;

/// A document that could not be written as JSON.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {what} as JSON: {source}")]
pub struct JsonError {
    /// The document: `run.json`, `the image manifest`, ….
    pub what: &'static str,
    #[source]
    pub source: serde_json::Error,
}

impl From<JsonError> for std::io::Error {
    fn from(e: JsonError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Compact JSON, as digested documents (manifests, configs) and records
/// are stored.
pub fn to_vec<T: Serialize + ?Sized>(value: &T, what: &'static str) -> Result<Vec<u8>, JsonError> {
    serde_json::to_vec(value).map_err(|source| JsonError { what, source })
}

/// Indented JSON, for files a user reads.
pub fn to_vec_pretty<T: Serialize + ?Sized>(
    value: &T,
    what: &'static str,
) -> Result<Vec<u8>, JsonError> {
    serde_json::to_vec_pretty(value).map_err(|source| JsonError { what, source })
}

/// Compact JSON as text, for an argument.
pub fn to_string<T: Serialize + ?Sized>(
    value: &T,
    what: &'static str,
) -> Result<String, JsonError> {
    serde_json::to_string(value).map_err(|source| JsonError { what, source })
}

/// Indented JSON as text.
pub fn to_string_pretty<T: Serialize + ?Sized>(
    value: &T,
    what: &'static str,
) -> Result<String, JsonError> {
    serde_json::to_string_pretty(value).map_err(|source| JsonError { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    #[test]
    fn plain_documents_serialise() {
        let mut m = BTreeMap::new();
        m.insert("a", 1);
        assert_eq!(to_vec(&m, "m").unwrap(), b"{\"a\":1}");
        assert_eq!(to_string(&m, "m").unwrap(), "{\"a\":1}");
        assert_eq!(to_vec_pretty(&m, "m").unwrap(), b"{\n  \"a\": 1\n}");
        assert_eq!(to_string_pretty(&m, "m").unwrap(), "{\n  \"a\": 1\n}");
    }

    #[test]
    fn a_path_that_is_not_utf8_is_an_error_naming_the_document() {
        let p = PathBuf::from(OsStr::from_bytes(b"/tmp/\xff"));
        let e = to_vec(&p, "the confinement policy").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot write the confinement policy as JSON"));
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_map_with_keys_json_cannot_hold_is_an_error() {
        let mut m = BTreeMap::new();
        m.insert(vec![1u8], 1);
        assert!(to_string(&m, "m").is_err());
    }
}
