//! What the agent's inference server costs on top of tract, and what it
//! holds in memory, as Markdown tables.
//!
//!     scripts/fetch-models.sh
//!     cargo bench -p basalt-agent --bench serve
//!
//! The server runs in a child process (this binary, started again with
//! `--server`), built as `basalt-agent` builds it: one current-thread async
//! runtime, models run on blocking threads, metering on. The client is this
//! process, over loopback HTTP/1.1 with keep-alive.
//!
//! 1. Latency, one request at a time: tract alone (`Model::infer` on a
//!    parsed request, as `cargo bench -p basalt-infer --bench models`) and
//!    the same request through the server, as JSON and as binary tensor
//!    data both ways; the three take turns request by request. Each answer's
//!    `Server-Timing` header says how long the model ran (`compute`), how
//!    long it waited for a worker (`queue`) and how long the server had the
//!    request (`total`), which splits the client's wait, request by
//!    request, into the model, the server's own work (total − queue −
//!    compute: reading, parsing, checks, encoding, metering) and the
//!    transport (client − total: the loopback TCP and waking each side).
//!    Taken per request, the split does not depend on how fast the model
//!    happened to run that time (on a VM that varies by tens of percent).
//!    For scale, the round trip of `GET /v2/health/live`, back to back and
//!    after 2 ms idle.
//! 2. Throughput of magika with 8 clients at once, dynamic batching on
//!    (batch of up to 8) and off.
//! 3. The server's resident memory: started with no models, with the
//!    three models loaded, and its peak after the runs above.

#[path = "../infer/tests/support/mod.rs"]
mod support;

use axum::body::Bytes;
use basalt_agent::serve::{self, models, Limits, Server};
use basalt_infer::v2::{self, Datatype, InferRequest, TensorData};
use basalt_infer::{LoadOptions, Model};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BATCH_CLIENTS: usize = 8;
const BATCH_SECONDS: u64 = 6;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--server") {
        return server(Path::new(&args[i + 1]));
    }
    let dir = models_dir("bench serve").expect("models");
    let work = tempfile::tempdir().expect("temporary directory");
    let root = work.path().join("models");
    // (served name, file, batch_max)
    let served = [
        ("magika", "magika.onnx", 8),
        ("magika-unbatched", "magika.onnx", 1),
        ("ppocr-cls", "ppocr-cls.onnx", 1),
        ("ppocr-rec", "ppocr-rec.onnx", 1),
    ];
    for (name, file, batch_max) in served {
        install(&root, name, &dir.join(file), batch_max);
    }

    let mut child = ServerProcess::spawn(&root, work.path());
    let idle = child.rss();
    child.load(served.len());
    let loaded = child.rss();
    let base = child.base.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();

    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let magika = magika_features(&std::fs::read(readme).expect(readme));
    let cases: [(&str, &str, &[u64], TensorData, usize); 3] = [
        (
            "magika",
            "magika.onnx",
            &[1, 2048],
            TensorData::Int32(magika.clone()),
            200,
        ),
        (
            "ppocr-cls",
            "ppocr-cls.onnx",
            &[1, 3, 48, 192],
            TensorData::Fp32(text_line_image(1, 48, 192)),
            500,
        ),
        (
            "ppocr-rec",
            "ppocr-rec.onnx",
            &[1, 3, 48, 320],
            TensorData::Fp32(text_line_image(1, 48, 320)),
            100,
        ),
    ];
    // For scale: a request the server answers at once, back to back and
    // after each side has idled for 2 ms (about what one side idles while
    // the other runs a 2 ms model).
    let health_url = format!("{base}/v2/health/live");
    println!("| `GET /v2/health/live` over loopback | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    for (label, pause) in [
        ("back to back", Duration::ZERO),
        ("after 2 ms idle", Duration::from_millis(2)),
    ] {
        let ms: Vec<f64> = (0..2000)
            .map(|_| {
                std::thread::sleep(pause);
                let start = Instant::now();
                rt.block_on(async {
                    let r = client.get(&health_url).send().await.expect("health");
                    assert_eq!(r.status(), 200);
                    r.bytes().await.expect("health body");
                });
                start.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        let h = stats(ms);
        println!("| {label} | {:.3} ms | {:.3} ms |", h.p50, h.p99);
    }
    println!();
    println!("| model | input | runs | tract p50 | tract p99 | HTTP binary p50 | HTTP binary p99 | server's own (binary) | transport (binary) | HTTP JSON p50 | HTTP JSON p99 | server's own (JSON) | transport (JSON) |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, file, shape, data, runs) in cases {
        let model = Model::load(name, "1", &dir.join(file), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let input = model.inputs()[0].name.clone();
        let datatype = data.datatype();
        let req: InferRequest = request(&input, datatype, shape, data);
        let want = model.infer(&req).expect("warm-up");
        // Binary both ways: inputs after the JSON, outputs asked for as bytes.
        let mut binary_req = req.clone();
        binary_req.parameters = serde_json::json!({"binary_data_output": true})
            .as_object()
            .cloned();
        let (binary_body, header_len) = v2::binary_request(&binary_req);
        let binary_body = Bytes::from(binary_body);
        let json_body = Bytes::from(serde_json::to_vec(&req).expect("request JSON"));
        let url = format!("{base}/v2/models/{name}/infer");
        rt.block_on(check_answer(&client, &url, &json_body, None, &want));
        rt.block_on(check_answer(
            &client,
            &url,
            &binary_body,
            Some(header_len),
            &want,
        ));
        // The three take turns request by request, so that a slow spell of
        // the machine falls on all of them alike.
        let mut tract = Vec::new();
        let (mut binary, mut json) = (Split::default(), Split::default());
        for _ in 0..runs {
            tract.push(time(|| drop(model.infer(&req))));
            binary.push(rt.block_on(one(&client, &url, &binary_body, Some(header_len))));
            json.push(rt.block_on(one(&client, &url, &json_body, None)));
        }
        let tract = stats(tract);
        let (b, j) = (binary.stats(), json.stats());
        println!(
            "| {name} | {datatype} {shape:?} | {runs} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.3} ms | {:.3} ms | {:.2} ms | {:.2} ms | {:.3} ms | {:.3} ms |",
            tract.p50, tract.p99, b[0].p50, b[0].p99, b[1].p50, b[2].p50, j[0].p50, j[0].p99, j[1].p50, j[2].p50,
        );
    }

    println!();
    println!(
        "| magika, {BATCH_CLIENTS} clients, {BATCH_SECONDS} s | requests/s | p50 | p99 | mean batch |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let req = request(
        "bytes",
        Datatype::INT32,
        &[1, 2048],
        TensorData::Int32(magika),
    );
    let (body, header_len) = v2::binary_request(&req);
    let body = Bytes::from(body);
    for (label, name) in [
        ("batching on (up to 8)", "magika"),
        ("batching off", "magika-unbatched"),
    ] {
        let url = format!("{base}/v2/models/{name}/infer");
        let before = histogram(&rt, &client, &base, "batch_size", name);
        let (n, ms) = rt.block_on(concurrent(&client, &url, &body, header_len));
        let after = histogram(&rt, &client, &base, "batch_size", name);
        let s = stats(ms);
        let mean_batch = if after.1 > before.1 {
            (after.0 - before.0) / (after.1 - before.1)
        } else {
            f64::NAN
        };
        println!(
            "| {label} | {:.1} | {:.2} ms | {:.2} ms | {mean_batch:.2} |",
            n as f64 / BATCH_SECONDS as f64,
            s.p50,
            s.p99
        );
    }

    let (peak, after) = (child.hwm(), child.rss());
    // The server hands freed memory back after a quiet spell.
    std::thread::sleep(serve::TRIM_AFTER_IDLE * 3);
    let quiet = child.rss();
    println!();
    println!("| server memory | RSS |");
    println!("| --- | ---: |");
    println!("| started, no models | {:.1} MiB |", mib(idle));
    println!(
        "| magika, PP-OCR cls and rec loaded (magika twice) | {:.1} MiB |",
        mib(loaded)
    );
    println!("| just after the runs above | {:.1} MiB |", mib(after));
    println!(
        "| {} s later, idle | {:.1} MiB |",
        (serve::TRIM_AFTER_IDLE * 3).as_secs(),
        mib(quiet)
    );
    println!("| peak (VmHWM) | {:.1} MiB |", mib(peak));
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn time(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1000.0
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// A model directory as the image builder writes it.
fn install(root: &Path, name: &str, onnx: &Path, batch_max: u32) {
    use sha2::Digest;
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("model directory");
    let bytes = std::fs::read(onnx).unwrap_or_else(|e| panic!("{}: {e}", onnx.display()));
    std::fs::write(dir.join("model.onnx"), &bytes).expect("model file");
    let m = serde_json::json!({"name": name, "version": "1", "file": "model.onnx",
        "sha256": hex::encode(sha2::Sha256::digest(&bytes)), "batch_max": batch_max});
    std::fs::write(dir.join("model.json"), m.to_string()).expect("manifest");
}

fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Bytes,
    header_len: Option<usize>,
) -> reqwest::RequestBuilder {
    // A reference-counted body: the client copies nothing per request.
    let r = client.post(url).body(body.clone());
    match header_len {
        Some(n) => r
            .header(v2::HEADER_LENGTH, n)
            .header("content-type", "application/octet-stream"),
        None => r.header("content-type", "application/json"),
    }
}

/// One request, whose answer must equal tract's.
async fn check_answer(
    client: &reqwest::Client,
    url: &str,
    body: &Bytes,
    header_len: Option<usize>,
    want: &v2::InferResponse,
) {
    let r = post(client, url, body, header_len)
        .send()
        .await
        .expect("warm-up request");
    assert_eq!(r.status(), 200, "{url}: {:?}", r.text().await);
    let answer_len = r
        .headers()
        .get(v2::HEADER_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes = r.bytes().await.expect("response body");
    let got = v2::binary::parse_response(&bytes, answer_len).expect("an answer");
    assert_eq!(got.outputs, want.outputs, "{url}: the server's answer");
}

/// Requests through the server: each one's whole wait, the server's own
/// part of it and the transport's, in milliseconds.
#[derive(Default)]
struct Split {
    client: Vec<f64>,
    server: Vec<f64>,
    transport: Vec<f64>,
}

impl Split {
    fn push(&mut self, (client, timing): (f64, ServerTiming)) {
        self.client.push(client);
        self.server
            .push(timing.total - timing.queue - timing.compute);
        self.transport.push(client - timing.total);
    }
    fn stats(self) -> [Stats; 3] {
        [
            stats(self.client),
            stats(self.server),
            stats(self.transport),
        ]
    }
}

/// An answer's `Server-Timing`, in milliseconds.
struct ServerTiming {
    queue: f64,
    compute: f64,
    total: f64,
}

impl ServerTiming {
    /// "queue;dur=0.004, compute;dur=1.234, total;dur=1.301"
    fn parse(value: &str) -> ServerTiming {
        let get = |name: &str| -> f64 {
            value
                .split(", ")
                .find_map(|m| m.strip_prefix(name)?.strip_prefix(";dur="))
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("Server-Timing {value:?}: no {name}"))
        };
        ServerTiming {
            queue: get("queue"),
            compute: get("compute"),
            total: get("total"),
        }
    }
}

/// One request: its milliseconds until the whole answer is in, and the
/// server's account of them.
async fn one(
    client: &reqwest::Client,
    url: &str,
    body: &Bytes,
    header_len: Option<usize>,
) -> (f64, ServerTiming) {
    let start = Instant::now();
    let r = post(client, url, body, header_len)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let timing = ServerTiming::parse(
        r.headers()
            .get(serve::SERVER_TIMING)
            .and_then(|v| v.to_str().ok())
            .expect("a Server-Timing header"),
    );
    r.bytes().await.expect("response body");
    (start.elapsed().as_secs_f64() * 1000.0, timing)
}

/// [`BATCH_CLIENTS`] clients sending as fast as answers come, for
/// [`BATCH_SECONDS`]; requests answered and each one's milliseconds.
async fn concurrent(
    client: &reqwest::Client,
    url: &str,
    body: &Bytes,
    header_len: usize,
) -> (usize, Vec<f64>) {
    let until = Instant::now() + Duration::from_secs(BATCH_SECONDS);
    let tasks: Vec<_> = (0..BATCH_CLIENTS)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.to_string(), body.clone());
            tokio::spawn(async move {
                let mut ms = Vec::new();
                while Instant::now() < until {
                    let start = Instant::now();
                    let r = post(&client, &url, &body, Some(header_len))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(r.status(), 200);
                    r.bytes().await.expect("response body");
                    ms.push(start.elapsed().as_secs_f64() * 1000.0);
                }
                ms
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    (all.len(), all)
}

/// The server's histogram `metric` for `model`: (sum, count).
fn histogram(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    metric: &str,
    model: &str,
) -> (f64, f64) {
    let text = rt.block_on(async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    });
    let value = |suffix: &str| {
        let prefix = format!("basalt_inference_{metric}_{suffix}{{model=\"{model}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

/// The server process, as the parent sees it.
struct ServerProcess {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    base: String,
}

impl ServerProcess {
    /// Starts this binary as the server; its first line is its address.
    fn spawn(root: &Path, work: &Path) -> ServerProcess {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .arg("--server")
            .arg(root)
            .env("BASALT_BENCH_WORK", work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server process");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.strip_prefix("listening ").map(str::to_string))
            .expect("the server's address");
        ServerProcess { child, lines, base }
    }

    fn status(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{path}: no {field}"))
    }
    fn rss(&self) -> u64 {
        self.status("VmRSS:")
    }
    fn hwm(&self) -> u64 {
        self.status("VmHWM:")
    }
    /// Asks the server to load its models and waits until `n` are ready.
    fn load(&mut self, n: usize) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "load").expect("to the server");
        let line = self.lines.next().and_then(Result::ok);
        assert_eq!(line.as_deref(), Some(&*format!("ready {n}")), "models");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: a server as the agent runs one, on a loopback port; loads
/// the models under `root` when told to on standard input.
fn server(root: &Path) {
    let work = PathBuf::from(std::env::var_os("BASALT_BENCH_WORK").expect("BASALT_BENCH_WORK"));
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let metering = basalt_agent::metering::MeteringLog::open(&work.join("metering"), key.clone())
        .expect("metering log");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = Server::new(
            models::Registry::new(None),
            Limits::default(),
            serve::access::Access {
                clients_dir: work.join("node"),
                ..Default::default()
            },
            Some(metering),
            Some(basalt_formats::mesh::NodeId::from_verifying_key(
                &key.verifying_key(),
            )),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        println!(
            "listening http://{}",
            listener.local_addr().expect("address")
        );
        tokio::spawn(s.clone().serve(listener, std::future::pending()));
        let mut line = String::new();
        tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line))
            .await
            .expect("stdin")
            .expect("stdin");
        s.load_models(vec![root.to_path_buf()])
            .await
            .expect("loading");
        let list = s.models.list();
        let ready = list
            .iter()
            .filter(|m| matches!(m.state, models::State::Ready { .. }))
            .count();
        assert_eq!(ready, list.len(), "{list:?}");
        println!("ready {ready}");
        // Serve until the parent is done.
        std::future::pending::<()>().await;
    });
}
