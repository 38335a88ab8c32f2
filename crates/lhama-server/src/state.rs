//! Shared server state: configuration, the engine once loaded, metrics, and
//! the admission queue's counters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use lhama_engine::EngineHandle;
use lhama_model::{GenerationConfig, Tokenizer};

use crate::error::ApiError;
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The first is the canonical name; the rest are aliases.
    pub served_model_names: Vec<String>,
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    /// Requests admitted but not yet started (no first token) at most.
    pub max_queue_requests: usize,
    /// Prompt tokens of those requests at most.
    pub max_queue_tokens: usize,
    pub cors_origins: Vec<String>,
}

/// What exists once the model is loaded.
pub struct Loaded {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub generation: GenerationConfig,
    pub vocab_size: usize,
    pub max_model_len: usize,
    pub backend: &'static str,
}

pub struct Inner {
    pub config: ServerConfig,
    pub loaded: OnceLock<Loaded>,
    pub load_error: OnceLock<String>,
    pub metrics: Metrics,
    pub shutting_down: AtomicBool,
    pub created: u64,
    queued_requests: AtomicUsize,
    queued_tokens: AtomicUsize,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl AppState {
    pub fn new(config: ServerConfig) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self(Arc::new(Inner {
            config,
            loaded: OnceLock::new(),
            load_error: OnceLock::new(),
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            created,
            queued_requests: AtomicUsize::new(0),
            queued_tokens: AtomicUsize::new(0),
        }))
    }

    /// The loaded model, or 503 while loading, after a failed load, after
    /// the engine died, and while shutting down.
    pub fn ready(&self) -> Result<&Loaded, ApiError> {
        if self.0.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("The server is shutting down."));
        }
        match self.0.loaded.get() {
            Some(l) if l.engine.stats.alive.load(Ordering::SeqCst) => Ok(l),
            Some(_) => Err(ApiError::unavailable("The engine has stopped.")),
            None => match self.0.load_error.get() {
                Some(e) => Err(ApiError::unavailable(format!(
                    "The model failed to load: {e}"
                ))),
                None => Err(ApiError::unavailable("The model is still loading.")),
            },
        }
    }

    /// Checks the requested model name against the served names.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.0.config.served_model_names.iter().any(|n| n == model) {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model))
        }
    }

    /// The loaded model for a request naming `model`: `ready` and `check_model` together.
    pub fn serving(&self, model: &str) -> Result<&Loaded, ApiError> {
        let loaded = self.ready()?;
        self.check_model(model)?;
        Ok(loaded)
    }

    pub fn model_name(&self) -> &str {
        self.0
            .config
            .served_model_names
            .first()
            .map_or("lhama", String::as_str)
    }

    /// Takes a place in the admission queue for `tokens` prompt tokens, or
    /// refuses with 429 when the queue is full.
    pub fn enqueue(&self, tokens: usize) -> Result<QueueSlot, ApiError> {
        let cfg = &self.0.config;
        let requests = self.0.queued_requests.fetch_add(1, Ordering::SeqCst) + 1;
        let queued = self.0.queued_tokens.fetch_add(tokens, Ordering::SeqCst) + tokens;
        let slot = QueueSlot {
            state: self.clone(),
            tokens,
            released: false,
        };
        if requests > cfg.max_queue_requests {
            return Err(ApiError::queue_full(format!(
                "The server is busy: {} requests are already waiting (limit {}). Retry later.",
                requests - 1,
                cfg.max_queue_requests
            )));
        }
        if queued > cfg.max_queue_tokens {
            return Err(ApiError::queue_full(format!(
                "The server is busy: {} prompt tokens are already waiting (limit {}). Retry later.",
                queued - tokens,
                cfg.max_queue_tokens
            )));
        }
        Ok(slot)
    }
}

/// A place in the admission queue, given back when the request starts
/// generating (or ends, or is dropped).
pub struct QueueSlot {
    state: AppState,
    tokens: usize,
    released: bool,
}

impl QueueSlot {
    pub fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.state.0.queued_requests.fetch_sub(1, Ordering::SeqCst);
            self.state
                .0
                .queued_tokens
                .fetch_sub(self.tokens, Ordering::SeqCst);
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.release();
    }
}
