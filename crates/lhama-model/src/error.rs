//! Errors of the model layer. Every variant names the file and, where there is
//! one, the key or tensor that was wrong, so a user pointing lhama at a broken
//! model directory is told exactly what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // The OS error is part of the message and not a `source`, so that a
    // report of the whole chain does not print it twice.
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{} is not a model directory: it has no config.json (a model directory holds config.json, \
         tokenizer.json, tokenizer_config.json, and model.safetensors or model.safetensors.index.json \
         with its shards)",
        dir.display()
    )]
    NotAModelDir { dir: PathBuf },
    #[error("{}: not valid JSON: {message}", path.display())]
    Json { path: PathBuf, message: String },
    #[error("{}: key `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: unsupported model: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("tensor `{tensor}` is missing: looked in {searched}")]
    MissingTensor { tensor: String, searched: String },
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("{}: chat template: {message}", path.display())]
    TemplateSyntax { path: PathBuf, message: String },
    #[error("model `{model}`: {message}")]
    Source { model: String, message: String },
    #[error("{}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Reads a file and parses it as JSON, naming the file and the position of any
/// syntax error.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Deserializes a JSON value into `T`, reporting the dotted path of the key
/// whose value had the wrong type.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    value: serde_json::Value,
) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        ModelError::config(path, key, e.into_inner().to_string())
    })
}
