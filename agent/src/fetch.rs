//! HTTP(S) downloads: update bundles, the update channel, cloud-config URLs.
//!
//! A [`Fetcher`] holds one blocking client (rustls, no OpenSSL) with a
//! connect timeout, a read timeout that applies to every read of a body, and
//! the User-Agent `basalt-agent/<version>`. It must not be used from inside
//! an async runtime: the agent calls it from the CLI and from plain threads.
//!
//! [`Fetcher::open`] gives a [`Download`], a [`Read`] over a large body that
//! survives dropped connections: when the body fails (or ends before its
//! `Content-Length`) at byte N, it asks again with `Range: bytes=N-` and
//! `If-Range` (the strong `ETag`, else `Last-Modified`, when the server gave
//! one), checks that the `206` answer's `Content-Range` starts at N and has
//! the same total length, and carries on. Attempts that bring no new byte are
//! bounded ([`FetchOptions::attempts`]) and spaced by a doubling backoff.
//!
//! A `200` answer to a resume means the server either ignored the range or
//! holds a different file now (`If-Range` failed); the download then stops
//! with an error instead of silently starting again from byte 0, because the
//! bytes already handed out may belong to another file. Whoever reads a
//! bundle starts over from the beginning.

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::StatusCode;
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Sent with every request.
pub const USER_AGENT: &str = concat!("basalt-agent/", env!("CARGO_PKG_VERSION"));

/// Timeouts and retry bounds.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response headers, and for each read of a body.
    pub read_timeout: Duration,
    /// Attempts in a row that may fail before giving up (the first request
    /// counts, and so does each resume that brings no byte).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            attempts: 6,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl FetchOptions {
    /// The wait before attempt `attempt` (2, 3, …).
    pub fn backoff_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// A download that failed. Every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: cannot make an HTTP client: {detail}")]
    Client { url: String, detail: String },
    #[error("{url}: the server answered HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: timed out {during}")]
    Timeout { url: String, during: &'static str },
    #[error("{url}: cannot resolve the host name: {detail}")]
    Dns { url: String, detail: String },
    #[error("{url}: cannot connect: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url}: {detail}")]
    Transfer { url: String, detail: String },
    #[error("{url}: the connection closed after {got} of {expected} bytes")]
    Short {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("{url}: cannot resume at byte {offset}: {reason}")]
    Resume {
        url: String,
        offset: u64,
        reason: String,
    },
    #[error("{url}: larger than the {limit} bytes allowed")]
    TooLarge { url: String, limit: u64 },
    #[error("{last} (gave up after {attempts} attempts at byte {offset})")]
    Exhausted {
        attempts: u32,
        offset: u64,
        last: Box<FetchError>,
    },
}

impl FetchError {
    /// Whether asking again may help: network trouble and server errors,
    /// not a missing file or a server that cannot resume.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            FetchError::Timeout { .. }
            | FetchError::Dns { .. }
            | FetchError::Connect { .. }
            | FetchError::Transfer { .. }
            | FetchError::Short { .. } => true,
            FetchError::Client { .. }
            | FetchError::Resume { .. }
            | FetchError::TooLarge { .. }
            | FetchError::Exhausted { .. } => false,
        }
    }

    fn into_io(self) -> io::Error {
        let kind = match &self {
            FetchError::Timeout { .. } => io::ErrorKind::TimedOut,
            FetchError::Short { .. } => io::ErrorKind::UnexpectedEof,
            FetchError::Exhausted { last, .. } if matches!(**last, FetchError::Short { .. }) => {
                io::ErrorKind::UnexpectedEof
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// The messages of an error and its causes, deepest last, without repeats.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn classify(url: &str, e: &reqwest::Error, during: &'static str) -> FetchError {
    let detail = chain(e);
    let url = url.to_string();
    let timed_out = e.is_timeout()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut);
    if timed_out {
        FetchError::Timeout { url, during }
    } else if e.is_connect() && detail.contains("dns error") {
        FetchError::Dns { url, detail }
    } else if e.is_connect() {
        FetchError::Connect { url, detail }
    } else {
        FetchError::Transfer { url, detail }
    }
}

/// One HTTP client with the agent's timeouts.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: Client,
    options: FetchOptions,
}

impl Fetcher {
    pub fn new(options: FetchOptions) -> Result<Fetcher, FetchError> {
        let client = Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(options.connect_timeout)
            .timeout(options.read_timeout)
            .build()
            .map_err(|e| FetchError::Client {
                url: String::new(),
                detail: chain(&e),
            })?;
        Ok(Fetcher { client, options })
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// One GET; a status other than 2xx is an error.
    fn get(&self, url: &str, headers: HeaderMap) -> Result<Response, FetchError> {
        let response = self
            .client
            .get(url)
            .headers(headers)
            .send()
            .map_err(|e| classify(url, &e, "waiting for the response"))?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: response.status(),
            });
        }
        Ok(response)
    }

    /// Opens a large body, trying again (with backoff) while the errors are
    /// transient; see the module docs for how it resumes.
    pub fn open(&self, url: &str) -> Result<Download, FetchError> {
        let mut attempt = 1;
        loop {
            match self.get(url, HeaderMap::new()) {
                Ok(response) => return Ok(Download::new(self.clone(), url, response)),
                Err(e) if e.is_transient() && attempt < self.options.attempts => {
                    log::warn!("{e}; trying again");
                    attempt += 1;
                    std::thread::sleep(self.options.backoff_before(attempt));
                }
                Err(e) if attempt > 1 => {
                    return Err(FetchError::Exhausted {
                        attempts: attempt,
                        offset: 0,
                        last: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a large body from byte `offset` on (a `Range` request), as
    /// [`Fetcher::open`] does from the start; for going on with a download
    /// that an earlier process began.
    pub fn open_at(&self, url: &str, offset: u64) -> Result<Download, FetchError> {
        if offset == 0 {
            return self.open(url);
        }
        let mut d = Download {
            fetcher: self.clone(),
            url: url.to_string(),
            response: None,
            offset,
            total: None,
            validator: None,
            failures: 0,
        };
        match d.request_rest() {
            Ok(()) => Ok(d),
            Err(e) if e.is_transient() => d.resume(e).map(|()| d),
            Err(e) => Err(e),
        }
    }

    /// A small body (a channel document, a cloud-config), whole, at most `limit` bytes.
    pub fn get_bytes(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let mut download = self.open(url)?;
        if download.total_len().is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        let mut out = Vec::new();
        (&mut download)
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| into_fetch_error(url, e))?;
        if out.len() as u64 > limit {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        Ok(out)
    }

    /// [`get_bytes`](Self::get_bytes), asked again while the errors are
    /// transient and `patience` has not run out (the network may still be
    /// coming up at boot).
    pub fn get_bytes_patiently(
        &self,
        url: &str,
        limit: u64,
        patience: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        let start = Instant::now();
        let mut round = 1;
        loop {
            match self.get_bytes(url, limit) {
                Ok(b) => return Ok(b),
                Err(e) => {
                    let transient = match &e {
                        FetchError::Exhausted { last, .. } => last.is_transient(),
                        e => e.is_transient(),
                    };
                    let wait = self.options.backoff_before(round + 1);
                    if !transient || start.elapsed() + wait >= patience {
                        return Err(e);
                    }
                    log::warn!("{e}; trying again");
                    round += 1;
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// The fetch error inside an `io::Error` a [`Download`] returned, or the I/O error named by `url`.
pub fn into_fetch_error(url: &str, e: io::Error) -> FetchError {
    if e.get_ref().is_some_and(|inner| inner.is::<FetchError>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<FetchError>().expect("checked above");
    }
    FetchError::Transfer {
        url: url.to_string(),
        detail: e.to_string(),
    }
}

/// A body being read, resumed with `Range` when the connection drops.
#[derive(Debug)]
pub struct Download {
    fetcher: Fetcher,
    url: String,
    response: Option<Response>,
    /// Bytes handed out so far.
    offset: u64,
    /// The whole length, when the server said.
    total: Option<u64>,
    /// What `If-Range` carries: a strong ETag or the Last-Modified date.
    validator: Option<String>,
    /// Resumes that brought nothing since the last byte.
    failures: u32,
}

impl Download {
    fn new(fetcher: Fetcher, url: &str, response: Response) -> Download {
        let total = response.content_length();
        let validator = validator(response.headers());
        Download {
            fetcher,
            url: url.to_string(),
            response: Some(response),
            offset: 0,
            total,
            validator,
            failures: 0,
        }
    }

    /// The body's length, when the server gave one.
    pub fn total_len(&self) -> Option<u64> {
        self.total
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks for the rest of the body after a failure.
    fn resume(&mut self, why: FetchError) -> Result<(), FetchError> {
        self.response = None;
        self.failures += 1;
        let opts = self.fetcher.options();
        if !why.is_transient() || self.failures >= opts.attempts {
            return Err(if why.is_transient() {
                FetchError::Exhausted {
                    attempts: self.failures,
                    offset: self.offset,
                    last: Box::new(why),
                }
            } else {
                why
            });
        }
        log::warn!("{why}; resuming at byte {}", self.offset);
        std::thread::sleep(opts.backoff_before(self.failures + 1));
        match self.request_rest() {
            Err(e) if e.is_transient() => self.resume(e),
            other => other,
        }
    }

    /// Asks for the body from `offset` on: `Range`, `If-Range` when a
    /// validator is known, and a `206` that starts there.
    fn request_rest(&mut self) -> Result<(), FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            RANGE,
            format!("bytes={}-", self.offset)
                .parse()
                .expect("a valid header"),
        );
        if let Some(v) = self.validator.as_ref().and_then(|v| v.parse().ok()) {
            headers.insert(IF_RANGE, v);
        }
        let response = self.fetcher.get(&self.url, headers)?;
        let resume_err = |reason: String| FetchError::Resume {
            url: self.url.clone(),
            offset: self.offset,
            reason,
        };
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(resume_err(format!(
                "the server answered HTTP {} instead of 206 Partial Content: it ignores ranges, or the file changed; not starting again from byte 0",
                response.status()
            )));
        }
        let range = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| resume_err("the 206 answer has no Content-Range".into()))?;
        let (start, total) = parse_content_range(range)
            .ok_or_else(|| resume_err(format!("cannot read Content-Range {range:?}")))?;
        if start != self.offset {
            return Err(resume_err(format!(
                "the server sent bytes from {start} (Content-Range {range:?})"
            )));
        }
        match (self.total, total) {
            (Some(a), Some(b)) if a != b => {
                return Err(resume_err(format!(
                    "the file is now {b} bytes long, it was {a}"
                )))
            }
            (None, Some(b)) => self.total = Some(b),
            _ => {}
        }
        if self.validator.is_none() {
            self.validator = validator(response.headers());
        }
        self.response = Some(response);
        Ok(())
    }
}

fn validator(headers: &HeaderMap) -> Option<String> {
    let strong_etag = headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with('"'));
    strong_etag
        .or_else(|| headers.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()))
        .map(str::to_string)
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.total.is_some_and(|t| self.offset >= t) {
                return Ok(0);
            }
            let result = match self.response.as_mut() {
                Some(r) => r.read(buf),
                None => Ok(0),
            };
            let why = match result {
                Ok(0) => match self.total {
                    Some(expected) => FetchError::Short {
                        url: self.url.clone(),
                        got: self.offset,
                        expected,
                    },
                    None => return Ok(0),
                },
                Ok(n) => {
                    let n = match self.total {
                        Some(t) => n.min((t - self.offset) as usize),
                        None => n,
                    };
                    self.offset += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) => {
                    let inner = e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>());
                    match inner {
                        Some(re) => classify(&self.url, re, "reading the body"),
                        None if e.kind() == io::ErrorKind::TimedOut => FetchError::Timeout {
                            url: self.url.clone(),
                            during: "reading the body",
                        },
                        None => FetchError::Transfer {
                            url: self.url.clone(),
                            detail: format!("after {} bytes: {}", self.offset, chain(&e)),
                        },
                    }
                }
            };
            self.resume(why).map_err(FetchError::into_io)?;
        }
    }
}

#[cfg(test)]
pub(crate) mod test_server;

#[cfg(test)]
pub(crate) mod tests;
