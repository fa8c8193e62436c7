//! Models baked into an image (`models:` in the spec).
//!
//! Each model is read from a file next to the spec or downloaded (once: the
//! download is kept in the cache under its SHA-256, which the spec pins),
//! taken out of its archive when `member` names a file in one, loaded and
//! optimised with the same tract the agent uses (so a model the device
//! cannot run fails the build, not the boot), and installed with its
//! manifest as `/usr/lib/basalt/models/<name>/{model.onnx,model.json}`.

use crate::progress::Step;
use anyhow::{bail, Context, Result};
use basalt_formats::model::{ModelManifest, IMAGE_MODELS_DIR, MANIFEST_FILE};
use basalt_formats::spec::{ModelSource, ModelSpec};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where downloads are kept, by SHA-256.
fn download_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("downloads")
}

/// Downloads `url` into the cache unless a file with `sha256` is there.
pub fn fetch(
    url: &str,
    sha256: &[u8; 32],
    cache_dir: &Path,
    step: Option<&Step>,
) -> Result<PathBuf> {
    let dir = download_dir(cache_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let want = hex::encode(sha256);
    let path = dir.join(&want);
    if path.is_file() && crate::build::sha256_file(&path)? == want {
        return Ok(path);
    }
    let mut resp = reqwest::blocking::Client::builder()
        .user_agent(concat!("basalt/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        .timeout(std::time::Duration::from_secs(30 * 60))
        .build()?
        .get(url)
        .send()
        .with_context(|| format!("downloading {url}"))?;
    if !resp.status().is_success() {
        bail!("downloading {url}: the server answered {}", resp.status());
    }
    if let Some(step) = step {
        step.note(&format!("downloading {url}"));
        if let Some(len) = resp.content_length() {
            step.bytes(len);
        }
    }
    let tmp = tempfile::NamedTempFile::new_in(&dir)?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = resp
            .read(&mut buf)
            .with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut out, &buf[..n])?;
        if let Some(step) = step {
            step.inc(n as u64);
        }
    }
    std::io::Write::flush(&mut out)?;
    drop(out);
    let got = hex::encode(hasher.finalize());
    if got != want {
        bail!("downloading {url}: SHA-256 is {got}, the spec pins {want}; not using it");
    }
    tmp.persist(&path)?;
    Ok(path)
}

/// The bytes of `member` inside the gzip'd tar archive (`.tar.gz`, `.crate`) at `archive`.
pub fn extract(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let f =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut magic = [0u8; 2];
    (&f).read_exact(&mut magic)
        .with_context(|| format!("reading {}", archive.display()))?;
    if magic != [0x1f, 0x8b] {
        bail!(
            "{}: member {member:?} asked for, but this is not a gzip'd tar archive (.tar.gz or .crate)",
            archive.display()
        );
    }
    let f = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in tar
        .entries()
        .with_context(|| format!("reading {}", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        if entry.path()?.to_string_lossy() == member {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            return Ok(bytes);
        }
    }
    bail!("{}: no member {member:?} in the archive", archive.display())
}

/// The model's ONNX bytes, from wherever the spec says.
pub fn obtain(
    m: &ModelSpec,
    spec_dir: &Path,
    cache_dir: &Path,
    step: Option<&Step>,
) -> Result<(Vec<u8>, String)> {
    let (file, source) = match &m.source {
        ModelSource::Path(p) => {
            let path = spec_dir.join(p);
            (path.clone(), path.display().to_string())
        }
        ModelSource::Url { url, sha256 } => (fetch(url, sha256, cache_dir, step)?, url.clone()),
    };
    let bytes = match &m.member {
        Some(member) => extract(&file, member)?,
        None => std::fs::read(&file)
            .with_context(|| format!("models: {}: reading {}", m.name, file.display()))?,
    };
    Ok((bytes, source))
}

/// Installs every model of the spec into `root`, checked by loading it.
/// Returns one line per model for the build log.
pub fn install(
    models: &[ModelSpec],
    spec_dir: &Path,
    cache_dir: &Path,
    root: &Path,
    step: Option<&Step>,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for m in models {
        let (bytes, source) =
            obtain(m, spec_dir, cache_dir, step).with_context(|| format!("models: {}", m.name))?;
        let dir = root
            .join(IMAGE_MODELS_DIR.trim_start_matches('/'))
            .join(m.name.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("model.onnx");
        std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
        let loaded = basalt_infer::Model::load(
            &m.name.to_string(),
            &m.version,
            &file,
            &basalt_infer::LoadOptions {
                batch_max: m.batch_max as usize,
            },
        )
        .map_err(|e| {
            anyhow::anyhow!("models: {} from {source}: tract cannot run it: {e}", m.name)
        })?;
        let manifest = ModelManifest {
            name: m.name.clone(),
            version: m.version.clone(),
            file: "model.onnx".into(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            batch_max: m.batch_max,
            source: Some(source),
        };
        manifest
            .check()
            .map_err(|e| anyhow::anyhow!("models: {}: {e}", m.name))?;
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec_pretty(&manifest)?,
        )?;
        let inputs: Vec<String> = loaded
            .inputs()
            .iter()
            .map(|t| format!("{} {:?} {:?}", t.name, t.datatype, t.shape))
            .collect();
        lines.push(format!("{} {} ({})", m.name, m.version, inputs.join(", ")));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_a_member_of_a_tar_gz() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a.crate");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "pkg-1.0/src/model.onnx", &b"hello"[..])
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
        assert_eq!(extract(&path, "pkg-1.0/src/model.onnx").unwrap(), b"hello");
        let e = extract(&path, "pkg-1.0/other").unwrap_err();
        assert!(e.to_string().contains("no member \"pkg-1.0/other\""), "{e}");
        std::fs::write(d.path().join("plain"), b"xx").unwrap();
        let e = extract(&d.path().join("plain"), "m").unwrap_err();
        assert!(e.to_string().contains("not a gzip'd tar"), "{e}");
    }

    #[test]
    fn a_cached_download_with_the_pinned_hash_is_used_without_the_network() {
        let d = tempfile::tempdir().unwrap();
        let sha: [u8; 32] = Sha256::digest(b"model").into();
        let dir = download_dir(d.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(hex::encode(sha)), b"model").unwrap();
        // An address nothing answers at: only the cache can satisfy this.
        let p = fetch("http://127.0.0.1:9/never", &sha, d.path(), None).unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"model");
        let other: [u8; 32] = Sha256::digest(b"other").into();
        let e = fetch("http://127.0.0.1:9/never", &other, d.path(), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("http://127.0.0.1:9/never"),
            "{e:#}"
        );
    }
}
