//! Metering records: one signed line per inference request.
//!
//! A node appends one line per request it served or forwarded to its
//! metering log. Each line is a JSON object:
//!
//! ```text
//! {"record":{"v":1,"seq":7,"time_ms":1764620000000,"node":"…","model":"magika",…},"sig":"…"}
//! ```
//!
//! `sig` is the node's Ed25519 signature (hex) over the exact bytes of the
//! `record` value as written, so a verifier never re-serialises anything.
//! Every record carries `prev`, the SHA-256 of the previous line of the same
//! log (all zeros for the first), and a `seq` one higher than the previous
//! one: a deleted, reordered or edited line breaks the chain and is found by
//! [`verify_log`]. Inputs and outputs are never recorded, only the SHA-256
//! of the request body and byte counts.

use crate::mesh::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record format version this crate writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// What one inference request cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Always [`RECORD_VERSION`].
    pub v: u32,
    /// Position in this node's log, from 0, one more than the previous record.
    pub seq: u64,
    /// When the request finished, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node that wrote (and signed) the record.
    pub node: NodeId,
    /// The model asked for.
    pub model: String,
    /// Its version, when the model was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Request body size.
    pub bytes_in: u64,
    /// Response body size.
    pub bytes_out: u64,
    /// Wall time from request to response, microseconds.
    pub wall_us: u64,
    /// SHA-256 of the request body, hex.
    pub input_sha256: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The node that ran the model, when it was not this one (forwarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<NodeId>,
    /// Who asked: `local`, `mesh:<node id>` or `client:<key>`.
    pub client: String,
    /// SHA-256 (hex) of the previous line of the log; 64 zeros for the first.
    pub prev: String,
}

/// The `prev` of the first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Serialize)]
struct LineOut<'a> {
    record: &'a serde_json::value::RawValue,
    sig: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    #[serde(borrow)]
    record: &'a serde_json::value::RawValue,
    sig: String,
}

/// Serialises and signs `record` as one log line (without the newline).
pub fn sign_line(record: &Record, key: &SigningKey) -> String {
    let body = serde_json::to_string(record).expect("a record always serialises");
    let sig = key.sign(body.as_bytes());
    let raw = serde_json::value::RawValue::from_string(body).expect("serde_json output is JSON");
    serde_json::to_string(&LineOut {
        record: &raw,
        sig: hex::encode(sig.to_bytes()),
    })
    .expect("a line always serialises")
}

/// SHA-256 of a line (without its newline), as the next record's `prev`.
pub fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// Why a line did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a metering line: {0}")]
    Syntax(String),
    #[error("record: {0}")]
    Record(String),
    #[error("record version {0} is not supported (this build reads {RECORD_VERSION})")]
    Version(u32),
    #[error("signature is not 128 hex digits")]
    SignatureSyntax,
    #[error("signature does not verify against node {0}")]
    BadSignature(NodeId),
}

/// Parses one line and checks its signature against the node it names.
pub fn verify_line(line: &str) -> Result<Record, LineError> {
    let parsed: LineIn =
        serde_json::from_str(line).map_err(|e| LineError::Syntax(e.to_string()))?;
    let record: Record =
        serde_json::from_str(parsed.record.get()).map_err(|e| LineError::Record(e.to_string()))?;
    if record.v != RECORD_VERSION {
        return Err(LineError::Version(record.v));
    }
    let sig: [u8; 64] = hex::decode(&parsed.sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(LineError::SignatureSyntax)?;
    record
        .node
        .verifying_key()
        .verify(parsed.record.get().as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| LineError::BadSignature(record.node))?;
    Ok(record)
}

/// One problem found in a log, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LogProblem {
    pub line: usize,
    pub reason: String,
}

/// What [`verify_log`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogReport {
    /// Lines whose signature verified.
    pub valid: usize,
    /// Every problem, in order.
    #[serde(serialize_with = "problems_as_text")]
    pub problems: Vec<LogProblem>,
    /// The nodes that signed the valid records.
    pub nodes: Vec<NodeId>,
}

fn problems_as_text<S: serde::Serializer>(p: &[LogProblem], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(p.iter().map(|p| p.to_string()))
}

impl LogReport {
    /// Whether every line verified and every chain is whole.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every line of a log: each signature, and per node the chain of
/// `seq` and `prev`. An export (`--since`) starts mid-chain, so the first
/// record seen from each node is taken as given; from there on, a gap, a
/// repeat or an edited line is a problem.
pub fn verify_log(text: &str) -> LogReport {
    let mut report = LogReport::default();
    // Per node: (seq, hash) of the last valid line.
    let mut last: std::collections::BTreeMap<NodeId, (u64, String)> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match verify_line(line) {
            Ok(r) => {
                report.valid += 1;
                if let Some((seq, hash)) = last.get(&r.node) {
                    if r.seq != seq + 1 {
                        report.problems.push(LogProblem {
                            line: n,
                            reason: format!(
                                "node {}: seq {} follows {seq}: records are missing or out of order",
                                r.node, r.seq
                            ),
                        });
                    } else if &r.prev != hash {
                        report.problems.push(LogProblem {
                            line: n,
                            reason: format!(
                                "node {}: prev does not match the previous record: it was edited or replaced",
                                r.node
                            ),
                        });
                    }
                } else {
                    report.nodes.push(r.node);
                }
                last.insert(r.node, (r.seq, line_hash(line)));
            }
            Err(e) => report.problems.push(LogProblem {
                line: n,
                reason: e.to_string(),
            }),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn record(k: &SigningKey, seq: u64, prev: &str) -> Record {
        Record {
            v: RECORD_VERSION,
            seq,
            time_ms: 1_764_620_000_000 + seq,
            node: NodeId::from_verifying_key(&k.verifying_key()),
            model: "magika".into(),
            model_version: Some("1".into()),
            bytes_in: 100,
            bytes_out: 20,
            wall_us: 1500,
            input_sha256: "ab".repeat(32),
            status: 200,
            served_by: None,
            client: "local".into(),
            prev: prev.into(),
        }
    }

    fn log(k: &SigningKey, n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|seq| {
                let line = sign_line(&record(k, seq, &prev), k);
                prev = line_hash(&line);
                line
            })
            .collect()
    }

    #[test]
    fn a_signed_line_verifies_and_round_trips() {
        let k = key(1);
        let r = record(&k, 0, GENESIS);
        let line = sign_line(&r, &k);
        assert!(!line.contains('\n'));
        assert_eq!(verify_line(&line).unwrap(), r);
    }

    #[test]
    fn an_edited_record_fails_its_signature() {
        let k = key(1);
        let line = sign_line(&record(&k, 0, GENESIS), &k);
        let edited = line.replace("\"bytes_in\":100", "\"bytes_in\":101");
        assert_ne!(edited, line);
        assert!(matches!(
            verify_line(&edited),
            Err(LineError::BadSignature(_))
        ));
    }

    #[test]
    fn a_record_signed_by_another_key_fails() {
        let (k, other) = (key(1), key(2));
        let line = sign_line(&record(&k, 0, GENESIS), &other);
        assert!(matches!(
            verify_line(&line),
            Err(LineError::BadSignature(_))
        ));
    }

    #[test]
    fn whole_log_verifies() {
        let lines = log(&key(1), 5).join("\n");
        let r = verify_log(&lines);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(r.valid, 5);
        assert_eq!(r.nodes.len(), 1);
    }

    #[test]
    fn a_deleted_line_breaks_the_chain() {
        let mut lines = log(&key(1), 5);
        lines.remove(2);
        let r = verify_log(&lines.join("\n"));
        assert_eq!(r.valid, 4);
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].line, 3);
        assert!(
            r.problems[0].reason.contains("seq 3 follows 1"),
            "{}",
            r.problems[0]
        );
    }

    #[test]
    fn a_replaced_line_breaks_the_chain() {
        let k = key(1);
        let mut lines = log(&k, 3);
        // Re-signed by the node itself with different content: the
        // signature holds but the next record's prev no longer matches.
        let mut r1 = verify_line(&lines[1]).unwrap();
        r1.bytes_out = 999;
        lines[1] = sign_line(&r1, &k);
        let r = verify_log(&lines.join("\n"));
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].reason.contains("prev does not match"));
    }

    #[test]
    fn an_export_may_start_mid_chain_and_mix_nodes() {
        let a = log(&key(1), 4);
        let b = log(&key(2), 3);
        let mixed = [&a[2..], &b[..]].concat().join("\n");
        let r = verify_log(&mixed);
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(r.valid, 5);
        assert_eq!(r.nodes.len(), 2);
    }

    #[test]
    fn garbage_is_reported_by_line() {
        let r = verify_log("{\"record\":{},\"sig\":\"00\"}\nnot json\n");
        assert_eq!(r.valid, 0);
        assert_eq!(r.problems.len(), 2);
        assert!(
            r.problems[0].reason.starts_with("record:"),
            "{}",
            r.problems[0]
        );
        assert_eq!(r.problems[1].line, 2);
    }
}
