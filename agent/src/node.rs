//! Node operations: `basalt-agent info`, `alias`, `allow` / `deny`, and the
//! resource history the service samples into a bounded file.
//!
//! Everything lives on the data partition under `/data/basalt/`, so it
//! survives updates and rollbacks.

use basalt_formats::cloud_config::{Alias, Ed25519PublicKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const NODE_DIR: &str = "/data/basalt";
const ALIAS_FILE: &str = "alias";
const CLIENTS_FILE: &str = "allowed-clients.json";
const HISTORY_FILE: &str = "history.jsonl";
/// Samples kept: one a minute for a day.
pub const HISTORY_KEEP: usize = 1440;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The node's alias, if one was given.
pub fn alias(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(ALIAS_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Sets the alias (one DNS label, as in cloud-config's `basalt.alias`).
pub fn set_alias(dir: &Path, name: &str) -> Result<(), NodeError> {
    let a: Alias = name
        .parse()
        .map_err(|e: basalt_formats::cloud_config::ValueError| {
            NodeError::Invalid(format!("alias {name:?}: {e}"))
        })?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(ALIAS_FILE);
    crate::provision::atomic_write(&path, format!("{}\n", a.as_str()).as_bytes(), 0o644)
        .map_err(io(&path))
}

/// A client allowed to send this node work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Its Ed25519 public key as 64 hex digits (whatever form it was given in).
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alias: Option<String>,
}

fn key_text(k: &Ed25519PublicKey) -> String {
    k.to_string()
}

/// The allow-list.
pub fn clients(dir: &Path) -> Result<Vec<Client>, NodeError> {
    let path = dir.join(CLIENTS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| NodeError::Corrupt {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(NodeError::Io { path, source: e }),
    }
}

fn write_clients(dir: &Path, list: &[Client]) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(CLIENTS_FILE);
    crate::provision::atomic_write(
        &path,
        &serde_json::to_vec_pretty(list).expect("serialises"),
        0o644,
    )
    .map_err(io(&path))
}

/// Adds (or renames) a client. Returns false when it was already there unchanged.
pub fn allow(dir: &Path, key: &str, alias: Option<&str>) -> Result<bool, NodeError> {
    let k: Ed25519PublicKey =
        key.parse()
            .map_err(|e: basalt_formats::cloud_config::ValueError| {
                NodeError::Invalid(format!("key {key:?}: {e}"))
            })?;
    if let Some(a) = alias {
        a.parse::<Alias>()
            .map_err(|e| NodeError::Invalid(format!("alias {a:?}: {e}")))?;
    }
    let mut list = clients(dir)?;
    let text = key_text(&k);
    let entry = Client {
        key: text.clone(),
        alias: alias.map(String::from),
    };
    match list.iter_mut().find(|c| c.key == text) {
        Some(c) if *c == entry => return Ok(false),
        Some(c) => *c = entry,
        None => list.push(entry),
    }
    write_clients(dir, &list)?;
    Ok(true)
}

/// Removes a client by key or alias. Returns false when it was not there.
pub fn deny(dir: &Path, key_or_alias: &str) -> Result<bool, NodeError> {
    let key = key_or_alias
        .parse::<Ed25519PublicKey>()
        .ok()
        .map(|k| key_text(&k));
    let mut list = clients(dir)?;
    let before = list.len();
    list.retain(|c| Some(&c.key) != key.as_ref() && c.alias.as_deref() != Some(key_or_alias));
    if list.len() == before {
        return Ok(false);
    }
    write_clients(dir, &list)?;
    Ok(true)
}

/// One resource sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// UNIX seconds.
    pub t: u64,
    /// CPU busy share since the previous sample, 0-100.
    pub cpu_percent: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// The data partition.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// Hottest thermal zone, when the machine has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub temp_celsius: Option<f32>,
}

/// (busy, total) jiffies from the first line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?;
    let mut it = line.split_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// (used, total) bytes from `/proc/meminfo` (used = total - available).
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:")?;
    Some((total.saturating_sub(avail), total))
}

/// Samples the machine. `prev` is the previous (busy, total) CPU reading.
pub fn sample(now: u64, prev: &mut Option<(u64, u64)>, data: &Path) -> Sample {
    let cpu = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t));
    let cpu_percent = match (*prev, cpu) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            ((b1 - b0) as f32 * 100.0 / (t1 - t0) as f32).clamp(0.0, 100.0)
        }
        _ => 0.0,
    };
    *prev = cpu;
    let (mem_used_bytes, mem_total_bytes) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or((0, 0));
    let (disk_used_bytes, disk_total_bytes) = nix::sys::statvfs::statvfs(data)
        .map(|s| {
            let f = s.fragment_size();
            let total = s.blocks() * f;
            (total - s.blocks_free() * f, total)
        })
        .unwrap_or((0, 0));
    let temp_celsius = std::fs::read_dir("/sys/class/thermal")
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<f32>().ok())
        .map(|milli| milli / 1000.0)
        .reduce(f32::max);
    Sample {
        t: now,
        cpu_percent,
        mem_used_bytes,
        mem_total_bytes,
        disk_used_bytes,
        disk_total_bytes,
        temp_celsius,
    }
}

/// Appends a sample, keeping at most [`HISTORY_KEEP`] (the file is trimmed
/// when it reaches twice that, so appends stay cheap).
pub fn record(dir: &Path, s: &Sample) -> Result<(), NodeError> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(HISTORY_FILE);
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut line = serde_json::to_vec(s).expect("serialises");
        line.push(b'\n');
        f.write_all(&line).map_err(io(&path))?;
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let n = text.lines().count();
    if n >= 2 * HISTORY_KEEP {
        let kept: Vec<&str> = text.lines().skip(n - HISTORY_KEEP).collect();
        crate::provision::atomic_write(&path, (kept.join("\n") + "\n").as_bytes(), 0o644)
            .map_err(io(&path))?;
    }
    Ok(())
}

/// The last `n` samples, oldest first. Lines that do not parse (a power cut
/// mid-append) are skipped.
pub fn history(dir: &Path, n: usize) -> Result<Vec<Sample>, NodeError> {
    let path = dir.join(HISTORY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NodeError::Io { path, source: e }),
    };
    let all: Vec<Sample> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(all[all.len().saturating_sub(n)..].to_vec())
}

/// What `basalt-agent info` shows.
#[derive(Debug, Serialize)]
pub struct Info {
    pub node_id: Option<String>,
    pub alias: Option<String>,
    pub hostname: String,
    pub version: Option<String>,
    pub board: Option<String>,
    pub slot: Option<String>,
    pub uptime_s: u64,
    /// Global addresses by interface.
    pub addresses: Vec<(String, String)>,
    /// The mesh, when this node runs one.
    pub mesh: Option<crate::mesh::status::MeshStatus>,
    /// The models of this node and their state (empty until the server has started).
    pub models: Vec<crate::serve::models::Status>,
    pub allowed_clients: usize,
}

pub fn info(dir: &Path) -> Info {
    let st = crate::status::collect(Path::new("/"));
    let mut addresses: Vec<(String, String)> = nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let a = i.address?;
            let ip: std::net::IpAddr = if let Some(v4) = a.as_sockaddr_in() {
                std::net::IpAddr::V4(v4.ip())
            } else {
                std::net::IpAddr::V6(a.as_sockaddr_in6()?.ip())
            };
            (!ip.is_loopback()
                && !matches!(ip, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .then(|| (i.interface_name, ip.to_string()))
        })
        .collect();
    addresses.sort();
    Info {
        node_id: st.node_id.clone(),
        alias: alias(dir),
        hostname: st.hostname.clone(),
        version: st.release.as_ref().map(|r| r.version.to_string()),
        board: st.release.as_ref().map(|r| r.board.to_string()),
        slot: st.boot.as_ref().map(|b| b.slot.to_string()),
        uptime_s: st.uptime_s,
        addresses,
        mesh: crate::mesh::status::read(&dir.join("mesh")).ok(),
        models: std::fs::read(crate::serve::MODELS_STATUS_PATH)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default(),
        allowed_clients: clients(dir).map(|c| c.len()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "basalt-ed25519:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";

    #[test]
    fn alias_is_checked_and_kept() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(alias(d.path()), None);
        set_alias(d.path(), "line-3").unwrap();
        assert_eq!(alias(d.path()).as_deref(), Some("line-3"));
        assert!(set_alias(d.path(), "Line 3")
            .unwrap_err()
            .to_string()
            .contains("alias \"Line 3\""));
    }

    #[test]
    fn allow_and_deny_by_key_or_alias() {
        let d = tempfile::tempdir().unwrap();
        assert!(allow(d.path(), KEY, Some("laptop")).unwrap());
        assert!(!allow(d.path(), KEY, Some("laptop")).unwrap());
        let hex = "01".repeat(32);
        assert!(
            allow(d.path(), &hex, Some("desk")).unwrap(),
            "the same key given as hex renames it"
        );
        let list = clients(d.path()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].alias.as_deref(), Some("desk"));
        assert!(deny(d.path(), "desk").unwrap());
        assert!(!deny(d.path(), KEY).unwrap());
        assert!(allow(d.path(), "not-a-key", None)
            .unwrap_err()
            .to_string()
            .contains("key \"not-a-key\""));
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_proc_stat("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3 4\n"),
            Some((20, 100))
        );
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(
            parse_meminfo(
                "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n"
            ),
            Some((600 * 1024, 1000 * 1024))
        );
    }

    #[test]
    fn history_is_bounded_and_survives_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let s = |t| Sample {
            t,
            cpu_percent: 1.0,
            mem_used_bytes: 1,
            mem_total_bytes: 2,
            disk_used_bytes: 3,
            disk_total_bytes: 4,
            temp_celsius: None,
        };
        for t in 0..(2 * HISTORY_KEEP as u64 + 5) {
            record(d.path(), &s(t)).unwrap();
        }
        let h = history(d.path(), usize::MAX).unwrap();
        assert!(
            h.len() <= 2 * HISTORY_KEEP && h.len() >= HISTORY_KEEP,
            "{}",
            h.len()
        );
        assert_eq!(h.last().unwrap().t, 2 * HISTORY_KEEP as u64 + 4);
        std::fs::write(d.path().join(HISTORY_FILE), "{\"t\":1,\"cpu_perc\n").unwrap();
        assert!(history(d.path(), 10).unwrap().is_empty());
        assert_eq!(history(d.path(), 3).unwrap().len(), 0);
    }
}
