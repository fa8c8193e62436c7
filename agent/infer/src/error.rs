use std::path::PathBuf;

/// Why a request could not be answered. [`InferError::status`] is the HTTP
/// status the server gives it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// One input is wrong: unknown, missing, mistyped, misshapen or out of
    /// range.
    #[error("input {input:?}: {message}")]
    BadInput { input: String, message: String },
    /// The request as a whole is wrong: malformed JSON, an unknown output,
    /// too large.
    #[error("{0}")]
    BadRequest(String),
    /// The model failed to run a request that passed every check.
    #[error("{0}")]
    Internal(String),
}

impl InferError {
    pub fn status(&self) -> u16 {
        match self {
            InferError::BadInput { .. } | InferError::BadRequest(_) => 400,
            InferError::Internal(_) => 500,
        }
    }
}

/// Why a model file could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read the model: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model: {message}")]
    Parse { path: PathBuf, message: String },
    /// An input or output this crate cannot serve (its type or rank).
    #[error("{path}: {tensor:?}: {message}")]
    Unsupported {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// tract could not type, optimise or plan the model for these shapes.
    #[error("{path}: cannot prepare the model for input shapes {shapes}: {message}")]
    Plan {
        path: PathBuf,
        shapes: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Options { path: PathBuf, message: String },
}
