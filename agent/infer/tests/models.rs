//! The three real models (magika, PP-OCR direction classifier, PP-OCR
//! recogniser) in tract against onnxruntime on the same inputs, and batched
//! runs against single ones. The models and the onnxruntime venv come from
//! scripts/fetch-models.sh; without them these tests fail, unless
//! BASALT_SKIP_ONNXRUNTIME=1.
//!
//! Tolerance: every output element within 1e-4 (absolute) of onnxruntime's,
//! and the same argmax in every row (per file for magika, per image for the
//! classifier, per time step for the recogniser).

mod support;

use basalt_infer::v2::{Datatype, InferRequest, TensorData};
use basalt_infer::{InferError, LoadOptions, Model};
use std::path::Path;
use support::*;

const TOLERANCE: f64 = 1e-4;
/// Batched and single runs of the same rows may use different kernels.
const BATCH_TOLERANCE: f64 = 1e-5;

fn load(dir: &Path, file: &str, batch_max: usize) -> Model {
    Model::load(file, "1", &dir.join(file), &LoadOptions { batch_max })
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `req` in tract and its one input in onnxruntime, and holds every
/// output to the tolerance and the same argmax per row of `row` elements.
fn compare(python: &Path, model: &Model, path: &Path, req: &InferRequest, row: usize, label: &str) {
    let resp = model.infer(req).unwrap_or_else(|e| panic!("{label}: {e}"));
    let input = &req.inputs[0];
    let (reference, _) = onnxruntime(python, path, &input.name, &input.shape, &input.data, 0);
    assert_eq!(resp.outputs.len(), reference.len(), "{label}: output count");
    for out in &resp.outputs {
        let want = &reference[&out.name];
        assert_eq!(out.shape, want.shape, "{label}: shape of {}", out.name);
        let got = floats(&out.data);
        let diff = max_abs_diff(&got, &want.data);
        eprintln!("{label}: {} max abs diff {diff:.2e}", out.name);
        assert!(
            diff <= TOLERANCE,
            "{label}: {} differs from onnxruntime by {diff}",
            out.name
        );
        assert_eq!(
            argmax_rows(&got, row),
            argmax_rows(&want.data, row),
            "{label}: argmax of {}",
            out.name
        );
    }
}

#[test]
fn magika_matches_onnxruntime() {
    let Some(dir) = models_dir("magika_matches_onnxruntime") else {
        return;
    };
    let Some(python) = python("magika_matches_onnxruntime") else {
        return;
    };
    let model = load(&dir, "magika.onnx", 1);
    for (label, features) in magika_samples(&dir) {
        let req = request(
            "bytes",
            Datatype::INT32,
            &[1, 2048],
            TensorData::Int32(features),
        );
        compare(&python, &model, &dir.join("magika.onnx"), &req, 214, &label);
    }
}

#[test]
fn ppocr_cls_matches_onnxruntime() {
    let Some(dir) = models_dir("ppocr_cls_matches_onnxruntime") else {
        return;
    };
    let Some(python) = python("ppocr_cls_matches_onnxruntime") else {
        return;
    };
    let model = load(&dir, "ppocr-cls.onnx", 1);
    for seed in 1..=3 {
        let image = text_line_image(seed, 48, 192);
        let req = request(
            "x",
            Datatype::FP32,
            &[1, 3, 48, 192],
            TensorData::Fp32(image),
        );
        compare(
            &python,
            &model,
            &dir.join("ppocr-cls.onnx"),
            &req,
            2,
            &format!("image {seed}"),
        );
    }
}

#[test]
fn ppocr_rec_matches_onnxruntime() {
    let Some(dir) = models_dir("ppocr_rec_matches_onnxruntime") else {
        return;
    };
    let Some(python) = python("ppocr_rec_matches_onnxruntime") else {
        return;
    };
    let model = load(&dir, "ppocr-rec.onnx", 1);
    for (seed, width) in [(1, 320), (2, 160)] {
        let image = text_line_image(seed, 48, width);
        let req = request(
            "x",
            Datatype::FP32,
            &[1, 3, 48, width as u64],
            TensorData::Fp32(image),
        );
        compare(
            &python,
            &model,
            &dir.join("ppocr-rec.onnx"),
            &req,
            6625,
            &format!("image {seed}, width {width}"),
        );
    }
}

#[test]
fn real_models_describe_themselves() {
    let Some(dir) = models_dir("real_models_describe_themselves") else {
        return;
    };
    let magika = load(&dir, "magika.onnx", 8);
    let meta = serde_json::to_value(magika.metadata()).expect("json");
    assert_eq!(
        meta,
        serde_json::json!({
            "name": "magika.onnx", "versions": ["1"], "platform": "onnx",
            "inputs": [{"name": "bytes", "datatype": "INT32", "shape": [-1, 2048]}],
            "outputs": [{"name": "target_label", "datatype": "FP32", "shape": [-1, 214]}],
        })
    );
    assert_eq!(magika.batch_max(), 8);
    let hex: String = magika.sha256().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"
    );

    let rec = load(&dir, "ppocr-rec.onnx", 4);
    // The file leaves the height free too (it is 48 in practice).
    assert_eq!(rec.inputs()[0].shape, [-1, 3, -1, -1]);
    assert_eq!(rec.outputs()[0].shape, [-1, -1, 6625]);
    assert_eq!(rec.batch_max(), 4);
    let cls = load(&dir, "ppocr-cls.onnx", 1);
    assert_eq!(cls.inputs()[0].shape, [-1, 3, -1, -1]);
    assert_eq!(cls.outputs()[0].datatype, Datatype::FP32);
    assert_eq!(cls.batch_max(), 1);
}

/// Rows of a batched run, split back per request, against single runs.
fn assert_batch_equals_singles(model: &Model, reqs: &[InferRequest], row: usize) {
    let refs: Vec<&InferRequest> = reqs.iter().collect();
    let batched = model.infer_batch(&refs);
    assert_eq!(batched.len(), reqs.len());
    for (i, (req, got)) in reqs.iter().zip(batched).enumerate() {
        let got = got.unwrap_or_else(|e| panic!("request {i}: {e}"));
        let single = model
            .infer(req)
            .unwrap_or_else(|e| panic!("request {i} alone: {e}"));
        assert_eq!(got.outputs.len(), single.outputs.len());
        for (g, s) in got.outputs.iter().zip(&single.outputs) {
            assert_eq!(g.shape, s.shape, "request {i}: shape of {}", g.name);
            let (g, s) = (floats(&g.data), floats(&s.data));
            let diff = max_abs_diff(&g, &s);
            assert!(
                diff <= BATCH_TOLERANCE,
                "request {i}: batched differs from single by {diff}"
            );
            assert_eq!(
                argmax_rows(&g, row),
                argmax_rows(&s, row),
                "request {i}: argmax"
            );
        }
    }
}

#[test]
fn magika_batch_rows_equal_single_runs() {
    let Some(dir) = models_dir("magika_batch_rows_equal_single_runs") else {
        return;
    };
    let model = load(&dir, "magika.onnx", 4);
    let samples = magika_samples(&dir);
    let one = |i: usize| {
        request(
            "bytes",
            Datatype::INT32,
            &[1, 2048],
            TensorData::Int32(samples[i].1.clone()),
        )
    };
    let two = request(
        "bytes",
        Datatype::INT32,
        &[2, 2048],
        TensorData::Int32([samples[1].1.clone(), samples[2].1.clone()].concat()),
    );
    // 1 + 2 + 1 rows fill batch 4; the fifth row goes in a second run.
    let reqs = vec![one(0), two, one(3), one(4)];
    assert_batch_equals_singles(&model, &reqs, 214);

    // A bad request in the batch gets its own error and spoils no other.
    let mut bad = one(5);
    bad.inputs[0].shape = vec![1, 1024];
    let out = model.infer_batch(&[&reqs[0], &bad, &reqs[2]]);
    assert!(out[0].is_ok() && out[2].is_ok());
    match &out[1] {
        Err(InferError::BadInput { input, message }) => {
            assert_eq!(input, "bytes");
            assert_eq!(
                message,
                "shape [1, 1024] does not fit the model's [-1, 2048] (batch 1 to 4)"
            );
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
}

#[test]
fn ppocr_cls_batch_rows_equal_single_runs() {
    let Some(dir) = models_dir("ppocr_cls_batch_rows_equal_single_runs") else {
        return;
    };
    let model = load(&dir, "ppocr-cls.onnx", 3);
    let reqs: Vec<InferRequest> = (1..=3)
        .map(|seed| {
            request(
                "x",
                Datatype::FP32,
                &[1, 3, 48, 192],
                TensorData::Fp32(text_line_image(seed, 48, 192)),
            )
        })
        .collect();
    assert_batch_equals_singles(&model, &reqs, 2);
}
