//! Shared server state: configuration, the engine once loaded, metrics, and
//! the admission queue's counters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use lhama_engine::EngineHandle;
use lhama_model::{GenerationConfig, Tokenizer};

use crate::connections::InFlight;
use crate::error::ApiError;
use crate::metrics::Metrics;
use lhama_engine::GuideCompiler;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The first is the canonical name; the rest are aliases.
    pub served_model_names: Vec<String>,
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    /// Sequences queued but not yet admitted by the engine at most.
    pub max_queue_requests: usize,
    /// Prompt tokens of those requests at most.
    pub max_queue_tokens: usize,
    pub cors_origins: Vec<String>,
    /// The whole request body must arrive within this time (408 beyond).
    pub body_read_timeout: Duration,
    /// Fold system/developer messages into the first user turn instead of
    /// passing them to the chat template.
    pub system_prompt_merge: bool,
    /// Serve the chat page at `/`.
    pub chat_ui: bool,
}

/// What exists once the model is loaded.
pub struct Loaded {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub generation: GenerationConfig,
    pub vocab_size: usize,
    pub max_model_len: usize,
    pub backend: &'static str,
    /// Compiles structured-output grammars for this model's vocabulary, or
    /// why that is not possible.
    pub guides: Result<Arc<GuideCompiler>, String>,
}

pub struct Inner {
    pub config: ServerConfig,
    pub loaded: OnceLock<Loaded>,
    pub load_error: OnceLock<String>,
    pub metrics: Metrics,
    pub shutting_down: AtomicBool,
    /// Requests in flight (counted by `connections`), for the drain.
    pub in_flight: Arc<InFlight>,
    /// Set when the shutdown grace period is over: running streams end with
    /// an error event, collected responses with a 503.
    pub cut: watch::Sender<bool>,
    /// CPU-heavy request work (JSON parsing, templates, tokenization) runs on
    /// the blocking pool, this many at a time: one per core but one (at
    /// least one), so a core is left to the async workers and the engine.
    heavy: Arc<Semaphore>,
    pub created: u64,
    queued_requests: AtomicUsize,
    queued_tokens: AtomicUsize,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl AppState {
    pub fn new(config: ServerConfig) -> Self {
        let metrics = Metrics::new(
            config
                .served_model_names
                .first()
                .map_or("lhama", String::as_str),
        );
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self(Arc::new(Inner {
            config,
            loaded: OnceLock::new(),
            load_error: OnceLock::new(),
            metrics,
            shutting_down: AtomicBool::new(false),
            in_flight: Arc::new(InFlight::default()),
            cut: watch::Sender::new(false),
            heavy: Arc::new(Semaphore::new(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1))
                    .max(1),
            )),
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

    /// Runs CPU-heavy work for a request on the blocking pool, so the async
    /// workers keep serving everyone else; at most cores − 1 tasks at once.
    pub async fn heavy<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self
            .0
            .heavy
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("The server is shutting down."))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ApiError::internal(format!("request processing failed: {e}")))
    }

    /// Resolves once the shutdown grace period is over.
    pub async fn cut_off(&self) {
        let mut rx = self.0.cut.subscribe();
        let _ = rx.wait_for(|cut| *cut).await;
    }

    /// `cut_off` as a future that owns what it needs (for spawned tasks).
    pub fn cut_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let state = self.clone();
        async move { state.cut_off().await }
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

    /// Refuses with 400 a request that no queue state could ever admit:
    /// more sequences or prompt tokens than the queue holds when empty.
    pub fn check_admissible(&self, sequences: usize, tokens: usize) -> Result<(), ApiError> {
        let cfg = &self.0.config;
        if sequences > cfg.max_queue_requests {
            return Err(ApiError::bad_request(
                format!(
                    "This request asks for {sequences} sequences (prompts × n), more than the server queues at once ({}).",
                    cfg.max_queue_requests
                ),
                Some("n"),
            ));
        }
        if tokens > cfg.max_queue_tokens {
            return Err(ApiError::bad_request(
                format!(
                    "This request's prompts come to {tokens} tokens (prompts × n), more than the server queues at once ({}).",
                    cfg.max_queue_tokens
                ),
                Some("prompt"),
            ));
        }
        Ok(())
    }

    /// Takes places in the admission queue for every sequence of a request
    /// at once (one per entry, its prompt tokens), or none: 429 when the
    /// queue cannot take them all now.
    pub fn enqueue_all(&self, prompt_tokens: &[usize]) -> Result<Vec<QueueSlot>, ApiError> {
        let cfg = &self.0.config;
        let total: usize = prompt_tokens.iter().sum();
        self.check_admissible(prompt_tokens.len(), total)?;
        let slots: Vec<QueueSlot> = prompt_tokens
            .iter()
            .map(|&tokens| {
                self.0.queued_requests.fetch_add(1, Ordering::SeqCst);
                self.0.queued_tokens.fetch_add(tokens, Ordering::SeqCst);
                QueueSlot {
                    state: self.clone(),
                    tokens,
                    released: false,
                }
            })
            .collect();
        // On refusal, dropping `slots` gives every place back.
        let requests = self.0.queued_requests.load(Ordering::SeqCst);
        let queued = self.0.queued_tokens.load(Ordering::SeqCst);
        if requests > cfg.max_queue_requests {
            return Err(ApiError::queue_full(format!(
                "The server is busy: {} requests are already waiting (limit {}). Retry later.",
                requests - slots.len(),
                cfg.max_queue_requests
            )));
        }
        if queued > cfg.max_queue_tokens {
            return Err(ApiError::queue_full(format!(
                "The server is busy: {} prompt tokens are already waiting (limit {}). Retry later.",
                queued - total,
                cfg.max_queue_tokens
            )));
        }
        Ok(slots)
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
