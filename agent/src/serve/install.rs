//! Models named in cloud-config (`basalt.models`): downloaded onto the data
//! partition and checked against their SHA-256 before the server loads them.
//!
//! Each goes to `/data/basalt/models/<name>/` as `model.onnx` with its
//! `model.json`. A model already there with the same SHA-256 is not fetched
//! again. The download streams into a temporary file in the model's
//! directory while it is hashed; only a file with the pinned hash is renamed
//! into place, so a bad or cut download never replaces a good model.
//! Directories of models that cloud-config no longer names are removed.

use crate::fetch::Fetcher;
use basalt_formats::cloud_config::Model as ConfigModel;
use basalt_formats::model::{ModelManifest, DEFAULT_VERSION, MANIFEST_FILE};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// What happened to one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Already there with the pinned hash.
    Present,
    /// Downloaded and checked now.
    Fetched { bytes: u64 },
    /// The error, naming the URL.
    Failed(String),
}

fn present(dir: &Path, sha256: &str) -> bool {
    std::fs::read(dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|b| ModelManifest::parse(&b).ok())
        .is_some_and(|m| m.sha256 == sha256 && dir.join(&m.file).is_file())
}

fn fetch_one(m: &ConfigModel, dir: &Path, fetcher: &Fetcher) -> Result<u64, String> {
    let url = m.url.as_str();
    let want = hex::encode(m.sha256);
    let name = m
        .name
        .to_string()
        .parse()
        .map_err(|e| format!("basalt.models: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut download = fetcher.open(url).map_err(|e| e.to_string())?;
    let part = dir.join("model.onnx.part");
    let (total, got) = match download_into(&mut download, &part, url) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    if got != want {
        let _ = std::fs::remove_file(&part);
        return Err(format!(
            "{url}: the download's SHA-256 is {got}, cloud-config pins {want}; not using it"
        ));
    }
    let file = dir.join("model.onnx");
    std::fs::rename(&part, &file).map_err(|e| format!("{}: {e}", file.display()))?;
    let manifest = ModelManifest {
        name,
        version: DEFAULT_VERSION.to_string(),
        file: "model.onnx".into(),
        sha256: want,
        batch_max: m
            .batch_max
            .unwrap_or(1)
            .clamp(1, basalt_formats::model::MAX_BATCH),
        source: Some(url.to_string()),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    crate::provision::atomic_write(&dir.join(MANIFEST_FILE), &json, 0o644)
        .map_err(|e| format!("{}: {e}", dir.join(MANIFEST_FILE).display()))?;
    Ok(total)
}

/// Streams the body into `part` (synced) while hashing; returns its length and SHA-256.
fn download_into(
    download: &mut impl Read,
    part: &Path,
    url: &str,
) -> Result<(u64, String), String> {
    let mut out = std::fs::File::create(part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = download
            .read(&mut buf)
            .map_err(|e| crate::fetch::into_fetch_error(url, e).to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", part.display()))?;
        total += n as u64;
    }
    out.sync_all()
        .map_err(|e| format!("{}: {e}", part.display()))?;
    Ok((total, hex::encode(hasher.finalize())))
}

/// Brings `root` in line with `models`; one outcome per model, by name.
pub fn install(models: &[ConfigModel], root: &Path, fetcher: &Fetcher) -> Vec<(String, Outcome)> {
    let wanted: Vec<String> = models.iter().map(|m| m.name.to_string()).collect();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && !wanted.contains(&name) {
                log::info!(
                    "model {name}: no longer in cloud-config; removing {}",
                    e.path().display()
                );
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    log::warn!("{}: {err}", e.path().display());
                }
            }
        }
    }
    models
        .iter()
        .map(|m| {
            let name = m.name.to_string();
            let dir = root.join(&name);
            let outcome = if present(&dir, &hex::encode(m.sha256)) {
                Outcome::Present
            } else {
                match fetch_one(m, &dir, fetcher) {
                    Ok(bytes) => {
                        log::info!("model {name}: {bytes} bytes from {}", m.url.as_str());
                        Outcome::Fetched { bytes }
                    }
                    Err(e) => {
                        log::error!("model {name}: {e}");
                        Outcome::Failed(e)
                    }
                }
            };
            (name, outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::test_server::{Behaviour, TestServer};
    use crate::fetch::FetchOptions;
    use std::time::Duration;

    fn fetcher() -> Fetcher {
        Fetcher::new(FetchOptions {
            attempts: 3,
            backoff: Duration::from_millis(10),
            ..FetchOptions::default()
        })
        .unwrap()
    }

    fn model(name: &str, url: &str, body: &[u8]) -> ConfigModel {
        ConfigModel {
            name: name.parse().unwrap(),
            url: url.parse().unwrap(),
            sha256: Sha256::digest(body).into(),
            batch_max: Some(4),
        }
    }

    #[test]
    fn downloads_checks_and_keeps_models() {
        let server = TestServer::start();
        let body = vec![7u8; 300_000];
        server.route("/m.onnx", body.clone(), Behaviour::DropEvery(100_000));
        let root = tempfile::tempdir().unwrap();
        let m = model("cam", &server.url("/m.onnx"), &body);
        let out = install(std::slice::from_ref(&m), root.path(), &fetcher());
        assert_eq!(
            out,
            vec![("cam".to_string(), Outcome::Fetched { bytes: 300_000 })]
        );
        assert_eq!(
            std::fs::read(root.path().join("cam/model.onnx")).unwrap(),
            body
        );
        let manifest =
            ModelManifest::parse(&std::fs::read(root.path().join("cam/model.json")).unwrap())
                .unwrap();
        assert_eq!(manifest.sha256, hex::encode(m.sha256));
        assert_eq!(manifest.batch_max, 4);
        // Present: not fetched again.
        let before = server.requests().len();
        let out = install(std::slice::from_ref(&m), root.path(), &fetcher());
        assert_eq!(out[0].1, Outcome::Present);
        assert_eq!(server.requests().len(), before);
    }

    #[test]
    fn a_wrong_hash_or_a_dead_url_never_replaces_a_good_model() {
        let server = TestServer::start();
        let good = b"good model".to_vec();
        server.route("/good", good.clone(), Behaviour::Serve);
        server.route("/evil", b"evil model".to_vec(), Behaviour::Serve);
        server.route("/gone", b"".to_vec(), Behaviour::Status(404));
        let root = tempfile::tempdir().unwrap();
        install(
            &[model("m", &server.url("/good"), &good)],
            root.path(),
            &fetcher(),
        );
        // The same name, another pinned hash, but the server sends the wrong bytes.
        let mut evil = model("m", &server.url("/evil"), b"what was pinned");
        let out = install(std::slice::from_ref(&evil), root.path(), &fetcher());
        let Outcome::Failed(e) = &out[0].1 else {
            panic!("{out:?}")
        };
        assert!(e.contains("/evil") && e.contains("SHA-256"), "{e}");
        assert_eq!(
            std::fs::read(root.path().join("m/model.onnx")).unwrap(),
            good
        );
        evil.url = server.url("/gone").parse().unwrap();
        let out = install(std::slice::from_ref(&evil), root.path(), &fetcher());
        let Outcome::Failed(e) = &out[0].1 else {
            panic!("{out:?}")
        };
        assert!(e.contains("/gone") && e.contains("404"), "{e}");
        assert_eq!(
            std::fs::read(root.path().join("m/model.onnx")).unwrap(),
            good
        );
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(root.path().join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn models_dropped_from_the_config_are_removed() {
        let server = TestServer::start();
        server.route("/a", b"a".to_vec(), Behaviour::Serve);
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("old")).unwrap();
        install(
            &[model("a", &server.url("/a"), b"a")],
            root.path(),
            &fetcher(),
        );
        assert!(root.path().join("a/model.onnx").is_file());
        assert!(!root.path().join("old").exists());
    }
}
