//! `GET`/`HEAD /v1/bundles/{manifest-sha256}`: the update bundles this node
//! keeps ([`crate::update::share`]), to mesh peers only (and the node
//! itself): an allowed client or a token holder gets 403, anyone else 401.
//!
//! Answers carry `Accept-Ranges: bytes` and a strong `ETag` (the manifest's
//! SHA-256, which names the file); `Range: bytes=N-`, `bytes=N-M` and
//! `bytes=-K` get `206` with `Content-Range`, a range past the end `416`,
//! and an `If-Range` that is not the ETag the whole file, so a peer's
//! download resumes against it as against the update channel. The bytes
//! are not trusted by the peer: it verifies the bundle's signatures and
//! digests as it would the channel's.

use super::access::Caller;
use super::{caller, error, Server};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Bytes read from the file at a time.
const CHUNK: usize = 256 << 10;

/// A byte range asked for, resolved against the file's length: `[start, end)`.
/// `None`: the whole file; `Err(())`: not satisfiable.
pub fn parse_range(v: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    // Several ranges are answered with the whole file.
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let k: u64 = b.parse().ok()?;
        if k == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok((len.saturating_sub(k), len)));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        len
    } else {
        let last: u64 = b.parse().ok()?;
        if last < start {
            return None;
        }
        (last + 1).min(len)
    };
    if start >= len {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

pub async fn bundle(
    State(s): State<Server>,
    UrlPath(sha256): UrlPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    match caller(&s, peer, &headers, &method, &uri) {
        Err(r) => return r,
        Ok(Caller::Local | Caller::Mesh(_)) => {}
        Ok(c) => {
            return error(
                403,
                format!(
                    "update bundles are served to mesh peers only, not to {}",
                    c.label()
                ),
            )
        }
    }
    let Some(dir) = &s.bundles else {
        return error(404, "this node does not share update bundles");
    };
    let cache = crate::update::share::BundleCache {
        dir: dir.clone(),
        min_free: 0,
        min_free_percent: 0,
    };
    let Some(path) = cache.path_of(&sha256) else {
        return error(
            404,
            "a bundle is named by its manifest's SHA-256, 64 lowercase hex digits",
        );
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) => return error(404, format!("no bundle {sha256} on this node")),
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return error(500, e.to_string()),
    };
    let etag = format!("\"{sha256}\"");
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok)
        .and_then(|v| parse_range(v, len));
    let mut r = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let (start, end) = match range {
        None => {
            r = r.status(StatusCode::OK);
            (0, len)
        }
        Some(Ok((a, b))) => {
            r = r
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {a}-{}/{len}", b - 1));
            (a, b)
        }
        Some(Err(())) => {
            let mut resp = error(416, format!("the bundle is {len} bytes"));
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return resp;
        }
    };
    r = r.header(header::CONTENT_LENGTH, end - start);
    if method == Method::HEAD {
        return r
            .body(Body::empty())
            .unwrap_or_else(|e| error(500, e.to_string()));
    }
    if let Err(e) = file.seek(SeekFrom::Start(start)) {
        return error(500, e.to_string());
    }
    log::info!(
        "serving bundle {sha256} bytes {start}-{end} of {len} to {}",
        peer.ip()
    );
    // A thread reads the file; the body takes its chunks as the client reads.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    std::thread::spawn(move || {
        let mut left = end - start;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            let item = match file.read(&mut buf) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the bundle file shrank",
                )),
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    r.body(Body::new(FileBody { rx }))
        .unwrap_or_else(|e| error(500, e.to_string()))
}

/// Chunks of a file, read by a thread.
struct FileBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some(Ok((0, 10))));
        assert_eq!(parse_range("bytes=4-", 10), Some(Ok((4, 10))));
        assert_eq!(parse_range("bytes=4-5", 10), Some(Ok((4, 6))));
        assert_eq!(parse_range("bytes=4-99", 10), Some(Ok((4, 10))));
        assert_eq!(parse_range("bytes=-3", 10), Some(Ok((7, 10))));
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=5-4", 10), None);
        assert_eq!(parse_range("bytes=0-1,4-5", 10), None);
        assert_eq!(parse_range("items=0-", 10), None);
    }
}
