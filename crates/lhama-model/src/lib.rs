//! lhama's model layer: reading Llama checkpoints (AWQ or plain) in Hugging
//! Face layout, the tokenizer and chat template, synthetic checkpoints of the
//! same format, the `Backend` seam both backends implement (lhama-cpu,
//! lhama-cuda), the sampling definition and the rotary tables they share.

pub mod awq;
pub mod backend;
pub mod config;
pub mod error;
pub mod golden;
pub mod model;
pub mod rng;
pub mod rope;
pub mod safetensors_io;
pub mod sampling;
pub mod source;
pub mod synth;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use backend::{
    Backend, BackendError, ForwardBatch, KvGeometry, MaskSource, SampledStep, SeqSlice,
};
pub use config::{GenerationConfig, LlamaConfig};
pub use error::{ModelError, Result};
pub use model::ModelFiles;
pub use sampling::{DrawParams, RowSampling};
pub use template::{ChatMessage, ChatTemplate, TemplateError};
pub use tokenizer::Tokenizer;
