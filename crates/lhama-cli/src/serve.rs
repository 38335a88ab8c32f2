//! `lhama serve`: configuration (flags, each with an env override, over an
//! optional TOML file, over defaults), model loading in the background, and
//! the HTTP server with graceful shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use lhama_engine::scheduler::SchedulerConfig;
use lhama_engine::{EngineConfig, spawn};
use lhama_model::ModelFiles;
use lhama_server::connections::{ConnLimits, accept_loop};
use lhama_server::{AppState, Loaded, ServerConfig};
use serde::Deserialize;

use crate::load::{BackendKind, BackendLimits, PrecisionArg, load_model, make_backend};

/// What the server does with system (and developer) messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemPrompt {
    /// Pass them to the chat template, which may refuse them.
    Reject,
    /// Fold them into the first user turn.
    Merge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting; flags and env vars override the TOML file (`--config`).
#[derive(Args, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (see config/lhama.toml).
    #[arg(long, env = "LHAMA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "LHAMA_HOST")]
    pub host: Option<String>,
    /// Port to listen on (0: any free port, printed in the log) [default: 8000].
    #[arg(long, env = "LHAMA_PORT")]
    pub port: Option<u16>,
    /// Model directory or Hugging Face repo id [default: nicholasKluge/TeenyTinyLlama-460m-Chat-awq].
    #[arg(long, env = "LHAMA_MODEL")]
    pub model: Option<String>,
    /// Names clients may use for the model (comma-separated; the first is canonical) [default: the value of --model].
    #[arg(long, env = "LHAMA_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_name: Option<Vec<String>>,
    /// Longest prompt + completion (default: max_position_embeddings).
    #[arg(long, env = "LHAMA_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// Sequences in the running batch at most [default: 64].
    #[arg(long, env = "LHAMA_MAX_NUM_SEQS")]
    pub max_num_seqs: Option<usize>,
    /// Tokens one engine step processes at most, decode tokens and prompt chunks together [default: 2048].
    #[arg(long, env = "LHAMA_MAX_NUM_BATCHED_TOKENS")]
    pub max_num_batched_tokens: Option<usize>,
    /// KV cache size in tokens (default: CPU 32768; CUDA what
    /// --gpu-memory-utilization leaves after weights and buffers).
    #[arg(long, env = "LHAMA_KV_CACHE_TOKENS")]
    pub kv_cache_tokens: Option<usize>,
    /// Automatic prefix caching: requests whose prompt starts like an earlier
    /// one reuse its KV blocks instead of computing them again [default: true].
    #[arg(long, env = "LHAMA_PREFIX_CACHING", action = clap::ArgAction::Set)]
    pub prefix_caching: Option<bool>,
    /// Fraction of the GPU's memory the CUDA backend may take [default: 0.9].
    #[arg(long, env = "LHAMA_GPU_MEMORY_UTILIZATION")]
    pub gpu_memory_utilization: Option<f64>,
    /// Sequences (prompts x n) waiting for their first token at most; more get 429 [default: 256].
    #[arg(long, env = "LHAMA_MAX_QUEUE_REQUESTS")]
    pub max_queue_requests: Option<usize>,
    /// Prompt tokens of the waiting sequences at most; more get 429 [default: 1048576].
    #[arg(long, env = "LHAMA_MAX_QUEUE_TOKENS")]
    pub max_queue_tokens: Option<usize>,
    /// Largest request body in bytes; larger ones get 413 [default: 8388608].
    #[arg(long, env = "LHAMA_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Accepted API keys (comma-separated); none means no authentication.
    #[arg(long, env = "LHAMA_API_KEY", value_delimiter = ',')]
    pub api_key: Option<Vec<String>>,
    /// File with one API key per line.
    #[arg(long, env = "LHAMA_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Allowed CORS origins (comma-separated, `*` for any); none disables CORS.
    #[arg(long, env = "LHAMA_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// auto: CUDA when a usable GPU is found, else the CPU (the reason is logged) [default: auto].
    #[arg(long, env = "LHAMA_BACKEND", value_enum)]
    pub backend: Option<BackendKind>,
    /// Numerics: fast (CUDA: f16 KV cache and tensor-core inputs, f32
    /// accumulation; CPU: integer dot products for decode) or exact (the f32
    /// datapath) [default: fast].
    #[arg(long, env = "LHAMA_PRECISION", value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Log lines as text or JSON, on stderr [default: text].
    #[arg(long, env = "LHAMA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// A Jinja chat template file used instead of the model's own
    /// (tokenizer_config.json's chat_template).
    #[arg(long, env = "LHAMA_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// System messages: `reject` leaves them to the chat template (this
    /// model's raises, and the request gets its message as a 400); `merge`
    /// folds them into the first user turn [default: reject].
    #[arg(long, env = "LHAMA_SYSTEM_PROMPT", value_enum)]
    pub system_prompt: Option<SystemPrompt>,
    /// The chat page at `/` (embedded in the binary) [default: true].
    #[arg(long, env = "LHAMA_CHAT_UI", action = clap::ArgAction::Set)]
    pub chat_ui: Option<bool>,
    /// Seconds running requests get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "LHAMA_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Open connections at most; one more is answered 503 and closed [default: 512].
    #[arg(long, env = "LHAMA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request head once it has begun [default: 10].
    #[arg(long, env = "LHAMA_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a whole request body has to arrive in (408 beyond) [default: 60].
    #[arg(long, env = "LHAMA_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Seconds an idle keep-alive connection stays open [default: 30].
    #[arg(long, env = "LHAMA_KEEP_ALIVE_TIMEOUT_SECS")]
    pub keep_alive_timeout_secs: Option<u64>,
}

/// Settings after flags, env, file and defaults are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub model: String,
    pub served_model_names: Vec<String>,
    pub max_model_len: Option<usize>,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub kv_cache_tokens: Option<usize>,
    pub prefix_caching: bool,
    pub gpu_memory_utilization: f64,
    pub server: ServerConfig,
    pub backend: BackendKind,
    pub precision: PrecisionArg,
    pub log_format: LogFormat,
    /// The chat template file's path and its source, compiled once at start-up.
    pub chat_template: Option<(PathBuf, String)>,
    pub shutdown_grace: Duration,
    pub connections: ConnLimits,
}

fn read_file_config(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl ServeArgs {
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => read_file_config(p)?,
            None => ServeArgs::default(),
        };
        macro_rules! pick {
            ($f:ident, $default:expr) => {
                self.$f
                    .clone()
                    .or(file.$f.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        let model: String = pick!(model, lhama_model::source::DEFAULT_MODEL.to_string());
        let mut api_keys: Vec<String> = pick!(api_key, Vec::new());
        anyhow::ensure!(
            api_keys.iter().all(|k| !k.trim().is_empty()),
            "--api-key (LHAMA_API_KEY, or `api-key` in the config file) contains an empty key"
        );
        if let Some(path) = self.api_key_file.clone().or(file.api_key_file.clone()) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--api-key-file {}: cannot read", path.display()))?;
            let before = api_keys.len();
            api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
            anyhow::ensure!(
                api_keys.len() > before,
                "--api-key-file {}: no key in the file (one key per line)",
                path.display()
            );
        }
        let cors_origins: Vec<String> = pick!(cors_origins, Vec::new());
        for origin in &cors_origins {
            lhama_server::check_cors_origin(origin)
                .map_err(|e| anyhow::anyhow!("--cors-origins (LHAMA_CORS_ORIGINS): {e}"))?;
        }
        let served: Vec<String> = pick!(served_model_name, vec![model.clone()]);
        anyhow::ensure!(
            !served.is_empty() && served.iter().all(|s| !s.is_empty()),
            "--served-model-name must not be empty"
        );
        let positive = |name: &str, v: usize| -> anyhow::Result<usize> {
            anyhow::ensure!(v > 0, "--{name} must be greater than 0");
            Ok(v)
        };
        let seconds = |name: &str, v: u64| -> anyhow::Result<Duration> {
            anyhow::ensure!(v > 0, "--{name} must be greater than 0");
            Ok(Duration::from_secs(v))
        };
        Ok(Settings {
            host: pick!(host, "0.0.0.0".to_string()),
            port: pick!(port, 8000),
            served_model_names: served,
            max_model_len: self
                .max_model_len
                .or(file.max_model_len)
                .map(|v| positive("max-model-len", v))
                .transpose()?,
            max_num_seqs: positive("max-num-seqs", pick!(max_num_seqs, 64))?,
            max_num_batched_tokens: positive(
                "max-num-batched-tokens",
                pick!(max_num_batched_tokens, 2048),
            )?,
            kv_cache_tokens: self
                .kv_cache_tokens
                .or(file.kv_cache_tokens)
                .map(|v| positive("kv-cache-tokens", v))
                .transpose()?,
            prefix_caching: pick!(prefix_caching, true),
            gpu_memory_utilization: {
                let u = pick!(gpu_memory_utilization, 0.9);
                anyhow::ensure!(
                    u > 0.0 && u <= 1.0,
                    "--gpu-memory-utilization must be in (0, 1], got {u}"
                );
                u
            },
            server: ServerConfig {
                served_model_names: Vec::new(), // set below
                api_keys,
                max_body_bytes: positive("max-body-bytes", pick!(max_body_bytes, 8 << 20))?,
                max_queue_requests: positive("max-queue-requests", pick!(max_queue_requests, 256))?,
                max_queue_tokens: positive("max-queue-tokens", pick!(max_queue_tokens, 1 << 20))?,
                cors_origins,
                system_prompt_merge: pick!(system_prompt, SystemPrompt::Reject)
                    == SystemPrompt::Merge,
                chat_ui: pick!(chat_ui, true),
                body_read_timeout: seconds(
                    "body-read-timeout-secs",
                    pick!(body_read_timeout_secs, 60),
                )?,
            },
            connections: ConnLimits {
                max_connections: positive("max-connections", pick!(max_connections, 512))?,
                header_read_timeout: seconds(
                    "header-read-timeout-secs",
                    pick!(header_read_timeout_secs, 10),
                )?,
                keep_alive_timeout: seconds(
                    "keep-alive-timeout-secs",
                    pick!(keep_alive_timeout_secs, 30),
                )?,
            },
            backend: pick!(backend, BackendKind::Auto),
            precision: pick!(precision, PrecisionArg::Fast),
            log_format: pick!(log_format, LogFormat::Text),
            chat_template: match self.chat_template.clone().or(file.chat_template.clone()) {
                None => None,
                Some(path) => {
                    let source = std::fs::read_to_string(&path).with_context(|| {
                        format!("--chat-template {}: cannot read", path.display())
                    })?;
                    lhama_model::ChatTemplate::new(&source)
                        .map_err(|e| anyhow::anyhow!("--chat-template {}: {e}", path.display()))?;
                    Some((path, source))
                }
            },
            shutdown_grace: Duration::from_secs(pick!(shutdown_grace_secs, 30)),
            model,
        })
        .map(|mut s| {
            s.server.served_model_names = s.served_model_names.clone();
            s
        })
    }
}

/// `LHAMA_TEST_STEP_DELAY_MS`: a pause after every engine step, for tests
/// that need a request to stay running or queued (not a setting).
fn test_step_delay() -> anyhow::Result<Option<Duration>> {
    match std::env::var("LHAMA_TEST_STEP_DELAY_MS") {
        Ok(v) => {
            let ms: u64 = v.parse().with_context(|| {
                format!("LHAMA_TEST_STEP_DELAY_MS={v:?} is not a number of milliseconds")
            })?;
            Ok(Some(Duration::from_millis(ms)))
        }
        Err(_) => Ok(None),
    }
}

/// Loads the model and starts the engine; runs on a blocking thread.
fn load(settings: &Settings) -> anyhow::Result<Loaded> {
    let files = load_model(&settings.model)?;
    let eos_ids = files.eos_token_ids();
    let guides = guide_compiler(
        &files.dir.join("tokenizer.json"),
        files.config.vocab_size,
        &eos_ids,
    );
    let ModelFiles {
        config,
        mut tokenizer,
        weights,
        generation,
        ..
    } = files;
    if let Some((path, source)) = &settings.chat_template {
        let template = lhama_model::ChatTemplate::new(source)
            .map_err(|e| anyhow::anyhow!("--chat-template {}: {e}", path.display()))?;
        tokenizer.set_chat_template(template);
        tracing::info!(file = %path.display(), "chat template from --chat-template");
    }
    let max_model_len = settings
        .max_model_len
        .unwrap_or(config.max_position_embeddings);
    anyhow::ensure!(
        max_model_len <= config.max_position_embeddings,
        "--max-model-len {max_model_len} is over the model's max_position_embeddings ({})",
        config.max_position_embeddings
    );
    let limits = BackendLimits {
        kv_cache_tokens: settings.kv_cache_tokens,
        max_batch_tokens: settings.max_num_batched_tokens,
        max_seqs: settings.max_num_seqs,
        gpu_memory_utilization: settings.gpu_memory_utilization,
        precision: settings.precision,
    };
    let backend = make_backend(settings.backend, &config, weights, limits)?;
    let kv = backend.kv_geometry();
    anyhow::ensure!(
        kv.num_blocks * kv.block_size >= max_model_len,
        "the KV cache ({} tokens) cannot hold one sequence of --max-model-len {max_model_len} tokens",
        kv.num_blocks * kv.block_size
    );
    let backend_name = backend.name();
    let vocab_size = config.vocab_size;
    let tokenizer = Arc::new(tokenizer);
    let engine = spawn(
        backend,
        tokenizer.clone(),
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: settings.max_num_seqs,
                max_num_batched_tokens: settings.max_num_batched_tokens,
                num_blocks: kv.num_blocks,
                block_size: kv.block_size,
                prefix_caching: settings.prefix_caching,
            },
            max_model_len,
            eos_ids,
            step_delay: test_step_delay()?,
        },
    );
    Ok(Loaded {
        engine,
        tokenizer,
        generation,
        vocab_size,
        max_model_len,
        backend: backend_name,
        guides,
    })
}

/// The structured-output compiler for the model's vocabulary. A tokenizer
/// llguidance cannot read leaves the server serving, with structured-output
/// requests refused (400) for the reason logged here.
fn guide_compiler(
    tokenizer_json: &std::path::Path,
    vocab_size: usize,
    eos_ids: &[u32],
) -> Result<Arc<lhama_engine::GuideCompiler>, String> {
    let made = std::fs::read(tokenizer_json)
        .map_err(|e| format!("{}: {e}", tokenizer_json.display()))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", tokenizer_json.display()))
        })
        .and_then(|json| lhama_engine::GuideCompiler::new(&json, vocab_size, eos_ids))
        .map(Arc::new);
    if let Err(e) = &made {
        tracing::warn!(error = %e, "structured output is unavailable for this model");
    }
    made
}

pub fn run(settings: Settings) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("lhama-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(settings));
    // Blocking work still running (a model load, a tokenization) must not
    // hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let addr = format!("{}:{}", settings.host, settings.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let state = AppState::new(settings.server.clone());
    let app = lhama_server::router(state.clone());
    let load_state = state.clone();
    let load_settings = settings.clone();
    // A failed load ends the process with an error (so Docker, systemd and
    // Kubernetes restart it), after /health has said why meanwhile.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::task::spawn_blocking(move || match load(&load_settings) {
        Ok(loaded) => {
            // Published first, so that /health answers 200 once the line below is out.
            let (backend, max_model_len) = (loaded.backend, loaded.max_model_len);
            let scheduler = loaded.engine.config.scheduler;
            let _ = load_state.0.loaded.set(loaded);
            tracing::info!(
                address = %local,
                model = %load_settings.model,
                served_as = ?load_settings.served_model_names,
                backend,
                max_model_len,
                max_num_seqs = load_settings.max_num_seqs,
                max_num_batched_tokens = load_settings.max_num_batched_tokens,
                kv_cache_tokens = scheduler.num_blocks * scheduler.block_size,
                prefix_caching = scheduler.prefix_caching,
                max_queue_requests = load_settings.server.max_queue_requests,
                max_connections = load_settings.connections.max_connections,
                api_keys = load_settings.server.api_keys.len(),
                "lhama serving"
            );
        }
        Err(e) => {
            let _ = load_state.0.load_error.set(format!("{e:#}"));
            tracing::error!(error = %format!("{e:#}"), "model failed to load");
            let _ = failed_tx.send(format!("{e:#}"));
        }
    });
    tracing::info!(address = %local, "listening (model loading)");
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(accept_loop(
        listener,
        app,
        state.clone(),
        settings.connections,
        closing_rx,
    ));
    tokio::select! {
        () = shutdown_signal() => {}
        Ok(error) = failed_rx => anyhow::bail!("the model failed to load: {error}"),
    }
    drain(&state, settings.shutdown_grace, &closing_tx).await;
    Ok(())
}

/// Graceful shutdown. New requests get 503 (and `Connection: close`) while
/// the ones in flight finish; idle connections and ones with a half-sent
/// request are closed at once. When nothing is in flight any more, or the
/// grace period is over, the process exits; streams still running then end
/// with an SSE error event, collected requests with a 503.
async fn drain(state: &AppState, grace: Duration, closing: &tokio::sync::watch::Sender<bool>) {
    let in_flight = state.0.in_flight.clone();
    tracing::info!(
        in_flight = in_flight.get(),
        grace_secs = grace.as_secs(),
        "shutting down: new requests get 503; letting running ones finish"
    );
    state.0.shutting_down.store(true, Ordering::SeqCst);
    let _ = closing.send(true);
    if tokio::time::timeout(grace, in_flight.idle()).await.is_ok() {
        tracing::info!("every request finished; exiting");
        return;
    }
    tracing::warn!(
        in_flight = in_flight.get(),
        closing_connections = in_flight.closing(),
        "grace period over: cutting the requests still running"
    );
    let _ = state.0.cut.send(true);
    // Time for the cut streams to write their error event.
    if tokio::time::timeout(Duration::from_secs(2), in_flight.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = in_flight.get(),
            closing_connections = in_flight.closing(),
            "exiting with requests or responses still in flight"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(name)
    }

    #[test]
    fn the_documented_config_file_holds_the_real_defaults() {
        let from_file = ServeArgs {
            config: Some(repo_file("config/lhama.toml")),
            ..ServeArgs::default()
        };
        assert_eq!(
            from_file.resolve().unwrap(),
            ServeArgs::default().resolve().unwrap()
        );
    }

    #[test]
    fn every_serve_flag_is_described_with_its_default() {
        use clap::Args;
        let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        // Flags without a default of their own (optional settings, lists).
        let no_default = [
            "config",
            "max_model_len",
            "kv_cache_tokens",
            "api_key",
            "api_key_file",
            "cors_origins",
            "chat_template",
        ];
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "--{id} has no help text");
            assert!(
                arg.get_env().is_some(),
                "--{id} has no environment variable"
            );
            if !no_default.contains(&id) {
                assert!(
                    help.contains("[default:"),
                    "--{id} does not say its default: {help}"
                );
            }
        }
    }

    #[test]
    fn cors_origins_are_checked_at_start_up() {
        let with = |o: &str| {
            ServeArgs {
                cors_origins: Some(vec![o.to_string()]),
                ..ServeArgs::default()
            }
            .resolve()
        };
        assert!(with("https://chat.example.com").is_ok());
        assert!(with("http://localhost:3000").is_ok());
        assert!(with("*").is_ok());
        for (bad, why) in [
            ("https://chat.example.com/", "trailing slash"),
            ("chat.example.com", "scheme://host"),
            ("ftp://chat.example.com", "http or https"),
            ("https://", "no host"),
        ] {
            let err = format!("{:#}", with(bad).unwrap_err());
            assert!(
                err.contains(why) && err.contains("--cors-origins"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_chat_template_that_does_not_compile_is_a_start_up_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jinja");
        std::fs::write(&path, "{% for m in messages %}unclosed").unwrap();
        let err = ServeArgs {
            chat_template: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("--chat-template") && err.contains("bad.jinja"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_api_key_is_a_start_up_error() {
        let err = ServeArgs {
            api_key: Some(vec!["k1".into(), String::new()]),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("empty key"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "\n  \n").unwrap();
        let err = ServeArgs {
            api_key_file: Some(keys),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("no key in the file"), "{err:#}");
    }

    #[test]
    fn flags_override_the_file_and_keys_come_from_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "k2\n\n  k3  \n").unwrap();
        let cfg = dir.path().join("lhama.toml");
        std::fs::write(
            &cfg,
            format!("port = 9000\nmax-num-seqs = 8\napi-key = [\"k1\"]\napi-key-file = {:?}\nserved-model-name = [\"a\", \"b\"]\n", keys),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(cfg.clone()),
            port: Some(9100),
            ..ServeArgs::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.port, 9100, "the flag wins");
        assert_eq!(s.max_num_seqs, 8, "the file wins over the default");
        assert_eq!(s.server.api_keys, vec!["k1", "k2", "k3"]);
        assert_eq!(s.server.served_model_names, vec!["a", "b"]);

        std::fs::write(&cfg, "max-num-seqs = \"many\"\n").unwrap();
        let err = ServeArgs {
            config: Some(cfg.clone()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("lhama.toml")
                && format!("{err:#}").contains("max-num-seqs"),
            "{err:#}"
        );
        std::fs::write(&cfg, "max-num-sequences = 3\n").unwrap();
        let err = ServeArgs {
            config: Some(cfg),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        let err = ServeArgs {
            max_num_seqs: Some(0),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("--max-num-seqs"), "{err:#}");
    }
}
