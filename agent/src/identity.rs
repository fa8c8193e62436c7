//! The node's identity: an Ed25519 key made on first use and kept on the
//! data partition (`/data/basalt/identity/node.key` on a device).
//!
//! Key files hold the 32 secret bytes and nothing else, mode 0600. A new key
//! is written to a temporary file opened with `O_EXCL` in the same
//! directory, synced, then renamed over the final name and the directory
//! synced, so a power cut leaves either no key or a whole one, never half
//! of one. The same helper keeps the mesh's WireGuard private key
//! ([`load_or_create_secret`]).

use basalt_formats::mesh::NodeId;
use ed25519_dalek::SigningKey;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where a device keeps its identity.
pub const DEVICE_IDENTITY_DIR: &str = "/data/basalt/identity";
/// The node id (the public key, as text) beside the key, readable by everyone.
pub const NODE_ID_FILE: &str = "node.id";
/// The identity key's file name inside its directory.
pub const NODE_KEY_FILE: &str = "node.key";
const SECRET_LEN: usize = 32;

/// Why a key file could not be loaded or made. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, writing or syncing failed.
    #[error("key file {path}: {op}: {source}")]
    Io {
        /// The file (or its directory).
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not 32 bytes long: it was cut short or is not a key.
    #[error("key file {path} is corrupt: {len} bytes where a key has {SECRET_LEN}; move it away to make a new identity (the node then rejoins as a new member)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Someone other than root can read the file.
    #[error(
        "key file {path} has mode {mode:o}; a key must be readable by its owner only (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Load the 32-byte secret kept at `path`, or make one with `make` and keep it.
///
/// Returns the secret and whether it was just made. The directory is
/// created (mode 0700) when missing.
pub fn load_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> [u8; SECRET_LEN],
) -> Result<([u8; SECRET_LEN], bool), IdentityError> {
    match load_secret(path) {
        Ok(s) => return Ok((s, false)),
        Err(IdentityError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".to_string());
    let tmp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let secret = make();
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        f.write_all(&secret).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "sync"))?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "rename into place"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "sync directory"))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((secret, true))
}

/// Load the 32-byte secret at `path`, refusing a file others can read.
pub fn load_secret(path: &Path) -> Result<[u8; SECRET_LEN], IdentityError> {
    let meta = std::fs::metadata(path).map_err(io_err(path, "read"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(io_err(path, "read"))?;
    <[u8; SECRET_LEN]>::try_from(bytes.as_slice()).map_err(|_| IdentityError::Corrupt {
        path: path.to_path_buf(),
        len: bytes.len() as u64,
    })
}

/// Fresh random bytes from the OS.
pub fn random_secret() -> [u8; SECRET_LEN] {
    let mut b = [0u8; SECRET_LEN];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

/// This node's Ed25519 identity.
pub struct NodeIdentity {
    key: SigningKey,
    path: PathBuf,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id())
            .field("path", &self.path)
            .finish()
    }
}

impl NodeIdentity {
    /// Load `dir/node.key`, making it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(NODE_KEY_FILE);
        let (secret, made) = load_or_create_secret(&path, random_secret)?;
        if made {
            log::info!("made a new node identity in {}", path.display());
        }
        Ok(NodeIdentity {
            key: SigningKey::from_bytes(&secret),
            path,
        })
    }

    /// Load `dir/node.key`, which must exist: for readers of the identity
    /// (an update poll placing the node in a staged rollout), which leave
    /// making it to the service.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(NODE_KEY_FILE);
        let secret = load_secret(&path)?;
        Ok(NodeIdentity {
            key: SigningKey::from_bytes(&secret),
            path,
        })
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The node id (the public key).
    pub fn node_id(&self) -> NodeId {
        NodeId::from_verifying_key(&self.key.verifying_key())
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let idir = dir.path().join("identity");
        let a = NodeIdentity::load_or_create(&idir).unwrap();
        let path = idir.join(NODE_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let b = NodeIdentity::load_or_create(&idir).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&idir).unwrap().count(), 1);
        let other = NodeIdentity::load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(a.node_id(), other.node_id());
    }

    #[test]
    fn load_reads_but_never_makes() {
        let dir = tempfile::tempdir().unwrap();
        let e = NodeIdentity::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().join(NODE_KEY_FILE).display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let made = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(
            NodeIdentity::load(dir.path()).unwrap().node_id(),
            made.node_id()
        );
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        std::fs::write(&path, b"half a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = NodeIdentity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("corrupt: 10 bytes"), "{e}");
        // The corrupt file is left for the operator, not replaced.
        assert_eq!(std::fs::read(&path).unwrap(), b"half a key");
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = NodeIdentity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 644"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = NodeIdentity::load_or_create(&file.join("identity"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not-a-dir"), "{e}");
    }
}
