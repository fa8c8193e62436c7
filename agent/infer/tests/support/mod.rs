//! Shared by the model tests and the benchmark: where the fetched models and
//! the onnxruntime venv are, deterministic realistic inputs, and the
//! onnxruntime reference run (`tests/onnxruntime_ref.py`).

#![allow(dead_code)] // each test binary uses part of it

use basalt_infer::v2::{Datatype, InferRequest, RequestInput, TensorData};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const MODELS: [&str; 3] = ["magika.onnx", "ppocr-cls.onnx", "ppocr-rec.onnx"];
const FETCH: &str = "run scripts/fetch-models.sh (scripts/setup.sh does, as root)";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("BASALT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/basalt/cache"))
}

fn skip_onnxruntime() -> bool {
    std::env::var("BASALT_SKIP_ONNXRUNTIME").is_ok_and(|v| v == "1")
}

/// The directory holding the fetched models. Missing models fail the test,
/// unless BASALT_SKIP_ONNXRUNTIME=1, which gives `None` and says so.
pub fn models_dir(test: &str) -> Option<PathBuf> {
    let dir = cache_dir().join("models");
    let missing: Vec<&str> = MODELS
        .iter()
        .copied()
        .filter(|m| !dir.join(m).is_file())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    if skip_onnxruntime() {
        eprintln!(
            "{test}: not run: {missing:?} missing from {} and BASALT_SKIP_ONNXRUNTIME=1",
            dir.display()
        );
        return None;
    }
    panic!(
        "{test}: {missing:?} missing from {}: {FETCH}",
        dir.display()
    );
}

/// The venv's python with onnxruntime. A missing venv fails the test,
/// unless BASALT_SKIP_ONNXRUNTIME=1, which gives `None` and says so.
pub fn python(test: &str) -> Option<PathBuf> {
    if skip_onnxruntime() {
        eprintln!("{test}: onnxruntime comparison not run: BASALT_SKIP_ONNXRUNTIME=1");
        return None;
    }
    let python = cache_dir().join("pyenv/bin/python");
    assert!(
        python.is_file(),
        "{test}: no onnxruntime venv at {}: {FETCH}",
        python.display()
    );
    Some(python)
}

/// A small deterministic generator (xorshift64*), so inputs are the same
/// on every run without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Magika's features for a file, as the magika crate 1.1 computes them for
/// this model: the first 1024 bytes after leading whitespace and the last
/// 1024 before trailing whitespace (each from a 4096-byte block), padded
/// with 256.
pub fn magika_features(content: &[u8]) -> Vec<i32> {
    const BLOCK: usize = 4096;
    const SIDE: usize = 1024;
    const PAD: i32 = 256;
    let beg = &content[..content.len().min(BLOCK)];
    let beg = &beg[beg
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(beg.len())..];
    let end = &content[content.len().saturating_sub(BLOCK)..];
    let end = &end[..end
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1)];
    let mut features = Vec::with_capacity(2 * SIDE);
    let beg = &beg[..beg.len().min(SIDE)];
    features.extend(beg.iter().map(|&b| i32::from(b)));
    features.resize(SIDE, PAD);
    let end = &end[end.len().saturating_sub(SIDE)..];
    features.resize(2 * SIDE - end.len(), PAD);
    features.extend(end.iter().map(|&b| i32::from(b)));
    features
}

/// Real files of several kinds (from this repository and the model itself)
/// and seeded random bytes, as magika features.
pub fn magika_samples(models: &Path) -> Vec<(String, Vec<i32>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut samples: Vec<(String, Vec<i32>)> = [
        "Cargo.toml",
        "scripts/setup.sh",
        "agent/infer/src/v2.rs",
        "agent/infer/tests/onnxruntime_ref.py",
        "README.md",
    ]
    .iter()
    .map(|f| {
        let bytes = std::fs::read(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        (f.to_string(), magika_features(&bytes))
    })
    .collect();
    let onnx = std::fs::read(models.join("magika.onnx")).expect("magika.onnx");
    samples.push(("magika.onnx".into(), magika_features(&onnx)));
    let mut rng = Rng::new(7);
    let random: Vec<u8> = (0..6000).map(|_| rng.next_u64() as u8).collect();
    samples.push(("random bytes".into(), magika_features(&random)));
    samples
}

/// A synthetic text line: light paper with seeded noise and dark strokes
/// of glyph-like boxes, CHW, normalised as PP-OCR does ((x/255 - 0.5) / 0.5).
pub fn text_line_image(seed: u64, height: usize, width: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut gray = vec![0f32; height * width];
    for p in gray.iter_mut() {
        *p = 225.0 + 25.0 * rng.unit();
    }
    let mut x = 4 + (rng.next_u64() % 8) as usize;
    while x + 12 < width {
        let w = 6 + (rng.next_u64() % 10) as usize;
        let top = 8 + (rng.next_u64() % 8) as usize;
        let bottom = height - 8 - (rng.next_u64() % 8) as usize;
        for y in top..bottom {
            for dx in 0..w.min(width - x) {
                let edge = y < top + 2 || y + 2 >= bottom || dx < 2 || dx + 2 >= w;
                if edge || rng.unit() < 0.2 {
                    gray[y * width + x + dx] = 20.0 + 40.0 * rng.unit();
                }
            }
        }
        x += w + 3 + (rng.next_u64() % 6) as usize;
    }
    let mut chw = Vec::with_capacity(3 * height * width);
    for c in 0..3 {
        chw.extend(
            gray.iter()
                .map(|&g| ((g + c as f32 * 3.0).min(255.0) / 255.0 - 0.5) / 0.5),
        );
    }
    chw
}

pub fn request(input: &str, datatype: Datatype, shape: &[u64], data: TensorData) -> InferRequest {
    InferRequest {
        id: None,
        parameters: None,
        inputs: vec![RequestInput {
            name: input.into(),
            shape: shape.to_vec(),
            datatype,
            parameters: None,
            data,
        }],
        outputs: None,
    }
}

/// One output from onnxruntime.
#[derive(Debug)]
pub struct Reference {
    pub shape: Vec<u64>,
    pub data: Vec<f64>,
}

/// Runs `model` in onnxruntime on one input; with `repeat` > 0 also times
/// that many runs (milliseconds each).
pub fn onnxruntime(
    python: &Path,
    model: &Path,
    input: &str,
    shape: &[u64],
    data: &TensorData,
    repeat: usize,
) -> (BTreeMap<String, Reference>, Vec<f64>) {
    let dtype = match data {
        TensorData::Int32(_) => "int32",
        TensorData::Fp32(_) => "float32",
        other => panic!("no numpy type here for {:?}", other.datatype()),
    };
    let req = serde_json::json!({
        "model": model,
        "inputs": { input: { "dtype": dtype, "shape": shape, "data": data } },
        "repeat": repeat,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnxruntime_ref.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    let body = serde_json::to_vec(&req).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&body)
        .expect("writing to onnxruntime_ref.py");
    let out = child.wait_with_output().expect("onnxruntime_ref.py");
    assert!(
        out.status.success(),
        "onnxruntime_ref.py failed: {}",
        out.status
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("onnxruntime_ref.py output");
    let outputs = v["outputs"]
        .as_object()
        .expect("outputs")
        .iter()
        .map(|(name, o)| {
            let shape = o["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            let data = o["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect();
            (name.clone(), Reference { shape, data })
        })
        .collect();
    let latencies = v["latencies_ms"]
        .as_array()
        .expect("latencies")
        .iter()
        .map(|x| x.as_f64().expect("ms"))
        .collect();
    (outputs, latencies)
}

/// The elements of an FP32 output as f64.
pub fn floats(data: &TensorData) -> Vec<f64> {
    match data {
        TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        other => panic!("expected FP32 output, got {:?}", other.datatype()),
    }
}

/// Index of the largest value in each row of `width` elements.
pub fn argmax_rows(data: &[f64], width: usize) -> Vec<usize> {
    data.chunks(width)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
