//! The inference server end to end over real HTTP on loopback: a small MLP
//! made here as ONNX, loaded with tract, served behind the v2 API.

use basalt_agent::serve::{self, models, Limits, Server};
use basalt_formats::metering::verify_log;
use basalt_infer::v2;
use ed25519_dalek::SigningKey;
use prost::Message;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tract_onnx::pb;

/// A two-layer perceptron y = relu(x·W1 + b1)·W2 + b2 with x: FP32 [N, 4]
/// and y: FP32 [N, 3], as an ONNX file.
fn mlp_onnx() -> Vec<u8> {
    fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: data,
            ..Default::default()
        }
    }
    fn value(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::dimension::Value;
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| pb::tensor_shape_proto::Dimension {
                                value: Some(match d {
                                    Some(n) => Value::DimValue(*n),
                                    None => Value::DimParam("N".into()),
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            ..Default::default()
        }
    }
    let w1: Vec<f32> = (0..32)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0)
        .collect();
    let w2: Vec<f32> = (0..24)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) / 10.0)
        .collect();
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "basalt-tests".into(),
        graph: Some(pb::GraphProto {
            name: "mlp".into(),
            node: vec![
                node("MatMul", &["x", "w1"], "h0"),
                node("Add", &["h0", "b1"], "h1"),
                node("Relu", &["h1"], "h"),
                node("MatMul", &["h", "w2"], "y0"),
                node("Add", &["y0", "b2"], "y"),
            ],
            initializer: vec![
                tensor("w1", &[4, 8], w1),
                tensor("b1", &[8], vec![0.1; 8]),
                tensor("w2", &[8, 3], w2),
                tensor("b2", &[3], vec![-0.2, 0.0, 0.2]),
            ],
            input: vec![value("x", &[None, Some(4)])],
            output: vec![value("y", &[None, Some(3)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A model directory as the image builder writes it.
fn install_model(root: &Path, name: &str, batch_max: u32) {
    use sha2::Digest;
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = mlp_onnx();
    std::fs::write(dir.join("model.onnx"), &bytes).unwrap();
    let m = serde_json::json!({"name": name, "version": "3", "file": "model.onnx",
        "sha256": hex::encode(sha2::Sha256::digest(&bytes)), "batch_max": batch_max});
    std::fs::write(dir.join("model.json"), m.to_string()).unwrap();
}

struct Running {
    base: String,
    server: Server,
    dirs: tempfile::TempDir,
    client: reqwest::Client,
}

async fn start(limits: Limits, batch_max: u32) -> Running {
    start_node(limits, batch_max, 5, None).await
}

/// A node with the `mlp` model (and a broken one) when `directory` is
/// `None`; with no models, forwarding through `directory`, otherwise.
async fn start_node(
    limits: Limits,
    batch_max: u32,
    key_byte: u8,
    directory: Option<Arc<dyn serve::route::Directory>>,
) -> Running {
    let dirs = tempfile::tempdir().unwrap();
    let with_models = directory.is_none();
    let models_dir = dirs.path().join("models");
    std::fs::create_dir_all(&models_dir).unwrap();
    if with_models {
        install_model(&models_dir, "mlp", batch_max);
        // A broken model next to it must not stop the good one.
        std::fs::create_dir_all(models_dir.join("broken")).unwrap();
        std::fs::write(models_dir.join("broken/model.onnx"), b"not onnx").unwrap();
        std::fs::write(
        models_dir.join("broken/model.json"),
        serde_json::json!({"name":"broken","version":"1","file":"model.onnx",
            "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"not onnx")), "batch_max":1})
        .to_string(),
    )
    .unwrap();
    }
    let key = SigningKey::from_bytes(&[key_byte; 32]);
    let metering =
        basalt_agent::metering::MeteringLog::open(&dirs.path().join("metering"), key.clone())
            .unwrap();
    let mut server = Server::new(
        models::Registry::new(None),
        limits,
        serve::access::Access {
            clients_dir: dirs.path().join("node"),
            ..Default::default()
        },
        Some(metering),
        Some(basalt_formats::mesh::NodeId::from_verifying_key(
            &key.verifying_key(),
        )),
    );
    if let Some(d) = directory {
        server = server.with_directory(d);
    }
    server.load_models(vec![models_dir]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server.clone().serve(listener, std::future::pending()));
    let r = Running {
        base,
        server,
        dirs,
        client: reqwest::Client::new(),
    };
    // Wait until both models have settled (one ready, one failed).
    for _ in 0..600 {
        let settled = r
            .server
            .models
            .list()
            .iter()
            .filter(|s| !matches!(s.state, models::State::Loading))
            .count();
        if settled == if with_models { 2 } else { 0 } {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("models did not load: {:?}", r.server.models.list());
}

impl Running {
    /// The server's `/metrics` text.
    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn infer(
        &self,
        model: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let r = self
            .client
            .post(format!("{}/v2/models/{model}/infer", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let headers = r.headers().clone();
        (
            code,
            r.json().await.unwrap_or(serde_json::Value::Null),
            headers,
        )
    }
}

fn request(rows: usize) -> String {
    let data: Vec<f32> = (0..rows * 4).map(|i| i as f32 / 10.0 - 0.5).collect();
    serde_json::json!({"id": "r1", "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": data}]})
        .to_string()
}

/// y for one row, computed here the long way.
fn expected(x: &[f32]) -> Vec<f32> {
    let w1: Vec<f32> = (0..32)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0)
        .collect();
    let w2: Vec<f32> = (0..24)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) / 10.0)
        .collect();
    let h: Vec<f32> = (0..8)
        .map(|j| ((0..4).map(|k| x[k] * w1[k * 8 + j]).sum::<f32>() + 0.1).max(0.0))
        .collect();
    let b2 = [-0.2, 0.0, 0.2];
    (0..3)
        .map(|j| (0..8).map(|k| h[k] * w2[k * 3 + j]).sum::<f32>() + b2[j])
        .collect()
}

#[tokio::test]
async fn serves_v2_metadata_health_and_correct_answers() {
    let r = start(Limits::default(), 4).await;
    assert_eq!(
        r.get("/v2/health/live").await,
        (200, serde_json::json!({"live": true}))
    );
    // One model failed to load: the server is live, not ready, and says why.
    assert_eq!(r.get("/v2/health/ready").await.0, 503);
    let (code, health) = r.get("/health").await;
    assert_eq!(code, 503);
    let broken = health["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "failed");
    assert!(
        broken["error"].as_str().unwrap().contains("model.onnx"),
        "{broken}"
    );
    assert_eq!(r.get("/v2/models/mlp/ready").await.0, 200);
    assert_eq!(r.get("/v2/models/broken/ready").await.0, 503);

    let (code, meta) = r.get("/v2/models/mlp").await;
    assert_eq!(code, 200);
    assert_eq!(meta["name"], "mlp");
    assert_eq!(meta["inputs"][0]["name"], "x");
    assert_eq!(meta["inputs"][0]["datatype"], "FP32");
    assert_eq!(meta["outputs"][0]["name"], "y");

    let (code, resp, headers) = r.infer("mlp", request(2)).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["model_name"], "mlp");
    assert_eq!(resp["id"], "r1");
    assert_eq!(resp["outputs"][0]["shape"], serde_json::json!([2, 3]));
    let got: Vec<f32> = resp["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let x: Vec<f32> = (0..8).map(|i| i as f32 / 10.0 - 0.5).collect();
    let want: Vec<f32> = [expected(&x[..4]), expected(&x[4..])].concat();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} != {want:?}");
    }
    let node = r.server.node.unwrap().to_string();
    assert_eq!(resp["parameters"]["served_by"], node.as_str());
    assert_eq!(headers["basalt-served-by"], node.as_str());
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_the_server_stays_up() {
    let limits = Limits {
        max_request_bytes: 4096,
        ..Limits::default()
    };
    let r = start(limits, 1).await;
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, ""),
        (
            serde_json::json!({"inputs":[{"name":"x","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}).to_string(),
            400,
            "x",
        ),
        (
            serde_json::json!({"inputs":[{"name":"x","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}).to_string(),
            400,
            "x",
        ),
        (
            serde_json::json!({"inputs":[{"name":"x","shape":[1000000000000u64,4],"datatype":"FP32","data":[1]}]}).to_string(),
            400,
            "x",
        ),
        (
            serde_json::json!({"inputs":[{"name":"z","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}).to_string(),
            400,
            "z",
        ),
        (format!("{{\"inputs\":[{{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[{}1]}}]}}", "1,".repeat(3000)), 413, "limit"),
    ];
    for (body, want, names) in cases {
        let (code, resp, _) = r.infer("mlp", body.clone()).await;
        assert_eq!(code, want, "{body:.80}: {resp}");
        let msg = resp["error"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{body:.80}: no error message");
        assert!(
            msg.contains(names),
            "{body:.80}: {msg:?} should name {names:?}"
        );
    }
    let (code, resp, _) = r.infer("nope", request(1)).await;
    assert_eq!(code, 404);
    assert!(resp["error"].as_str().unwrap().contains("nope"));
    let (code, resp, _) = r.infer("broken", request(1)).await;
    assert_eq!(code, 503, "{resp}");
    assert_eq!(r.get("/v2/models/nope").await.0, 404);
    assert_eq!(r.get("/no/such/path").await.0, 404);
    // Still serving.
    assert_eq!(r.infer("mlp", request(1)).await.0, 200);
    let text = r.metrics().await;
    assert!(
        text.contains("basalt_inference_requests_total{model=\"mlp\",code=\"400\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("basalt_inference_requests_total{model=\"_unknown\",code=\"404\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_full_queue_is_429_and_a_slow_answer_504() {
    let limits = Limits {
        threads: 1,
        queue_capacity: 1,
        timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    let r = start(limits, 1).await;
    // Every worker busy: requests wait in the queue.
    let hold = r
        .server
        .workers
        .clone()
        .acquire_many_owned(1)
        .await
        .unwrap();
    let a = tokio::spawn({
        let (c, b) = (reqwest::Client::new(), r.base.clone());
        async move {
            c.post(format!("{b}/v2/models/mlp/infer"))
                .body(request(1))
                .send()
                .await
                .unwrap()
        }
    });
    let b = tokio::spawn({
        let (c, b) = (reqwest::Client::new(), r.base.clone());
        async move {
            c.post(format!("{b}/v2/models/mlp/infer"))
                .body(request(1))
                .send()
                .await
                .unwrap()
        }
    });
    // Wait until both are queued.
    for _ in 0..100 {
        if r.server.in_flight() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r.server.in_flight(), 2);
    let (code, resp, headers) = r.infer("mlp", request(1)).await;
    assert_eq!(code, 429, "{resp}");
    assert_eq!(headers["retry-after"], "1");
    // The two queued ones time out, since no worker is free.
    assert_eq!(a.await.unwrap().status().as_u16(), 504);
    assert_eq!(b.await.unwrap().status().as_u16(), 504);
    drop(hold);
    assert_eq!(r.infer("mlp", request(1)).await.0, 200);
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_each_gets_its_own_rows() {
    let limits = Limits {
        threads: 1,
        ..Limits::default()
    };
    let r = start(limits, 8).await;
    let hold = r
        .server
        .workers
        .clone()
        .acquire_many_owned(1)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (c, b) = (reqwest::Client::new(), r.base.clone());
        tasks.push(tokio::spawn(async move {
            let x: Vec<f32> = (0..4).map(|k| (i * 4 + k) as f32 / 7.0).collect();
            let body = serde_json::json!({"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":x}]});
            let resp: serde_json::Value = c
                .post(format!("{b}/v2/models/mlp/infer"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (x, resp)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(hold);
    for t in tasks {
        let (x, resp) = t.await.unwrap();
        let got: Vec<f32> = resp["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let want = expected(&x);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} != {want:?}");
        }
    }
    let text = r.metrics().await;
    let count_line = text
        .lines()
        .find(|l| l.starts_with("basalt_inference_batch_size_count{model=\"mlp\"}"))
        .unwrap_or_else(|| panic!("{text}"));
    let batches: u64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(batches < 6, "6 requests ran in {batches} batches: {text}");
    // Each request's wait for a worker and its model run are counted, also
    // when it ran in a batch.
    for h in ["queue", "compute"] {
        assert!(
            text.contains(&format!(
                "basalt_inference_{h}_duration_seconds_count{{model=\"mlp\"}} 6"
            )),
            "{text}"
        );
    }
}

/// The server's counter or histogram count `metric` for the `mlp` model.
async fn mlp_metric(r: &Running, metric: &str) -> u64 {
    let text = r.metrics().await;
    let prefix = format!("basalt_inference_{metric}{{model=\"mlp\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_short_model_on_an_idle_server_runs_on_the_server_thread() {
    let limits = Limits {
        threads: 2,
        ..Limits::default()
    };
    let r = start(limits, 1).await;
    // The first run goes to a worker: nothing is known yet of its cost.
    assert_eq!(r.infer("mlp", request(1)).await.0, 200);
    assert_eq!(mlp_metric(&r, "inline_runs_total").await, 0);
    // Now known to be short: a lone request runs inline, and is answered
    // and counted like any other.
    let (code, resp, headers) = r.infer("mlp", request(1)).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(mlp_metric(&r, "inline_runs_total").await, 1);
    // Where its time went, in milliseconds.
    let timing = headers["server-timing"].to_str().unwrap();
    let durations: Vec<f64> = timing
        .split(", ")
        .zip(["queue;dur=", "compute;dur=", "total;dur="])
        .map(|(part, name)| {
            part.strip_prefix(name)
                .unwrap_or_else(|| panic!("{timing}"))
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(durations.len(), 3, "{timing}");
    assert!(
        durations[2] + 0.002 >= durations[0] + durations[1],
        "{timing}"
    );
    assert!(durations[1] > 0.0 && durations[1] < 1000.0, "{timing}");
    assert_eq!(mlp_metric(&r, "compute_duration_seconds_count").await, 2);
    assert_eq!(mlp_metric(&r, "queue_duration_seconds_count").await, 2);
    // No worker free: not inline, it waits for one.
    let hold = r
        .server
        .workers
        .clone()
        .acquire_many_owned(2)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (c, b) = (r.client.clone(), r.base.clone());
        async move {
            c.post(format!("{b}/v2/models/mlp/infer"))
                .body(request(1))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    drop(hold);
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(mlp_metric(&r, "inline_runs_total").await, 1);
}

#[tokio::test]
async fn every_request_leaves_a_signed_record_without_its_data() {
    let r = start(Limits::default(), 1).await;
    let body = request(1);
    assert_eq!(r.infer("mlp", body.clone()).await.0, 200);
    assert_eq!(r.infer("mlp", "{bad").await.0, 400);
    let dir = r.dirs.path().join("metering");
    let mut text = String::new();
    for _ in 0..100 {
        let mut out = Vec::new();
        basalt_agent::metering::export(&dir, 0, &mut out).unwrap();
        text = String::from_utf8(out).unwrap();
        if text.lines().count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = verify_log(&text);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.valid, 2, "{text}");
    let first = basalt_formats::metering::verify_line(text.lines().next().unwrap()).unwrap();
    assert_eq!(first.model, "mlp");
    assert_eq!(first.model_version.as_deref(), Some("3"));
    assert_eq!(first.status, 200);
    assert_eq!(first.client, "local");
    assert_eq!(first.bytes_in, body.len() as u64);
    assert!(first.bytes_out > 0);
    use sha2::Digest;
    assert_eq!(
        first.input_sha256,
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    );
    // The input's values are nowhere in the log.
    assert!(!text.contains("-0.5"), "{text}");
}

#[tokio::test]
async fn a_model_this_node_lacks_is_served_by_a_peer_that_has_it() {
    let b = start_node(Limits::default(), 4, 6, None).await;
    let b_id = b.server.node.unwrap();
    let candidate = |node, base: &str, load| serve::route::Candidate {
        node,
        base: base.to_string(),
        load,
    };
    // A dead peer claims the model too, and looks less loaded: it is tried
    // first, fails, and the live one answers.
    let dead = basalt_formats::mesh::NodeId::from_verifying_key(
        &SigningKey::from_bytes(&[9; 32]).verifying_key(),
    );
    let dir = serve::route::StaticDirectory(vec![
        ("mlp".into(), candidate(dead, "http://127.0.0.1:9", 0)),
        ("mlp".into(), candidate(b_id, &b.base, 50)),
    ]);
    let a = start_node(Limits::default(), 1, 7, Some(Arc::new(dir))).await;
    let (code, resp, headers) = a.infer("mlp", request(1)).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["parameters"]["served_by"], b_id.to_string().as_str());
    assert_eq!(headers["basalt-served-by"], b_id.to_string().as_str());
    // The serving node's timing comes back with its answer.
    let timing = headers["server-timing"].to_str().unwrap();
    assert!(timing.contains("compute;dur="), "{timing}");
    let x: Vec<f32> = (0..4).map(|i| i as f32 / 10.0 - 0.5).collect();
    let got: Vec<f32> = resp["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for (g, w) in got.iter().zip(expected(&x)) {
        assert!((g - w).abs() < 1e-5);
    }
    // A's metering names B as the node that ran it.
    let dir = a.dirs.path().join("metering");
    let mut rec = None;
    for _ in 0..100 {
        let mut out = Vec::new();
        basalt_agent::metering::export(&dir, 0, &mut out).unwrap();
        if let Some(line) = String::from_utf8(out).unwrap().lines().next() {
            rec = Some(basalt_formats::metering::verify_line(line).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec.expect("a record").served_by, Some(b_id));

    // A request that has already made its hops is not forwarded again.
    let r = a
        .client
        .post(format!("{}/v2/models/mlp/infer", a.base))
        .header("basalt-hops", serve::route::MAX_HOPS.to_string())
        .body(request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // No peer has it: 404, not a forward.
    assert_eq!(a.infer("nope", request(1)).await.0, 404);
}

/// Sends `req` as binary tensor data asking for binary outputs; the status
/// and the parsed answer.
async fn infer_binary(
    r: &Running,
    model: &str,
    req: &v2::InferRequest,
) -> (u16, v2::InferResponse) {
    let mut req = req.clone();
    req.parameters = Some(
        serde_json::json!({"binary_data_output": true})
            .as_object()
            .unwrap()
            .clone(),
    );
    let (body, len) = v2::binary_request(&req);
    let resp = r
        .client
        .post(format!("{}/v2/models/{model}/infer", r.base))
        .header(v2::HEADER_LENGTH, len)
        .body(body)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let answer_len = resp
        .headers()
        .get(v2::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    assert_eq!(
        resp.headers()["content-type"],
        "application/octet-stream",
        "binary answers say so"
    );
    let bytes = resp.bytes().await.unwrap();
    let parsed = v2::binary::parse_response(&bytes, answer_len)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (code, parsed)
}

#[tokio::test]
async fn binary_tensor_data_gets_the_same_answer_locally_and_through_a_peer() {
    let b = start_node(Limits::default(), 4, 6, None).await;
    let req = v2::parse_request(request(2).as_bytes(), &Default::default()).unwrap();
    let (code, json, _) = b.infer("mlp", request(2)).await;
    assert_eq!(code, 200);
    let json: v2::InferResponse = serde_json::from_value(json).unwrap();
    let (code, bin) = infer_binary(&b, "mlp", &req).await;
    assert_eq!(code, 200);
    assert_eq!(bin.outputs, json.outputs);
    assert_eq!(bin.id.as_deref(), Some("r1"));

    // Forwarded: the peer gets the header, the caller gets the peer's bytes.
    let dir = serve::route::StaticDirectory(vec![(
        "mlp".into(),
        serve::route::Candidate {
            node: b.server.node.unwrap(),
            base: b.base.clone(),
            load: 0,
        },
    )]);
    let a = start_node(Limits::default(), 1, 7, Some(Arc::new(dir))).await;
    let (code, fwd) = infer_binary(&a, "mlp", &req).await;
    assert_eq!(code, 200);
    assert_eq!(fwd.outputs, json.outputs);

    // A length header that does not fit the body is a 400 naming it.
    let r = a
        .client
        .post(format!("{}/v2/models/mlp/infer", b.base))
        .header(v2::HEADER_LENGTH, "many")
        .body(request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("inference-header-content-length"));
}

#[tokio::test]
async fn when_no_peer_answers_the_error_names_them() {
    let dead = basalt_formats::mesh::NodeId::from_verifying_key(
        &SigningKey::from_bytes(&[9; 32]).verifying_key(),
    );
    let dir = serve::route::StaticDirectory(vec![(
        "mlp".into(),
        serve::route::Candidate {
            node: dead,
            base: "http://127.0.0.1:9".into(),
            load: 0,
        },
    )]);
    let a = start_node(Limits::default(), 1, 7, Some(Arc::new(dir))).await;
    let (code, resp, _) = a.infer("mlp", request(1)).await;
    assert_eq!(code, 502, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains(&dead.to_string()),
        "{resp}"
    );
}

/// This host's address on the way out (not loopback) and an `Access`
/// whose mesh range holds it: a private IPv4 address, or a unique local
/// IPv6 one. A request to it is then from the mesh, or, with `mesh` false,
/// neither local nor from the mesh.
fn outward(node_dir: &Path, mesh: bool) -> Option<(std::net::IpAddr, serve::access::Access)> {
    use std::net::IpAddr;
    let local = |bind: &str, to: &str| {
        let s = std::net::UdpSocket::bind(bind).ok()?;
        s.connect(to).ok()?;
        Some(s.local_addr().ok()?.ip())
    };
    let mut access = serve::access::Access {
        clients_dir: node_dir.to_path_buf(),
        ..Default::default()
    };
    if let Some(IpAddr::V4(v4)) = local("0.0.0.0:0", "192.0.2.1:9") {
        let o = v4.octets();
        if let Ok(r) =
            basalt_formats::mesh::Ipv4Range::new(std::net::Ipv4Addr::new(o[0], o[1], o[2], 0), 24)
        {
            if mesh {
                access.mesh_v4 = Some(r);
            }
            return Some((IpAddr::V4(v4), access));
        }
    }
    if let Some(IpAddr::V6(v6)) = local("[::]:0", "[fd00::1]:9") {
        let o = v6.octets();
        if let Ok(p) =
            basalt_formats::mesh::MeshPrefix::from_bytes([o[0], o[1], o[2], o[3], o[4], o[5]])
        {
            if mesh {
                access.mesh_v6 = Some(p);
            }
            return Some((IpAddr::V6(v6), access));
        }
    }
    None
}

/// A server with no models that serves the bundles in `dir` on every address.
async fn bundle_server(dir: &Path, access: serve::access::Access) -> u16 {
    let server = Server::new(
        models::Registry::new(None),
        Limits::default(),
        access,
        None,
        None,
    )
    .with_bundles(dir.to_path_buf());
    let listener = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server.serve(listener, std::future::pending()));
    port
}

#[tokio::test]
async fn bundles_are_served_to_mesh_peers_with_ranges_and_refused_to_others() {
    let dirs = tempfile::tempdir().unwrap();
    let Some((ip, access)) = outward(&dirs.path().join("node"), true) else {
        eprintln!("skipped: this host has no private IPv4 or unique local IPv6 address");
        return;
    };
    let host = std::net::SocketAddr::new(ip, 0).to_string();
    let ip = host.trim_end_matches(":0").to_string();
    let bundles = dirs.path().join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let sha = "ab".repeat(32);
    let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let len = data.len();
    std::fs::write(bundles.join(format!("{sha}.basalt")), &data).unwrap();
    let port = bundle_server(&bundles, access).await;
    let url = format!("http://{ip}:{port}/v1/bundles/{sha}");
    let client = reqwest::Client::new();

    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(r.bytes().await.unwrap(), data);

    let r = client
        .get(&url)
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-{}/{len}", len - 1).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), data[1000..]);

    let r = client
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), data[10..20]);

    // If-Range that is not this bundle: the whole file.
    let r = client
        .get(&url)
        .header("Range", "bytes=10-19")
        .header("If-Range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = client
        .get(&url)
        .header("Range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );

    let r = client.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    let other = format!("http://{ip}:{port}/v1/bundles/{}", "cd".repeat(32));
    assert_eq!(client.get(&other).send().await.unwrap().status(), 404);
    let bad = format!("http://{ip}:{port}/v1/bundles/..%2Fetc");
    assert_eq!(client.get(&bad).send().await.unwrap().status(), 404);

    // The agent's own download code resumes against it, as against a channel.
    let from = url.clone();
    let got = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let f = basalt_agent::fetch::Fetcher::new(Default::default()).unwrap();
        let mut d = f.open_at(&from, 5000).unwrap();
        let mut v = Vec::new();
        d.read_to_end(&mut v).unwrap();
        v
    })
    .await
    .unwrap();
    assert_eq!(got, data[5000..]);

    // Not a mesh peer: no credentials is 401; an allowed token is 403.
    let node_dir = dirs.path().join("node2");
    let token = basalt_agent::serve::tokens::create(&node_dir, "dashboard", 1).unwrap();
    let (_, access) = outward(&node_dir, false).unwrap();
    let port = bundle_server(&bundles, access).await;
    let url = format!("http://{ip}:{port}/v1/bundles/{sha}");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("mesh peers only"), "{body}");
}
