//! The inference server: the KServe Open Inference Protocol v2 over HTTP,
//! plus `/health` and `/metrics`.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v2/health/live`, `/v2/health/ready` | 200 when live / when every model is loaded |
//! | `GET /v2` | server metadata |
//! | `GET /v2/models/{name}`, `/v2/models/{name}/ready` | model metadata / readiness |
//! | `POST /v2/models/{name}/infer` | runs the model on JSON tensors |
//! | `GET /health` | node and per-model state, JSON |
//! | `GET /metrics` | Prometheus text format |
//! | `GET`/`HEAD /v1/bundles/{manifest-sha256}` | an update bundle this node keeps, to mesh peers only, with ranges ([`bundles`]) |
//!
//! Limits, each with its status: a body over `max_request_bytes` is 413; a
//! full queue is 429 with `Retry-After`; a request not answered within
//! `timeout_ms` is 504; a body not received within [`BODY_TIMEOUT`] is 408;
//! shapes and types that do not fit the model are 400 naming the input.
//! Errors are JSON: `{"error": "..."}`. Every infer request leaves a signed
//! metering record ([`crate::metering`]).

pub mod access;
mod batcher;
pub mod bundles;
pub mod install;
pub mod route;
pub mod tokens;

pub use route::Advert;
pub mod metrics;
pub mod models;

use access::{Access, Caller};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use basalt_infer::v2;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

/// The content type of bodies with binary tensor data.
const BINARY_CONTENT_TYPE: &str = "application/octet-stream";
/// The port the server listens on, on every address of the node.
pub const DEFAULT_PORT: u16 = 8080;
/// How long the server is quiet before the memory models freed goes back
/// to the system.
pub const TRIM_AFTER_IDLE: Duration = Duration::from_secs(5);
/// Time a client has to send its whole body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the server writes its models' state for `basalt-agent info`.
pub const MODELS_STATUS_PATH: &str = "/run/basalt/models.json";

/// The server's limits: cloud-config's `basalt.inference`, or defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_bytes: usize,
    /// Requests that may wait for a worker; more get 429.
    pub queue_capacity: usize,
    pub timeout: Duration,
    /// Models run at once (each run uses one core).
    pub threads: usize,
    /// Most tensor elements one request may declare.
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 16 << 20,
            queue_capacity: 64,
            timeout: Duration::from_secs(30),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_elements: 16 << 20,
        }
    }
}

impl Limits {
    /// The defaults with cloud-config's settings on top.
    pub fn from_config(c: Option<&basalt_formats::cloud_config::Inference>) -> Limits {
        let mut l = Limits::default();
        if let Some(c) = c {
            if let Some(b) = c.max_request_bytes {
                l.max_request_bytes = b as usize;
            }
            if let Some(q) = c.queue_capacity {
                l.queue_capacity = q as usize;
            }
            if let Some(t) = c.timeout_ms {
                l.timeout = Duration::from_millis(t);
            }
            if let Some(t) = c.threads {
                l.threads = (t as usize).max(1);
            }
        }
        l
    }
}

/// One request on its way to a model.
#[derive(Debug)]
pub struct Job {
    pub request: v2::InferRequest,
    /// When the request joined the model's queue.
    pub queued: Instant,
    pub reply: oneshot::Sender<batcher::Answer>,
}

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct Server {
    pub models: models::Registry,
    pub limits: Arc<Limits>,
    pub workers: Arc<Semaphore>,
    pub metrics: Arc<metrics::Metrics>,
    pub access: Arc<Access>,
    pub metering: Option<crate::metering::MeteringLog>,
    /// This node's id, named in responses.
    pub node: Option<basalt_formats::mesh::NodeId>,
    /// Requests admitted and not yet answered.
    pending: Arc<AtomicUsize>,
    /// Inference requests answered since the start.
    answered: Arc<AtomicUsize>,
    /// Who else serves what, for requests this node cannot run.
    pub directory: Option<Arc<dyn route::Directory>>,
    /// The client for forwarded requests.
    http: reqwest::Client,
    /// Where update bundles kept for mesh peers are ([`bundles`]); `None`: none served.
    pub bundles: Option<std::path::PathBuf>,
}

impl Server {
    pub fn new(
        models: models::Registry,
        limits: Limits,
        access: Access,
        metering: Option<crate::metering::MeteringLog>,
        node: Option<basalt_formats::mesh::NodeId>,
    ) -> Server {
        Server {
            models,
            workers: Arc::new(Semaphore::new(limits.threads)),
            limits: Arc::new(limits),
            metrics: Arc::new(metrics::Metrics::default()),
            access: Arc::new(access),
            metering,
            node,
            pending: Arc::new(AtomicUsize::new(0)),
            answered: Arc::new(AtomicUsize::new(0)),
            directory: None,
            http: reqwest::Client::new(),
            bundles: None,
        }
    }

    /// Forwards requests for models this node lacks to the peers `d` names.
    pub fn with_directory(mut self, d: Arc<dyn route::Directory>) -> Server {
        self.directory = Some(d);
        self
    }

    /// Serves the update bundles kept in `dir` to mesh peers.
    pub fn with_bundles(mut self, dir: std::path::PathBuf) -> Server {
        self.bundles = Some(dir);
        self
    }

    /// What this node offers the mesh right now.
    pub fn advert(&self) -> Advert {
        Advert {
            models: self
                .models
                .ready_names()
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            load: Advert::load_step(
                self.in_flight(),
                self.limits.threads + self.limits.queue_capacity,
            ),
        }
    }

    /// Keeps `path` up to date with [`Server::advert`] (checked every second,
    /// written when it changes), for the mesh to put in this node's descriptor.
    pub fn advertise(&self, path: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let a = me.advert();
                if last.as_ref() != Some(&a) {
                    let json = serde_json::to_vec(&a).expect("an advert serialises");
                    match crate::provision::atomic_write(&path, &json, 0o644) {
                        Ok(()) => last = Some(a),
                        Err(e) => log::warn!("{}: {e}", path.display()),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Hands the memory that finished requests freed back to the system
    /// once requests stop for [`TRIM_AFTER_IDLE`]. glibc keeps what each
    /// thread freed for reuse; after a burst of large tensors that is
    /// hundreds of MiB an idle node has better use for. Under load nothing
    /// changes: trimming waits for a quiet spell.
    fn trim_when_idle(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let (mut seen, mut trimmed) = (0, 0);
            loop {
                tokio::time::sleep(TRIM_AFTER_IDLE).await;
                let answered = me.answered.load(Ordering::Relaxed);
                if answered != seen {
                    seen = answered;
                    continue;
                }
                if answered != trimmed && me.in_flight() == 0 {
                    trimmed = answered;
                    #[cfg(target_env = "gnu")]
                    let _ = tokio::task::spawn_blocking(|| {
                        // SAFETY: malloc_trim only returns free pages of
                        // the allocator's own arenas to the kernel.
                        unsafe { libc::malloc_trim(0) }
                    })
                    .await;
                }
            }
        })
    }

    /// Loads every model found under `roots`, one after another, in the background.
    pub fn load_models(&self, roots: Vec<std::path::PathBuf>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let roots: Vec<&std::path::Path> = roots.iter().map(|p| p.as_path()).collect();
            let found = models::discover(&roots);
            for (name, dir) in &found {
                me.models.pending(name, dir.clone());
            }
            for (_, dir) in found {
                me.models
                    .load(
                        dir,
                        me.limits.clone(),
                        me.workers.clone(),
                        me.metrics.clone(),
                    )
                    .await;
            }
        })
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v2/health/live", get(live))
            .route("/v2/health/ready", get(ready))
            .route("/v2", get(server_metadata))
            .route("/v2/models/{name}", get(model_metadata))
            .route("/v2/models/{name}/ready", get(model_ready))
            .route("/v2/models/{name}/infer", post(infer))
            .route("/health", get(health))
            .route("/metrics", get(metrics_text))
            .route("/v1/bundles/{sha256}", get(bundles::bundle))
            .fallback(not_found)
            .with_state(self)
    }

    /// Serves on `listener` until the future `stop` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let trim = self.trim_when_idle();
        // Answers go out as soon as they are written, not after the
        // client's delayed acknowledgement of the previous segment.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                log::debug!("TCP_NODELAY: {e}");
            }
        });
        let served = axum::serve(
            listener,
            self.router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await;
        trim.abort();
        served
    }
}

/// An error answer: `{"error": "..."}` with its status.
pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who the caller is, for requests without a body.
// The refusal is the answer itself, as axum handlers return it.
#[allow(clippy::result_large_err)]
pub(crate) fn caller(
    s: &Server,
    peer: SocketAddr,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
) -> Result<Caller, Response> {
    check(s, peer.ip(), headers, method, uri, b"")
}

#[allow(clippy::result_large_err)]
fn check(
    s: &Server,
    peer: IpAddr,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<Caller, Response> {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    s.access
        .check(peer, auth, method.as_str(), path, body, now_s())
        .map_err(|d| {
            let mut r = error(d.status, d.reason);
            if d.status == 401 {
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(access::SCHEME),
                );
                r.headers_mut().append(
                    axum::http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            r
        })
}

async fn live() -> Response {
    axum::Json(json!({"live": true})).into_response()
}

async fn ready(State(s): State<Server>) -> Response {
    let ready = s.models.all_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata(
    State(s): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    if let Err(r) = caller(&s, peer, &headers, &method, &uri) {
        return r;
    }
    axum::Json(json!({
        "name": "basalt-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
    .into_response()
}

async fn model_metadata(
    State(s): State<Server>,
    UrlPath(name): UrlPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    if let Err(r) = caller(&s, peer, &headers, &method, &uri) {
        return r;
    }
    match (s.models.get(&name), s.models.status(&name)) {
        (Some(m), _) => axum::Json(m.model.metadata()).into_response(),
        (None, Some(st)) => error(503, format!("model {name} is not ready: {}", st.state)),
        (None, None) => error(404, format!("no model named {name:?} on this node")),
    }
}

async fn model_ready(
    State(s): State<Server>,
    UrlPath(name): UrlPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    if let Err(r) = caller(&s, peer, &headers, &method, &uri) {
        return r;
    }
    match s.models.status(&name) {
        Some(st) => {
            let ready = matches!(st.state, models::State::Ready { .. });
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, axum::Json(json!({ "name": name, "ready": ready }))).into_response()
        }
        None => error(404, format!("no model named {name:?} on this node")),
    }
}

async fn health(
    State(s): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    if let Err(r) = caller(&s, peer, &headers, &method, &uri) {
        return r;
    }
    let models = s.models.list();
    let ok = models
        .iter()
        .all(|m| matches!(m.state, models::State::Ready { .. }));
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "node": s.node.map(|n| n.to_string()),
        "version": env!("CARGO_PKG_VERSION"),
        "in_flight": s.pending.load(Ordering::Relaxed),
        "models": models,
    });
    (code, axum::Json(body)).into_response()
}

async fn metrics_text(
    State(s): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Response {
    if let Err(r) = caller(&s, peer, &headers, &method, &uri) {
        return r;
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    error(404, format!("no such endpoint: {}", uri.path()))
}

/// Releases an admission slot when dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the body within the size and time limits.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(error(
            408,
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => {
            // to_bytes fails for a body over the limit, or a broken connection.
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_big {
                Err(error(
                    413,
                    format!("request body is larger than the limit of {limit} bytes"),
                ))
            } else {
                Err(error(400, format!("reading the request body: {e}")))
            }
        }
        Ok(Ok(b)) => Ok(b),
    }
}

async fn infer(
    State(s): State<Server>,
    UrlPath(name): UrlPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let started = Instant::now();
    // A declared length over the limit is refused before reading anything.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = s.limits.max_request_bytes;
    let body = match declared {
        Some(n) if n > limit as u64 => Err(error(
            413,
            format!("request body of {n} bytes is larger than the limit of {limit} bytes"),
        )),
        _ => read_body(body, limit).await,
    };
    let hops: u32 = headers
        .get(route::HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Binary tensor data: the length of the JSON at the start of the body.
    let header_len = match headers.get(v2::HEADER_LENGTH).map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("{}: {v:?} is not a length", v2::HEADER_LENGTH))
    }) {
        None => Ok(None),
        Some(Ok(n)) => Ok(Some(n)),
        Some(Err(e)) => Err(error(400, e)),
    };
    let body = match (header_len, body) {
        (Ok(h), Ok(b)) => Ok((b, h)),
        (Err(r), _) | (_, Err(r)) => Err(r),
    };
    let mut served_by = None;
    let (response, caller, bytes_in, input, version) = match body {
        Err(r) => (r, None, 0, Default::default(), None),
        Ok((body, header_len)) => match check(&s, peer.ip(), &headers, &method, &uri, &body) {
            Err(r) => (r, None, body.len() as u64, body, None),
            Ok(c) => {
                let local = s.models.status(&name).is_some();
                let forwarded = if local || hops >= route::MAX_HOPS {
                    None
                } else {
                    forward(&s, &name, body.clone(), header_len, hops).await
                };
                let (r, version) = match forwarded {
                    Some((r, by)) => {
                        served_by = by;
                        (r, None)
                    }
                    None => run(&s, &name, &body, header_len).await,
                };
                (r, Some(c), body.len() as u64, body, version)
            }
        },
    };
    let mut response = response;
    if served_by.is_none() {
        if let Some(n) = s.node {
            if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
                response.headers_mut().insert(SERVED_BY_HEADER, v);
            }
        }
    }
    let status = response.status().as_u16();
    let known = s.models.status(&name).is_some() || served_by.is_some();
    let label = if known {
        name.as_str()
    } else {
        metrics::UNKNOWN_MODEL
    };
    let wall = started.elapsed();
    // The whole time this node had the request, after the queue and
    // compute times of a model run here.
    if served_by.is_none() {
        let timing = response.extensions_mut().remove::<batcher::Timing>();
        if let Ok(v) = HeaderValue::from_str(&batcher::Timing::header(timing, wall)) {
            response.headers_mut().insert(SERVER_TIMING, v);
        }
    }
    s.answered.fetch_add(1, Ordering::Relaxed);
    s.metrics.observe(label, status, wall.as_secs_f64());
    // Only callers that got past the access check are metered: the others
    // are not anybody's usage.
    let (Some(caller), Some(log)) = (caller, &s.metering) else {
        return response;
    };
    // Every answer here is a complete buffer, so its size is known without
    // reading it again.
    let (parts, body) = response.into_parts();
    let (bytes_out, body) = match axum::body::HttpBody::size_hint(&body).exact() {
        Some(n) => (n, body),
        None => {
            let out = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            (out.len() as u64, Body::from(out))
        }
    };
    log.record(crate::metering::Usage {
        model: name,
        model_version: version,
        bytes_in,
        bytes_out,
        wall_us: wall.as_micros() as u64,
        input,
        status,
        served_by,
        client: caller.label(),
    });
    Response::from_parts(parts, body)
}

/// The header naming the node that ran the model.
pub const SERVED_BY_HEADER: &str = "basalt-served-by";

/// Sends the request to the peers that serve `name`, least loaded first,
/// until one answers. `None` when no peer serves it; the answer (or a 502
/// naming what each peer did) and the node that served it otherwise.
async fn forward(
    s: &Server,
    name: &str,
    body: axum::body::Bytes,
    header_len: Option<usize>,
    hops: u32,
) -> Option<(Response, Option<basalt_formats::mesh::NodeId>)> {
    let candidates = s.directory.as_ref()?.candidates(name);
    if candidates.is_empty() {
        return None;
    }
    let mut tried = Vec::new();
    for c in candidates {
        let url = format!("{}/v2/models/{name}/infer", c.base);
        let mut request = s
            .http
            .post(&url)
            .header(route::HOPS_HEADER, (hops + 1).to_string())
            .timeout(s.limits.timeout)
            .body(body.clone());
        request = match header_len {
            Some(n) => request
                .header(v2::HEADER_LENGTH, n.to_string())
                .header(axum::http::header::CONTENT_TYPE, BINARY_CONTENT_TYPE),
            None => request.header(axum::http::header::CONTENT_TYPE, "application/json"),
        };
        let sent = request.send().await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => {
                tried.push(format!("{}: {e}", c.node));
                continue;
            }
        };
        let status = r.status().as_u16();
        // The peer no longer has it ready: try the next one.
        if status == 404 || status == 503 {
            tried.push(format!("{}: answered {status}", c.node));
            continue;
        }
        let answer_len = r.headers().get(v2::HEADER_LENGTH).cloned();
        let timing = r.headers().get(SERVER_TIMING).cloned();
        let by = r
            .headers()
            .get(SERVED_BY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(c.node);
        let bytes = match r.bytes().await {
            Ok(b) => b,
            Err(e) => {
                tried.push(format!("{}: reading the answer: {e}", c.node));
                continue;
            }
        };
        let mut resp = Response::new(Body::from(bytes));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = if answer_len.is_some() {
            BINARY_CONTENT_TYPE
        } else {
            "application/json"
        };
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        if let Some(n) = answer_len {
            resp.headers_mut().insert(v2::HEADER_LENGTH, n);
        }
        if let Some(t) = timing {
            resp.headers_mut().insert(SERVER_TIMING, t);
        }
        if let Ok(v) = HeaderValue::from_str(&by.to_string()) {
            resp.headers_mut().insert(SERVED_BY_HEADER, v);
        }
        return Some((resp, Some(by)));
    }
    Some((
        error(
            502,
            format!(
                "model {name} is not on this node and no peer serving it answered: {}",
                tried.join("; ")
            ),
        ),
        None,
    ))
}

/// Parses, queues and runs one request; returns the answer and the model version.
async fn run(
    s: &Server,
    name: &str,
    body: &[u8],
    header_len: Option<usize>,
) -> (Response, Option<String>) {
    let Some(served) = s.models.get(name) else {
        return match s.models.status(name) {
            Some(st) => (
                error(503, format!("model {name} is not ready: {}", st.state)),
                Some(st.version),
            ),
            None => (
                error(404, format!("no model named {name:?} on this node")),
                None,
            ),
        };
    };
    let version = Some(served.model.version().to_string());
    let request = match v2::parse_request_with(
        body,
        header_len,
        &v2::RequestLimits {
            max_elements: s.limits.max_elements,
        },
    ) {
        Ok(r) => r,
        Err(e) => return (error(e.status(), e.to_string()), version),
    };
    let binary = v2::BinaryOutputs::of(&request);
    // Admission: the running requests plus the queue's capacity.
    let cap = s.limits.threads + s.limits.queue_capacity;
    if s.pending.fetch_add(1, Ordering::AcqRel) >= cap {
        s.pending.fetch_sub(1, Ordering::AcqRel);
        return (
            busy(format!("the queue is full ({cap} requests); retry shortly")),
            version,
        );
    }
    let _admitted = Admitted(s.pending.clone());
    let labels = metrics::ModelLabels {
        model: name.to_string(),
    };
    // A short run on an idle server is done here, on the runtime's thread:
    // handing it to a worker thread and the answer back would cost two
    // wake-ups of another core (70 µs or more in a VM), which is a tenth of
    // a 1 ms model. Only when this is the one request admitted, a worker is
    // free (and taken meanwhile) and the model's runs of this size take
    // under INLINE_MAX, so that a request arriving meanwhile waits at most
    // that long to be read.
    let inline = if s.pending.load(Ordering::Acquire) == 1 {
        served
            .cost
            .estimate(batcher::elements(&request))
            .filter(|&e| e <= INLINE_MAX.min(s.limits.timeout / 2))
            .and_then(|_| s.workers.clone().try_acquire_owned().ok())
    } else {
        None
    };
    let answer = if let Some(_worker) = inline {
        s.metrics.inline_runs.get_or_create(&labels).inc();
        let queued = Instant::now();
        // A panic in the model is the request's 500, as on a worker thread,
        // not the server's end.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batcher::run_now(
                &served.model,
                &[&request],
                &[queued],
                &s.metrics,
                &labels,
                &served.cost,
            )
        }))
        .ok()
        .and_then(|mut answers| answers.pop())
        .ok_or_else(|| error(500, format!("model {name}: the run failed")))
    } else {
        queue(s, name, &served, request, &labels).await
    };
    let (answer, timing) = match answer {
        Err(r) => return (r, version),
        Ok(a) => a,
    };
    let mut response = match answer {
        Err(e) => error(e.status(), e.to_string()),
        Ok(mut resp) => {
            if let Some(n) = s.node {
                resp.parameters
                    .get_or_insert_with(Default::default)
                    .insert("served_by".into(), json!(n.to_string()));
            }
            match binary.response(&resp) {
                None => axum::Json(resp).into_response(),
                Some((body, len)) => (
                    [
                        (
                            axum::http::header::CONTENT_TYPE,
                            BINARY_CONTENT_TYPE.to_string(),
                        ),
                        (
                            axum::http::HeaderName::from_static(v2::HEADER_LENGTH),
                            len.to_string(),
                        ),
                    ],
                    body,
                )
                    .into_response(),
            }
        }
    };
    // For the handler, which adds the whole request's time and writes the header.
    response.extensions_mut().insert(timing);
    (response, version)
}

/// The header with where a request's time went on the node that ran it
/// (W3C Server Timing, milliseconds): `queue` waiting for a worker,
/// `compute` the model run, `total` the whole request from its headers to
/// the answer (reading, parsing, checks and encoding included).
pub const SERVER_TIMING: &str = "server-timing";

/// 429 with `message`, asking to retry in a second.
fn busy(message: String) -> Response {
    let mut r = error(429, message);
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    r
}

/// Longest expected run that is done on the runtime's thread when the
/// server is idle (see [`run`]).
pub const INLINE_MAX: Duration = Duration::from_millis(5);

/// Queues `request` for the model's batcher and waits for its answer
/// within the time limit; an error response when it is refused or late.
async fn queue(
    s: &Server,
    name: &str,
    served: &models::Served,
    request: v2::InferRequest,
    labels: &metrics::ModelLabels,
) -> Result<batcher::Answer, Response> {
    let (tx, rx) = oneshot::channel();
    s.metrics.queue_depth.get_or_create(labels).inc();
    if served
        .queue
        .try_send(Job {
            request,
            queued: Instant::now(),
            reply: tx,
        })
        .is_err()
    {
        s.metrics.queue_depth.get_or_create(labels).dec();
        return Err(busy(format!(
            "the queue of model {name} is full; retry shortly"
        )));
    }
    match tokio::time::timeout(s.limits.timeout, rx).await {
        Err(_) => Err(error(
            504,
            format!(
                "model {name} did not answer within {} ms",
                s.limits.timeout.as_millis()
            ),
        )),
        Ok(Err(_)) => Err(error(500, format!("model {name}: the worker stopped"))),
        Ok(Ok(answer)) => Ok(answer),
    }
}
