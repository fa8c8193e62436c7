//! A small HTTP/1.1 server on 127.0.0.1 for tests: serves files from memory,
//! honours `Range` and `If-Range`, and misbehaves on request.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a path answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// The file, with ranges.
    Serve,
    /// Each answer sends at most this many body bytes, then closes.
    DropEvery(u64),
    /// Every answer stops at this absolute offset of the file and closes.
    CutAt(u64),
    /// Like `DropEvery`, but `Range` is ignored: always 200 with the whole file.
    DropThenIgnoreRange(u64),
    /// This status, empty body.
    Status(u16),
    /// The first `n` requests get 503, then the file.
    FailFirst(u32),
    /// Waits this long before the headers.
    Slow(Duration),
}

#[derive(Debug, Clone)]
struct Route {
    body: Arc<Vec<u8>>,
    behaviour: Behaviour,
}

#[derive(Debug, Default)]
struct Shared {
    routes: HashMap<String, Route>,
    /// Each request: path, and the Range and If-Range and User-Agent headers.
    log: Vec<Request>,
    /// Body bytes written to the socket, by path.
    sent: HashMap<String, u64>,
}

/// One request as the server saw it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub user_agent: Option<String>,
}

/// The file's strong ETag.
pub const ETAG: &str = "\"basalt-test-1\"";

#[derive(Debug, Clone)]
pub struct TestServer {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || handle(conn, &s));
            }
        });
        TestServer { port, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn route(&self, path: &str, body: impl Into<Vec<u8>>, behaviour: Behaviour) {
        self.shared.lock().unwrap().routes.insert(
            path.to_string(),
            Route {
                body: Arc::new(body.into()),
                behaviour,
            },
        );
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().log.clone()
    }

    /// Body bytes written to the socket for `path` so far (the kernel may
    /// have taken some that a client that hung up never read).
    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.shared
            .lock()
            .unwrap()
            .sent
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn handle(conn: TcpStream, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut req = Request {
        path: path.clone(),
        ..Request::default()
    };
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = Some(v.trim().to_string());
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => req.range = v,
                "if-range" => req.if_range = v,
                "user-agent" => req.user_agent = v,
                _ => {}
            }
        }
    }
    let (route, n) = {
        let mut s = shared.lock().unwrap();
        s.log.push(req.clone());
        let n = s.log.iter().filter(|r| r.path == path).count() as u32;
        (s.routes.get(&path).cloned(), n)
    };
    let mut out = conn;
    let Some(route) = route else {
        return respond_status(&mut out, 404);
    };
    let body = &route.body[..];
    let len = body.len() as u64;
    let range_start = req
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<u64>().ok());
    let range_ok = req.if_range.as_deref().is_none_or(|v| v == ETAG);
    let (honour_range, max_bytes, cut_at) = match route.behaviour {
        Behaviour::Status(code) => return respond_status(&mut out, code),
        Behaviour::FailFirst(k) if n <= k => return respond_status(&mut out, 503),
        Behaviour::Slow(d) => {
            std::thread::sleep(d);
            (true, u64::MAX, len)
        }
        Behaviour::Serve | Behaviour::FailFirst(_) => (true, u64::MAX, len),
        Behaviour::DropEvery(k) => (true, k, len),
        Behaviour::CutAt(k) => (true, u64::MAX, k.min(len)),
        Behaviour::DropThenIgnoreRange(k) => (false, k, len),
    };
    let start = match range_start {
        Some(s) if honour_range && range_ok => s.min(len),
        _ => 0,
    };
    let head = if start > 0 || (range_start.is_some() && honour_range && range_ok) {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\nETag: {ETAG}\r\nConnection: close\r\n\r\n",
            len - start,
            len.saturating_sub(1)
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nETag: {ETAG}\r\nConnection: close\r\n\r\n"
        )
    };
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let end = cut_at
        .max(start)
        .min(start.saturating_add(max_bytes))
        .min(len);
    for chunk in body[start as usize..end as usize].chunks(16 << 10) {
        if out.write_all(chunk).is_err() {
            break;
        }
        *shared.lock().unwrap().sent.entry(path.clone()).or_default() += chunk.len() as u64;
    }
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}

fn respond_status(out: &mut TcpStream, code: u16) {
    let _ = write!(
        out,
        "HTTP/1.1 {code} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = out.shutdown(Shutdown::Both);
}
