//! Latency and throughput of the three real models in tract (one thread),
//! next to onnxruntime (one thread: intra_op_num_threads=1) on the same
//! inputs, as a Markdown table.
//!
//!     scripts/fetch-models.sh
//!     cargo bench -p basalt-infer --bench models
//!
//! tract's time is `Model::infer` on a parsed request (input tensors built,
//! plan run, outputs typed), after one warm-up run that also makes the plan.
//! The two take turns, in ROUNDS rounds of runs/ROUNDS runs each, so that a
//! slow spell of a shared machine falls on both instead of on whichever
//! happened to run then; the ratio column is tract's p50 over
//! onnxruntime's.

#[path = "../tests/support/mod.rs"]
mod support;

use basalt_infer::v2::{Datatype, InferRequest, TensorData};
use basalt_infer::{LoadOptions, Model};
use std::time::Instant;
use support::*;

/// tract and onnxruntime take turns this many times per model.
const ROUNDS: usize = 5;

struct Stats {
    p50: f64,
    p99: f64,
    per_second: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        per_second: 1000.0 / mean,
    }
}

fn main() {
    let dir = models_dir("bench models").expect("models");
    let python = python("bench models").expect("onnxruntime venv");
    let magika = magika_samples(&dir).swap_remove(0).1;
    let cases: [(&str, &str, &[u64], TensorData, usize); 3] = [
        (
            "magika",
            "magika.onnx",
            &[1, 2048],
            TensorData::Int32(magika),
            200,
        ),
        (
            "PP-OCR cls",
            "ppocr-cls.onnx",
            &[1, 3, 48, 192],
            TensorData::Fp32(text_line_image(1, 48, 192)),
            1000,
        ),
        (
            "PP-OCR rec",
            "ppocr-rec.onnx",
            &[1, 3, 48, 320],
            TensorData::Fp32(text_line_image(1, 48, 320)),
            100,
        ),
    ];
    println!("| model | input | runs | tract p50 | tract p99 | tract runs/s | onnxruntime p50 | onnxruntime p99 | onnxruntime runs/s | tract/onnxruntime p50 |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (label, file, shape, data, runs) in cases {
        let path = dir.join(file);
        let model = Model::load(label, "1", &path, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let input = model.inputs()[0].name.clone();
        let datatype = if matches!(data, TensorData::Int32(_)) {
            Datatype::INT32
        } else {
            Datatype::FP32
        };
        let req: InferRequest = request(&input, datatype, shape, data.clone());
        model.infer(&req).expect("warm-up");
        let (mut tract, mut ort) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            tract.extend((0..runs / ROUNDS).map(|_| {
                let start = Instant::now();
                model.infer(&req).expect("runs");
                start.elapsed().as_secs_f64() * 1000.0
            }));
            ort.extend(onnxruntime(&python, &path, &input, shape, &data, runs / ROUNDS).1);
        }
        let (t, o) = (stats(tract), stats(ort));
        println!(
            "| {label} | {datatype} {shape:?} | {runs} | {:.2} ms | {:.2} ms | {:.1} | {:.2} ms | {:.2} ms | {:.1} | {:.2}x |",
            t.p50, t.p99, t.per_second, o.p50, o.p99, o.per_second, t.p50 / o.p50
        );
    }
}
