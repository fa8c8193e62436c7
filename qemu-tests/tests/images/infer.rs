//! The default image serves its baked-in model (magika) over the KServe v2
//! API from the first boot, to a client that cloud-config allowed, and its
//! answer equals tract's on the host for the same model and input.

use basalt_formats::spec::{ImageSpec, ModelSource};
use basalt_formats::BoardId;
use ed25519_dalek::SigningKey;
use qemu_tests::*;
use std::time::{Duration, Instant};

/// magika's input: the bytes of a file, padded with its token 256.
fn magika_input(len: usize) -> Vec<i32> {
    let text =
        b"#!/bin/sh\n# start the line camera\nset -eu\nexec /usr/bin/camera --fps 30 \"$@\"\n";
    let mut v: Vec<i32> = text.iter().map(|&b| b as i32).collect();
    v.resize(len, 256);
    v
}

/// The model file the default spec bakes in, from the build's download cache.
fn magika_on_host() -> std::path::PathBuf {
    let spec = ImageSpec::parse("default", basalt::assets::DEFAULT_SPEC).unwrap();
    let m = spec
        .models
        .iter()
        .find(|m| m.name.to_string() == "magika")
        .expect("magika in the default spec");
    let ModelSource::Url { url, sha256 } = &m.source else {
        panic!("magika is a download in the default spec");
    };
    let cache = basalt::build::default_cache_dir();
    let archive = basalt::build::models::fetch(url, sha256, &cache, None).unwrap();
    let bytes = basalt::build::models::extract(&archive, m.member.as_deref().unwrap()).unwrap();
    let path = work_dir().join("magika-host.onnx");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn x86_64_serves_the_baked_in_model_to_an_allowed_client() {
    if qemu_opted_out() {
        eprintln!("BASALT_SKIP_QEMU=1: not booting the inference test");
        return;
    }
    let built = default_image(BoardId::X86_64Uefi);
    let mut cfg = vm_config(BoardId::X86_64Uefi, &built.image, "x86_64-infer");
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let key_hex = hex::encode(key.verifying_key().to_bytes());
    let cidata = cfg.state_dir.join("cidata.img");
    cidata_image(
        &cidata,
        &format!(
            "#cloud-config\nbasalt:\n  version: 1\n  inference:\n    timeout_ms: 600000\n  allowed_clients:\n    - key: {key_hex}\n      alias: qemu-test\n"
        ),
        "instance-id: iid-infer-1\n",
    );
    cfg.extra_args = extra_disk("cidata", &cidata);
    let port = free_port();
    cfg.forwards = vec![(port, 8080)];
    let (vm, line) = boot_to_ready(&cfg);
    eprintln!("{line}");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();

    // Readiness is open to everyone (load balancers); the model loads in the background.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let r = http.get(format!("{base}/v2/health/ready")).send();
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the model was not ready within 300 s: {:?}\n{}",
            r.map(|r| r.status()),
            vm.console()
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    let signed = |method: &str, path: &str, body: &[u8]| {
        basalt_agent::serve::access::authorization(&key, method, path, now_s(), body)
    };
    // The host is neither local nor a mesh peer to the guest: it must sign.
    let meta_path = "/v2/models/magika";
    let r = http.get(format!("{base}{meta_path}")).send().unwrap();
    assert_eq!(r.status(), 401);
    let meta: serde_json::Value = http
        .get(format!("{base}{meta_path}"))
        .header("authorization", signed("GET", meta_path, b""))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let input = meta["inputs"][0]["name"]
        .as_str()
        .expect("an input name")
        .to_string();
    let width = meta["inputs"][0]["shape"][1]
        .as_i64()
        .expect("a fixed width") as usize;
    let data = magika_input(width);
    let body = serde_json::to_vec(&serde_json::json!({
        "id": "qemu-1",
        "inputs": [{"name": input, "shape": [1, width], "datatype": "INT32", "data": data}]
    }))
    .unwrap();
    let path = "/v2/models/magika/infer";
    // A key that is not on the allow-list is refused.
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let r = http
        .post(format!("{base}{path}"))
        .header(
            "authorization",
            basalt_agent::serve::access::authorization(&stranger, "POST", path, now_s(), &body),
        )
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let health = http
        .get(format!("{base}/health"))
        .header("authorization", signed("GET", "/health", b""))
        .send()
        .unwrap()
        .text()
        .unwrap();
    eprintln!("{health}");
    let started = Instant::now();
    let r = http
        .post(format!("{base}{path}"))
        .header("authorization", signed("POST", path, &body))
        .body(body.clone())
        .send()
        .unwrap();
    eprintln!("infer answered {} in {:?}", r.status(), started.elapsed());
    assert_eq!(r.status(), 200);
    let resp: serde_json::Value = r.json().unwrap();
    assert_eq!(resp["model_name"], "magika");
    assert_eq!(resp["id"], "qemu-1");
    assert!(resp["parameters"]["served_by"].is_string(), "{resp}");
    // The same model and input in tract on the host.
    let max_diff = max_diff_from_host("magika", &magika_on_host(), &body, &resp["outputs"][0]);
    assert!(max_diff < 1e-4, "device and host differ by {max_diff}");

    // The request was counted.
    let metrics = http
        .get(format!("{base}/metrics"))
        .header("authorization", signed("GET", "/metrics", b""))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("basalt_inference_requests_total{model=\"magika\",code=\"200\"} 1"),
        "{metrics}"
    );
    drop(vm);
}
