//! The model directory a device serves from.
//!
//! Each model lives in a directory of its own, named after the model, with
//! the ONNX file and a `model.json` manifest beside it:
//!
//! ```text
//! /usr/lib/basalt/models/magika/model.json   baked into the image by `basalt build`
//! /usr/lib/basalt/models/magika/model.onnx
//! /data/basalt/models/<name>/…              downloaded from cloud-config's basalt.models
//! ```
//!
//! The manifest records what was checked when the model was put there, so
//! the agent can refuse a file that changed since.

use crate::mesh::ModelName;
use serde::{Deserialize, Serialize};

/// Name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "model.json";
/// Where images keep the models baked into them.
pub const IMAGE_MODELS_DIR: &str = "/usr/lib/basalt/models";
/// Where devices keep the models cloud-config asked for.
pub const DATA_MODELS_DIR: &str = "/data/basalt/models";
/// Version served when none is given.
pub const DEFAULT_VERSION: &str = "1";
/// Largest `batch_max` accepted.
pub const MAX_BATCH: u32 = 64;

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// The name in the inference API; also the directory's name.
    pub name: ModelName,
    /// The version reported by the API.
    pub version: String,
    /// The ONNX file, relative to the directory.
    pub file: String,
    /// SHA-256 of that file, hex.
    pub sha256: String,
    /// Largest batch the server forms for this model (1: no batching).
    pub batch_max: u32,
    /// Where it came from (a path or URL), for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}")]
    Syntax(String),
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

impl ModelManifest {
    /// Parses and checks a manifest.
    pub fn parse(bytes: &[u8]) -> Result<ModelManifest, ManifestError> {
        let m: ModelManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// Checks the fields a parse cannot.
    pub fn check(&self) -> Result<(), ManifestError> {
        let field = |field, reason: &str| ManifestError::Field {
            field,
            reason: reason.to_string(),
        };
        if self.version.is_empty()
            || self.version.len() > 64
            || !self
                .version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
        {
            return Err(field(
                "version",
                "use 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-' and '+'",
            ));
        }
        if self.file.is_empty() || self.file.contains('/') || self.file.starts_with('.') {
            return Err(field(
                "file",
                "a plain file name inside the model's directory",
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(field("sha256", "64 hex digits"));
        }
        if self.batch_max == 0 || self.batch_max > MAX_BATCH {
            return Err(field("batch_max", &format!("1 to {MAX_BATCH}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> serde_json::Value {
        serde_json::json!({"name":"magika","version":"1.1.0","file":"model.onnx",
            "sha256":"ab".repeat(32),"batch_max":8})
    }

    #[test]
    fn parses_and_round_trips() {
        let m = ModelManifest::parse(manifest().to_string().as_bytes()).unwrap();
        assert_eq!(m.name.to_string(), "magika");
        assert_eq!(m.batch_max, 8);
        let again = ModelManifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn refuses_bad_fields() {
        for (key, value, want) in [
            ("file", serde_json::json!("../x.onnx"), "file:"),
            ("sha256", serde_json::json!("zz"), "sha256:"),
            ("batch_max", serde_json::json!(0), "batch_max: 1 to 64"),
            ("version", serde_json::json!("a b"), "version:"),
            ("name", serde_json::json!("../etc"), "invalid model name"),
            ("extra", serde_json::json!(1), "unknown field `extra`"),
        ] {
            let mut v = manifest();
            v[key] = value;
            let e = ModelManifest::parse(v.to_string().as_bytes()).unwrap_err();
            assert!(e.to_string().contains(want), "{key}: {e}");
        }
    }
}
