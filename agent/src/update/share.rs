//! Update bundles shared between the nodes of a mesh.
//!
//! When a poll stages a bundle from a URL, the bytes it reads are also
//! written, as they stream, to a file beside the update state
//! (`/data/basalt/update/bundles/`). Only when the stage succeeded, and the
//! file holds the whole bundle, is it renamed to
//! `<manifest sha256>.basalt`, with a small `<manifest sha256>.json`
//! ([`BundleAd`]) beside it; the bundle it supersedes is deleted, so at most
//! one is kept. A bundle is not kept when the data partition would have less
//! than a margin free after it ([`BundleCache::min_free`], or a tenth of the
//! file system, whichever is more).
//!
//! The mesh advertises the kept bundles in the node's descriptor, the
//! agent's HTTP API serves them to mesh peers (`GET /v1/bundles/{sha256}`,
//! with ranges), and a poll tries peers that advertise the version it wants
//! before the channel ([`BundlePeers`]). Nothing a peer sends is trusted: it
//! is staged exactly as from the channel, signatures and every digest
//! checked, and any failure falls back to the channel.

use super::{Reopen, UpdateError};
use crate::fetch::Fetcher;
use basalt_formats::bundle::stream::BundleReader;
use basalt_formats::bundle::{Sha256Digest, TrustPolicy};
use basalt_formats::mesh::BundleAd;
use basalt_formats::BoardId;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The directory, under the update state directory, bundles are kept in.
pub const BUNDLES_DIR: &str = "bundles";
/// Free space a kept bundle must leave on the data partition, at least.
pub const MIN_FREE_BYTES: u64 = 1 << 30;
/// Share of the data partition's size a kept bundle must leave free, at least.
pub const MIN_FREE_PERCENT: u64 = 10;
/// Peers tried for a bundle before the channel.
pub const MAX_PEER_TRIES: usize = 2;
/// Longest wait for a connection to a peer, at most.
pub const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Attempts in a row without a byte before a peer is given up, at most.
pub const PEER_ATTEMPTS: u32 = 3;
/// The path of the bundle API on the agent's HTTP server.
pub const BUNDLE_ROUTE: &str = "/v1/bundles";

/// Where bundles are kept, and how much room they must leave.
#[derive(Debug, Clone)]
pub struct BundleCache {
    pub dir: PathBuf,
    /// Bytes that must stay free after a bundle is kept.
    pub min_free: u64,
    /// Percent of the file system that must stay free after a bundle is kept.
    pub min_free_percent: u64,
}

impl BundleCache {
    /// The cache beside the update state in `state_dir`, with the default margins.
    pub fn in_state_dir(state_dir: &Path) -> BundleCache {
        BundleCache {
            dir: state_dir.join(BUNDLES_DIR),
            min_free: MIN_FREE_BYTES,
            min_free_percent: MIN_FREE_PERCENT,
        }
    }

    /// The path of the bundle whose manifest has SHA-256 `sha256`, if that
    /// is a well-formed digest (64 lowercase hex digits).
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        is_sha256(sha256).then(|| self.dir.join(format!("{sha256}.basalt")))
    }

    /// The bundles kept, newest version first.
    pub fn list(&self) -> Vec<BundleAd> {
        list(&self.dir)
    }

    /// Whether a bundle of `size` bytes leaves enough room; why not otherwise.
    fn room_for(&self, size: u64) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let s = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let unit = s.fragment_size() as u64;
        let free = s.blocks_available() as u64 * unit;
        let total = s.blocks() as u64 * unit;
        let margin = self.min_free.max(total / 100 * self.min_free_percent);
        if free.saturating_sub(size) < margin {
            return Err(format!(
                "{size} bytes would leave {} of {total} bytes free on the data partition, under the {margin} kept free",
                free.saturating_sub(size)
            ));
        }
        Ok(())
    }
}

/// The bundles advertised in `dir` (their `.json` beside a `.basalt` of the
/// size it states), newest version first. Read by the mesh every second.
pub fn list(dir: &Path) -> Vec<BundleAd> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ads: Vec<BundleAd> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let sha = name.strip_suffix(".json")?;
            if !is_sha256(sha) {
                return None;
            }
            let ad: BundleAd = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            let size = std::fs::metadata(dir.join(format!("{sha}.basalt")))
                .ok()?
                .len();
            (ad.manifest_sha256 == sha && ad.size == size).then_some(ad)
        })
        .collect();
    ads.sort_by(|a, b| b.version.cmp_precedence(&a.version));
    ads.truncate(basalt_formats::mesh::descriptor::MAX_BUNDLES);
    ads
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// A peer that advertises a bundle, and where to fetch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBundle {
    /// The peer's node id, for the journal.
    pub node: String,
    /// `http://[mesh address]:port/v1/bundles/<sha256>`.
    pub url: String,
    /// Its inference load, percent: the least loaded is asked first.
    pub load: u8,
}

/// What a poll asks peers for: a version for a board, as a full bundle
/// (`base` is `None`) or as a delta from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub version: &'a semver::Version,
    pub board: BoardId,
    pub base: Option<&'a semver::Version>,
}

impl Wanted<'_> {
    /// Whether the advertised bundle is this one.
    pub fn matches(&self, ad: &BundleAd) -> bool {
        ad.version == *self.version
            && ad.board == self.board
            && ad.base_version.as_ref() == self.base
    }
}

/// Who offers a bundle of a version for a board.
pub trait BundlePeers: std::fmt::Debug {
    /// Peers that advertise the `wanted` bundle, the one to ask first first.
    fn offering(&self, wanted: Wanted<'_>) -> Vec<PeerBundle>;
}

/// No peers: every bundle comes from the channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

impl BundlePeers for NoPeers {
    fn offering(&self, _: Wanted<'_>) -> Vec<PeerBundle> {
        Vec::new()
    }
}

/// A fixed list, for tests.
#[derive(Debug, Clone, Default)]
pub struct StaticPeers(pub Vec<(BundleAd, PeerBundle)>);

impl BundlePeers for StaticPeers {
    fn offering(&self, wanted: Wanted<'_>) -> Vec<PeerBundle> {
        self.0
            .iter()
            .filter(|(ad, _)| wanted.matches(ad))
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// The mesh's live peers and the bundles they advertise, from the status
/// file the mesh writes every second. Least loaded first, ties in random
/// order so that a site does not all ask the same node.
#[derive(Debug, Clone)]
pub struct MeshPeers {
    pub status_dir: PathBuf,
    /// The port of the peers' HTTP API.
    pub port: u16,
}

impl BundlePeers for MeshPeers {
    fn offering(&self, wanted: Wanted<'_>) -> Vec<PeerBundle> {
        let Ok(st) = crate::mesh::status::read(&self.status_dir) else {
            return Vec::new();
        };
        let mut peers: Vec<(u8, u64, PeerBundle)> = st
            .peers
            .iter()
            .filter(|p| p.state == crate::mesh::status::PeerState::Alive)
            .filter_map(|p| {
                let ad = p.bundles.iter().find(|b| wanted.matches(b))?;
                Some((
                    p.load,
                    rand::random::<u64>(),
                    PeerBundle {
                        node: p.node_id.to_string(),
                        url: format!(
                            "http://[{}]:{}{BUNDLE_ROUTE}/{}",
                            p.ipv6, self.port, ad.manifest_sha256
                        ),
                        load: p.load,
                    },
                ))
            })
            .collect();
        peers.sort_by_key(|(load, r, _)| (*load, *r));
        peers.into_iter().map(|(_, _, p)| p).collect()
    }
}

/// A client for peers: `fetcher`'s, with a shorter connect timeout and
/// fewer attempts, so that a peer that is gone costs seconds, not minutes,
/// before the channel.
pub fn peer_fetcher(fetcher: &Fetcher) -> Fetcher {
    let mut o = fetcher.options().clone();
    o.connect_timeout = o.connect_timeout.min(PEER_CONNECT_TIMEOUT);
    o.attempts = o.attempts.min(PEER_ATTEMPTS);
    Fetcher::new(o).unwrap_or_else(|_| fetcher.clone())
}

/// What a poll does with peers and the cache.
#[derive(Debug)]
pub struct Sharing {
    /// Keep staged bundles here for peers; `None`: keep nothing.
    pub cache: Option<BundleCache>,
    /// Peers to ask before the channel.
    pub peers: Box<dyn BundlePeers + Send + Sync>,
}

impl Sharing {
    /// Nothing shared: the channel only, nothing kept.
    pub fn off() -> Sharing {
        Sharing {
            cache: None,
            peers: Box::new(NoPeers),
        }
    }

    /// On the device: the cache beside the update state and the mesh's
    /// peers when `share`; otherwise nothing, and bundles kept before are
    /// deleted.
    pub fn on_device(share: bool) -> Sharing {
        let cache = BundleCache::in_state_dir(Path::new(super::state::STATE_DIR));
        if !share {
            sweep(&cache.dir, None);
            return Sharing::off();
        }
        // Partial files of an agent that stopped in the middle of a download.
        let kept = cache.list();
        sweep(&cache.dir, kept.first().map(|a| a.manifest_sha256.as_str()));
        Sharing {
            cache: Some(cache),
            peers: Box::new(MeshPeers {
                status_dir: PathBuf::from(crate::cli::DEVICE_MESH_DIR),
                port: crate::serve::DEFAULT_PORT,
            }),
        }
    }
}

/// Whether the cloud-config in force shares bundles with mesh peers:
/// `basalt.update.share`, on by default; never without `basalt.mesh`,
/// as there is no one to share with.
pub fn configured() -> bool {
    crate::provision::current_config(Path::new(crate::provision::STATE_DIR))
        .and_then(|c| c.basalt)
        .is_some_and(|b| b.mesh.is_some() && b.update.as_ref().is_some_and(|u| u.shares(true)))
}

/// The bundle file being written beside a download.
#[derive(Debug)]
struct Tee {
    file: std::fs::File,
    path: PathBuf,
    /// Byte ranges written, `[start, end)`.
    covered: Vec<(u64, u64)>,
    /// The bundle's size, from the first answer.
    total: Option<u64>,
}

/// A bundle at a URL, whose bytes are also written to the cache as the
/// stage reads them; [`CachingSource::keep`] puts the file in place once
/// the stage succeeded.
#[derive(Debug)]
pub struct CachingSource<'a> {
    fetcher: &'a Fetcher,
    url: String,
    cache: &'a BundleCache,
    tee: Mutex<Option<Tee>>,
}

impl<'a> CachingSource<'a> {
    pub fn new(fetcher: &'a Fetcher, url: String, cache: &'a BundleCache) -> CachingSource<'a> {
        let tee = (|| {
            std::fs::create_dir_all(&cache.dir)?;
            // A temporary name of our own; leftovers are swept by `keep`.
            let path = cache.dir.join(format!(
                ".incoming-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)?;
            Ok::<_, std::io::Error>(Tee {
                file,
                path,
                covered: Vec::new(),
                total: None,
            })
        })();
        let tee = match tee {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!(
                    "not keeping the bundle for peers: {}: {e}",
                    cache.dir.display()
                );
                None
            }
        };
        CachingSource {
            fetcher,
            url,
            cache,
            tee: Mutex::new(tee),
        }
    }

    fn drop_tee(&self, why: &str) {
        if let Some(t) = self.tee.lock().expect("not poisoned").take() {
            log::info!("not keeping the bundle from {} for peers: {why}", self.url);
            let _ = std::fs::remove_file(&t.path);
        }
    }

    /// After the stage: keeps the bundle when it `staged`, the file holds all
    /// of it (bytes the stage did not read, such as the archive's end, are
    /// fetched now) and its head verifies under `policy`; deletes the bundles
    /// it supersedes. Returns what is now advertised.
    pub fn keep(self, staged: bool, policy: &TrustPolicy, board: BoardId) -> Option<BundleAd> {
        if !staged {
            self.drop_tee("it did not stage");
            return None;
        }
        let kept = (|| -> Result<Option<BundleAd>, String> {
            let mut guard = self.tee.lock().expect("not poisoned");
            let Some(t) = guard.as_mut() else {
                return Ok(None);
            };
            let total = t.total.ok_or("the server did not give the bundle's size")?;
            let done = contiguous(&mut t.covered);
            if done.0 != 0 {
                return Err(
                    "the stage went on from an earlier one; only part of the bundle passed through"
                        .into(),
                );
            }
            if done.1 < total {
                let mut rest = self.fetcher.open_at(&self.url, done.1).map_err(|e| {
                    format!("fetching the bundle's last {} bytes: {e}", total - done.1)
                })?;
                let mut buf = vec![0u8; 1 << 16];
                let mut at = done.1;
                loop {
                    let n = rest.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    t.file
                        .write_all_at(&buf[..n], at)
                        .map_err(|e| e.to_string())?;
                    at += n as u64;
                }
                if at != total {
                    return Err(format!("the bundle ended at byte {at} of {total}"));
                }
            }
            t.file.sync_all().map_err(|e| e.to_string())?;
            let head = BundleReader::new(std::fs::File::open(&t.path).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let sha = Sha256Digest::of(head.manifest_bytes()).to_string();
            let payloads = head.verify(policy).map_err(|e| e.to_string())?;
            let ad = BundleAd {
                version: payloads.manifest().version.clone(),
                board,
                manifest_sha256: sha.clone(),
                size: total,
                base_version: payloads.manifest().base_version.clone(),
            };
            let dest = self.cache.dir.join(format!("{sha}.basalt"));
            std::fs::rename(&t.path, &dest).map_err(|e| e.to_string())?;
            crate::provision::atomic_write(
                &self.cache.dir.join(format!("{sha}.json")),
                &serde_json::to_vec(&ad).expect("serialises"),
                0o644,
            )
            .map_err(|e| e.to_string())?;
            *guard = None;
            Ok(Some(ad))
        })();
        match kept {
            Ok(Some(ad)) => {
                log::info!(
                    "keeping bundle {} ({} bytes, manifest {}) for mesh peers",
                    ad.version,
                    ad.size,
                    ad.manifest_sha256
                );
                sweep(&self.cache.dir, Some(&ad.manifest_sha256));
                Some(ad)
            }
            Ok(None) => None,
            Err(why) => {
                self.drop_tee(&why);
                None
            }
        }
    }
}

impl Drop for CachingSource<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.tee.get_mut().expect("not poisoned").take() {
            let _ = std::fs::remove_file(&t.path);
        }
    }
}

/// Deletes every bundle in `dir` other than `keep`, and leftover partial files.
pub fn sweep(dir: &Path, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name
            .strip_suffix(".basalt")
            .or_else(|| name.strip_suffix(".json"));
        let superseded = stem.is_some_and(|s| Some(s) != keep);
        // Partial files of this process are still being written.
        let ours = format!(".incoming-{}-", std::process::id());
        let leftover = name.starts_with(".incoming-") && !name.starts_with(&ours);
        if superseded || leftover {
            log::info!("deleting superseded bundle file {}", e.path().display());
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sorts and merges `ranges`; the first run of bytes.
fn contiguous(ranges: &mut [(u64, u64)]) -> (u64, u64) {
    ranges.sort_unstable();
    let mut run = match ranges.first() {
        Some(r) => *r,
        None => return (0, 0),
    };
    for r in ranges.iter().skip(1) {
        if r.0 > run.1 {
            break;
        }
        run.1 = run.1.max(r.1);
    }
    run
}

impl Reopen for CachingSource<'_> {
    fn open_at(&self, offset: u64) -> Result<Box<dyn Read + '_>, UpdateError> {
        let d = super::UrlSource {
            fetcher: self.fetcher,
            url: self.url.clone(),
        }
        .download_at(offset)?;
        if offset == 0 {
            let size = d.total_len();
            let mut guard = self.tee.lock().expect("not poisoned");
            if let Some(t) = guard.as_mut() {
                t.total = size;
            }
            drop(guard);
            match size {
                None => self.drop_tee("the server did not give its size"),
                Some(size) => {
                    if let Err(why) = self.cache.room_for(size) {
                        self.drop_tee(&why);
                    }
                }
            }
        }
        Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            TeeReader {
                inner: d,
                at: offset,
                tee: &self.tee,
            },
        )))
    }
}

struct TeeReader<'a, R> {
    inner: R,
    at: u64,
    tee: &'a Mutex<Option<Tee>>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let mut guard = self.tee.lock().expect("not poisoned");
            if let Some(t) = guard.as_mut() {
                match t.file.write_all_at(&buf[..n], self.at) {
                    Ok(()) => match t.covered.last_mut() {
                        Some(last) if last.1 == self.at => last.1 += n as u64,
                        _ => t.covered.push((self.at, self.at + n as u64)),
                    },
                    Err(e) => {
                        // The stage goes on; only the copy for peers is given up.
                        log::warn!(
                            "not keeping the bundle for peers: {}: {e}",
                            t.path.display()
                        );
                        let _ = std::fs::remove_file(&t.path);
                        *guard = None;
                    }
                }
            }
            self.at += n as u64;
        }
        Ok(n)
    }
}

/// Checks the bundle at `url` (its head only), then stages it, keeping its
/// bytes in `cache` when given and the stage succeeded. With `expect`
/// (a bundle from a peer), the bundle must be of that version.
pub fn check_and_stage(
    fetcher: &Fetcher,
    url: &str,
    device: &super::Device,
    cache: Option<&BundleCache>,
    expect: Option<&semver::Version>,
) -> Result<super::CheckReport, super::poll::PollError> {
    let report = super::check_bundle(fetcher.open(url)?, device)?;
    if let Some(want) = expect {
        if report.bundle_version != want.to_string() {
            return Err(UpdateError::WrongVersion {
                expected: want.to_string(),
                found: report.bundle_version,
            }
            .into());
        }
    }
    let stage = |source: &dyn Reopen| match expect {
        Some(v) => super::stage_resumable_expecting(source, device, v),
        None => super::stage_resumable(source, device),
    };
    let Some(cache) = cache else {
        let source = super::UrlSource {
            fetcher,
            url: url.to_string(),
        };
        return Ok(stage(&source)?);
    };
    let source = CachingSource::new(fetcher, url.to_string(), cache);
    let result = stage(&source);
    if let Some(policy) = &device.policy {
        source.keep(result.is_ok(), policy, device.release.board);
    }
    Ok(result?)
}

#[cfg(test)]
mod tests;
