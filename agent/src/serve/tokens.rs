//! Bearer tokens: the second way a client outside the mesh may call the
//! inference API, for clients that cannot sign requests (dashboards, shell
//! scripts, off-the-shelf KServe clients): `Authorization: Bearer <token>`.
//!
//! The node keeps only each token's SHA-256, by name, in
//! `/data/basalt/api-tokens.json`: `basalt-agent token create NAME` prints a
//! new random token once; cloud-config's `basalt.api_tokens` gives hashes of
//! tokens made elsewhere, so that a fleet shares one without it ever being
//! in user-data. A token is sent as it is, so it belongs on the mesh or a
//! trusted LAN; over anything else, signed requests ([`super::access`])
//! are the safer credential.

use crate::node::NodeError;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const TOKENS_FILE: &str = "api-tokens.json";
/// What every token made here starts with, so that one found in a log or a
/// repository is recognisable.
pub const PREFIX: &str = "bst_";

/// One token the node accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    /// When it was added (Unix seconds).
    pub created: u64,
    /// `cloud-config` when it came from `basalt.api_tokens`, `cli` otherwise.
    pub source: String,
}

/// SHA-256 of a token, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: [`PREFIX`] and 32 random bytes in base64url.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn check_name(name: &str) -> Result<(), NodeError> {
    name.parse::<basalt_formats::cloud_config::Alias>()
        .map(drop)
        .map_err(|e| NodeError::Invalid(format!("token name {name:?}: {e}")))
}

/// The tokens the node accepts.
pub fn list(dir: &Path) -> Result<Vec<TokenEntry>, NodeError> {
    let path = dir.join(TOKENS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| NodeError::Corrupt {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(NodeError::Io { path, source }),
    }
}

fn write(dir: &Path, list: &[TokenEntry]) -> Result<(), NodeError> {
    let path = dir.join(TOKENS_FILE);
    std::fs::create_dir_all(dir).map_err(|source| NodeError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    crate::provision::atomic_write(
        &path,
        &serde_json::to_vec_pretty(list).expect("serialises"),
        0o600,
    )
    .map_err(|source| NodeError::Io { path, source })
}

/// Makes a token named `name` and returns it: the only time it is shown.
pub fn create(dir: &Path, name: &str, now_s: u64) -> Result<String, NodeError> {
    check_name(name)?;
    let mut all = list(dir)?;
    if all.iter().any(|t| t.name == name) {
        return Err(NodeError::Invalid(format!(
            "a token named {name} exists; revoke it first (basalt-agent token revoke {name})"
        )));
    }
    let token = generate();
    all.push(TokenEntry {
        name: name.into(),
        sha256: hash(&token),
        created: now_s,
        source: "cli".into(),
    });
    write(dir, &all)?;
    Ok(token)
}

/// Accepts the token whose hash is `sha256` under `name` (cloud-config's
/// `basalt.api_tokens`), replacing one of that name. False when it was
/// already there.
pub fn add_hash(dir: &Path, name: &str, sha256: &str, now_s: u64) -> Result<bool, NodeError> {
    check_name(name)?;
    let sha256 = sha256.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NodeError::Invalid(format!(
            "token {name}: sha256 {sha256:?} is not 64 hex digits"
        )));
    }
    let mut all = list(dir)?;
    if all.iter().any(|t| t.name == name && t.sha256 == sha256) {
        return Ok(false);
    }
    all.retain(|t| t.name != name);
    all.push(TokenEntry {
        name: name.into(),
        sha256,
        created: now_s,
        source: "cloud-config".into(),
    });
    write(dir, &all)?;
    Ok(true)
}

/// Stops accepting the token `name`. False when there was none.
pub fn revoke(dir: &Path, name: &str) -> Result<bool, NodeError> {
    let mut all = list(dir)?;
    let before = all.len();
    all.retain(|t| t.name != name);
    if all.len() == before {
        return Ok(false);
    }
    write(dir, &all)?;
    Ok(true)
}

/// The name of the token `token`, if the node accepts it. Every stored
/// hash is compared in full, in constant time.
pub fn find(dir: &Path, token: &str) -> Result<Option<String>, NodeError> {
    let h = Sha256::digest(token.as_bytes());
    let mut found = None;
    for t in list(dir)? {
        let Ok(stored) = hex::decode(&t.sha256) else {
            continue;
        };
        if stored.len() == h.len()
            && stored
                .iter()
                .zip(h.iter())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
        {
            found = Some(t.name);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_are_found_by_name_until_revoked() {
        let d = tempfile::tempdir().unwrap();
        let t = create(d.path(), "dashboard", 100).unwrap();
        assert!(t.starts_with(PREFIX) && t.len() == PREFIX.len() + 43, "{t}");
        assert_ne!(t, create(d.path(), "other", 100).unwrap());
        assert_eq!(find(d.path(), &t).unwrap().as_deref(), Some("dashboard"));
        assert_eq!(find(d.path(), "bst_guess").unwrap(), None);
        // Only the hash is kept, readable by root alone.
        let text = std::fs::read_to_string(d.path().join(TOKENS_FILE)).unwrap();
        assert!(!text.contains(&t) && text.contains(&hash(&t)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(TOKENS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second token of the same name is refused; revoking ends it.
        let e = create(d.path(), "dashboard", 101).unwrap_err().to_string();
        assert!(e.contains("revoke it first"), "{e}");
        assert!(revoke(d.path(), "dashboard").unwrap());
        assert!(!revoke(d.path(), "dashboard").unwrap());
        assert_eq!(find(d.path(), &t).unwrap(), None);
    }

    #[test]
    fn hashes_from_cloud_config_are_accepted_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let h = hash("bst_fleet-wide");
        assert!(add_hash(d.path(), "fleet", &h.to_uppercase(), 5).unwrap());
        assert!(!add_hash(d.path(), "fleet", &h, 6).unwrap());
        assert_eq!(
            find(d.path(), "bst_fleet-wide").unwrap().as_deref(),
            Some("fleet")
        );
        let e = add_hash(d.path(), "fleet", "abc", 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not 64 hex digits"), "{e}");
        let e = add_hash(d.path(), "Bad Name", &h, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token name \"Bad Name\""), "{e}");
        // A new hash under the same name replaces the old one.
        assert!(add_hash(d.path(), "fleet", &hash("bst_rotated"), 8).unwrap());
        assert_eq!(find(d.path(), "bst_fleet-wide").unwrap(), None);
        assert_eq!(list(d.path()).unwrap().len(), 1);
    }
}
