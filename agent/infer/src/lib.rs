//! Runs ONNX models with tract and answers KServe Open Inference Protocol v2
//! requests with them.
//!
//! [`Model::load`] reads and checks a `.onnx` file and, when the batch is
//! its only free dimension, prepares the optimised plan for batch 1. Each
//! further input shape a request needs (another batch size, up to
//! [`LoadOptions::batch_max`], or another size of a free dimension such as
//! an image's width) gets its own fixed-shape optimised plan, made on first
//! use and cached: symbolic dimensions fail to optimise on some real
//! exports, fixed ones do not. Plans are shared between threads; each run
//! makes its own state.
//!
//! Requests come in as JSON through [`v2::parse_request`], which types and
//! bounds the data; [`Model::infer`] checks the inputs against the model
//! before it runs anything.

mod error;
mod fuse;
mod model;
mod tensor;
pub mod v2;

pub use error::{InferError, LoadError};
pub use model::{optimise, LoadOptions, Model, TensorSpec};
