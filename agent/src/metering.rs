//! The metering log on the data partition: one signed line per inference
//! request (see [`basalt_formats::metering`] for the line format).
//!
//! Lines are appended to `records.jsonl` by one writer thread, so a request
//! never waits for the disk; the writer syncs whenever its queue runs dry.
//! When the file passes [`ROTATE_BYTES`] it becomes `records.jsonl.1` (the
//! older one is dropped) and the chain goes on in a new file. A power cut can
//! leave a torn last line; opening the log cuts it off and the chain goes on
//! from the last whole line.

use axum::body::Bytes;
use basalt_formats::mesh::NodeId;
use basalt_formats::metering::{
    line_hash, sign_line, verify_line, Record, GENESIS, RECORD_VERSION,
};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Where a device keeps its metering log.
pub const DEVICE_METERING_DIR: &str = "/data/basalt/metering";
const CURRENT: &str = "records.jsonl";
const PREVIOUS: &str = "records.jsonl.1";
/// Size at which the log is rotated: 64 MiB, about 200 000 records.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// What a request cost, as the server measured it; the log adds the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub model: String,
    pub model_version: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub wall_us: u64,
    /// The request body. The log keeps only its SHA-256, which the writer
    /// thread computes, off the request's path.
    pub input: Bytes,
    pub status: u16,
    pub served_by: Option<NodeId>,
    pub client: String,
}

#[derive(Debug, thiserror::Error)]
#[error("metering log {path}: {source}")]
pub struct MeteringError {
    path: PathBuf,
    source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> MeteringError + '_ {
    move |source| MeteringError {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends signed records. Cheap to clone; dropping the last clone ends the
/// writer thread after it has written and synced what it was given.
#[derive(Debug, Clone)]
pub struct MeteringLog {
    tx: mpsc::Sender<Usage>,
}

struct Writer {
    dir: PathBuf,
    key: SigningKey,
    node: NodeId,
    file: File,
    len: u64,
    seq: u64,
    prev: String,
    rotate_bytes: u64,
}

/// The last whole line of `path` that verifies, and the length up to the
/// last newline. Bytes after the last newline are a torn record: a power cut
/// in the middle of a write. Whole lines are never dropped, even ones that no
/// longer verify; `metering verify` reports those.
fn last_line(path: &Path) -> std::io::Result<(Option<String>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    // Lines are well under 2 KiB; read the tail only.
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let whole = match tail.iter().rposition(|&b| b == b'\n') {
        Some(nl) => start + nl as u64 + 1,
        None if start == 0 => 0,
        // No newline in 64 KiB: not a metering log's tail; keep it all.
        None => len,
    };
    let mut lines: Vec<&[u8]> = tail[..(whole - start) as usize]
        .split(|&b| b == b'\n')
        .collect();
    if start > 0 && !lines.is_empty() {
        // The first piece may be the end of a line that began before the tail.
        lines.remove(0);
    }
    let last = lines
        .iter()
        .rev()
        .filter_map(|l| std::str::from_utf8(l).ok())
        .find(|l| verify_line(l).is_ok())
        .map(str::to_string);
    Ok((last, whole))
}

impl Writer {
    fn open(dir: &Path, key: SigningKey, rotate_bytes: u64) -> Result<Writer, MeteringError> {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let node = NodeId::from_verifying_key(&key.verifying_key());
        let path = dir.join(CURRENT);
        let (mut last, good_len) = last_line(&path).map_err(err(&path))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err(&path))?;
        let len = file.metadata().map_err(err(&path))?.len();
        if good_len < len {
            log::warn!(
                "metering log {}: cutting off {} bytes of a torn last record",
                path.display(),
                len - good_len
            );
            file.set_len(good_len).map_err(err(&path))?;
        }
        if last.is_none() {
            // A fresh file after a rotation continues the old file's chain.
            let old = dir.join(PREVIOUS);
            last = last_line(&old).map_err(err(&old))?.0;
        }
        let (seq, prev) = match last.as_deref().map(|l| (verify_line(l), l)) {
            Some((Ok(r), l)) if r.node == node => (r.seq + 1, line_hash(l)),
            // Another node's log (the key was replaced): start a new chain.
            _ => (0, GENESIS.to_string()),
        };
        Ok(Writer {
            dir: dir.to_path_buf(),
            key,
            node,
            file,
            len: good_len,
            seq,
            prev,
            rotate_bytes,
        })
    }

    fn append(&mut self, u: Usage, now_ms: u64) -> std::io::Result<()> {
        let record = Record {
            v: RECORD_VERSION,
            seq: self.seq,
            time_ms: now_ms,
            node: self.node,
            model: u.model,
            model_version: u.model_version,
            bytes_in: u.bytes_in,
            bytes_out: u.bytes_out,
            wall_us: u.wall_us,
            input_sha256: hex::encode(Sha256::digest(&u.input)),
            status: u.status,
            served_by: u.served_by,
            client: u.client,
            prev: std::mem::take(&mut self.prev),
        };
        let line = sign_line(&record, &self.key);
        if self.len > 0 && self.len + line.len() as u64 + 1 > self.rotate_bytes {
            self.rotate()?;
        }
        let mut buf = line.clone().into_bytes();
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.len += buf.len() as u64;
        self.seq += 1;
        self.prev = line_hash(&line);
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(CURRENT))?;
        File::open(&self.dir)?.sync_all()?;
        self.len = 0;
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long the writer lets records gather after writing some: records
/// are on disk at most this long (plus the write) after their request.
pub const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

impl MeteringLog {
    /// Opens (or starts) the log in `dir`, signing with `key`.
    pub fn open(dir: &Path, key: SigningKey) -> Result<MeteringLog, MeteringError> {
        Self::open_with(dir, key, ROTATE_BYTES)
    }

    fn open_with(
        dir: &Path,
        key: SigningKey,
        rotate_bytes: u64,
    ) -> Result<MeteringLog, MeteringError> {
        let mut w = Writer::open(dir, key, rotate_bytes)?;
        let (tx, rx) = mpsc::channel::<Usage>();
        std::thread::Builder::new()
            .name("metering".into())
            .spawn(move || {
                // The first record after a quiet spell wakes the writer;
                // while it writes and then waits out WRITE_INTERVAL, records
                // queue up without waking it (a wake-up is a system call on
                // the request's path, and one on the other core costs an
                // inter-processor interrupt), and go to disk together with
                // one sync.
                while let Ok(u) = rx.recv() {
                    let mut batch = vec![u];
                    loop {
                        batch.extend(rx.try_iter());
                        if batch.is_empty() {
                            break;
                        }
                        for u in batch.drain(..) {
                            if let Err(e) = w.append(u, now_ms()) {
                                log::error!("metering log {}: {e}", w.dir.display());
                            }
                        }
                        if let Err(e) = w.file.sync_data() {
                            log::error!("metering log {}: sync: {e}", w.dir.display());
                        }
                        std::thread::sleep(WRITE_INTERVAL);
                    }
                }
            })
            .map_err(err(dir))?;
        Ok(MeteringLog { tx })
    }

    /// Queues one record; it is on disk within [`WRITE_INTERVAL`] or so.
    pub fn record(&self, usage: Usage) {
        if self.tx.send(usage).is_err() {
            log::error!("metering: the writer has stopped; a record was lost");
        }
    }
}

/// Writes the lines of the log (older file first) whose time is at or after
/// `since_ms` to `out`, unchanged, so that they still verify. Returns how many.
pub fn export(dir: &Path, since_ms: u64, out: &mut dyn Write) -> Result<u64, MeteringError> {
    let mut n = 0;
    for name in [PREVIOUS, CURRENT] {
        let path = dir.join(name);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(&path)(e)),
        };
        for line in BufReader::new(f).lines() {
            let line = line.map_err(err(&path))?;
            // Only whole, valid lines: a torn tail is not exported.
            match verify_line(&line) {
                Ok(r) if r.time_ms >= since_ms => {
                    writeln!(out, "{line}").map_err(err(&path))?;
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => log::warn!(
                    "{}: skipping a line that does not verify: {e}",
                    path.display()
                ),
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_formats::metering::verify_log;

    fn usage(i: u64) -> Usage {
        Usage {
            model: "m".into(),
            model_version: Some("1".into()),
            bytes_in: i,
            bytes_out: 2 * i,
            wall_us: 10,
            input: Bytes::from_static(b"[7]"),
            status: 200,
            served_by: None,
            client: "local".into(),
        }
    }

    fn all(dir: &Path) -> String {
        let mut out = Vec::new();
        export(dir, 0, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn write(dir: &Path, key: &SigningKey, from: u64, n: u64, rotate: u64) {
        let mut w = Writer::open(dir, key.clone(), rotate).unwrap();
        for i in from..from + n {
            w.append(usage(i), 1000 + i).unwrap();
        }
        w.file.sync_data().unwrap();
    }

    #[test]
    fn the_chain_continues_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        write(d.path(), &key, 0, 3, ROTATE_BYTES);
        write(d.path(), &key, 3, 2, ROTATE_BYTES);
        let text = all(d.path());
        let r = verify_log(&text);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(r.valid, 5);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_chain_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        write(d.path(), &key, 0, 3, ROTATE_BYTES);
        let path = d.path().join(CURRENT);
        let whole = std::fs::read(&path).unwrap();
        // A power cut in the middle of the fourth line.
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"record\":{\"v\":1,\"seq\":3,");
        std::fs::write(&path, &torn).unwrap();
        write(d.path(), &key, 3, 1, ROTATE_BYTES);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(std::str::from_utf8(&whole).unwrap()));
        let r = verify_log(&text);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(r.valid, 4);
    }

    #[test]
    fn rotation_keeps_one_old_file_and_the_chain() {
        let d = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        // Lines are ~500 bytes: rotate every few records.
        write(d.path(), &key, 0, 12, 2000);
        assert!(d.path().join(PREVIOUS).exists());
        let text = all(d.path());
        let r = verify_log(&text);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert!(r.valid < 12, "older records were dropped");
        let last = verify_line(text.lines().last().unwrap()).unwrap();
        assert_eq!(last.seq, 11);
        assert_eq!(last.bytes_in, 11);
    }

    #[test]
    fn export_since_filters_by_time() {
        let d = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        write(d.path(), &key, 0, 5, ROTATE_BYTES);
        let mut out = Vec::new();
        assert_eq!(export(d.path(), 1003, &mut out).unwrap(), 2);
        let r = verify_log(std::str::from_utf8(&out).unwrap());
        assert!(r.is_ok());
        assert_eq!(r.valid, 2);
    }

    #[test]
    fn the_writer_thread_records_everything_queued() {
        let d = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let log = MeteringLog::open(d.path(), key).unwrap();
        for i in 0..50 {
            log.record(usage(i));
        }
        drop(log);
        // The writer ends once the channel is closed and drained.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = verify_log(&all(d.path()));
            if r.valid == 50 {
                assert!(r.is_ok());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} records",
                r.valid
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
