//! When the engine dies (here: a backend that panics), requests in flight get
//! an OpenAI-shaped 500 and /health turns 503; the HTTP side keeps answering.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lhama_engine::scheduler::SchedulerConfig;
use lhama_engine::{EngineConfig, spawn};
use lhama_model::synth::{Preset, write_metadata};
use lhama_model::{Backend, BackendError, ForwardBatch, KvGeometry, LlamaConfig, Tokenizer};
use lhama_server::{AppState, Loaded, ServerConfig, router};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The engine's stats once spawned, and whether the engine counted as
/// alive when its backend was dropped (during the panic's unwinding).
type Seen = Arc<std::sync::Mutex<(Option<Arc<lhama_engine::engine::EngineStats>>, Option<bool>)>>;

struct PanickingBackend(LlamaConfig, Seen);

impl Drop for PanickingBackend {
    fn drop(&mut self) {
        let mut seen = self.1.lock().unwrap();
        let alive = seen
            .0
            .as_ref()
            .map(|s| s.alive.load(std::sync::atomic::Ordering::SeqCst));
        seen.1 = alive;
    }
}

impl Backend for PanickingBackend {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn config(&self) -> &LlamaConfig {
        &self.0
    }
    fn kv_geometry(&self) -> KvGeometry {
        KvGeometry {
            num_blocks: 64,
            block_size: 16,
        }
    }
    fn forward(&mut self, _: &ForwardBatch<'_>, _: &mut Vec<f32>) -> Result<(), BackendError> {
        panic!("simulated backend crash (expected by this test)");
    }
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_dead_engine_gives_500_then_503() {
    let dir = tempfile::tempdir().unwrap();
    write_metadata(Preset::Tiny, dir.path()).unwrap();
    let config = LlamaConfig::from_file(&dir.path().join("config.json")).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_dir(dir.path()).unwrap());
    let seen: Seen = Default::default();
    let engine = spawn(
        Box::new(PanickingBackend(config.clone(), seen.clone())),
        tokenizer.clone(),
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: 4,
                max_num_batched_tokens: 64,
                num_blocks: 64,
                block_size: 16,
                prefix_caching: false,
            },
            max_model_len: 512,
            eos_ids: vec![2],
            step_delay: None,
        },
    );
    seen.lock().unwrap().0 = Some(engine.stats.clone());
    let state = AppState::new(ServerConfig {
        served_model_names: vec!["tiny".into()],
        api_keys: Vec::new(),
        max_body_bytes: 1 << 20,
        max_queue_requests: 8,
        max_queue_tokens: 1 << 16,
        cors_origins: Vec::new(),
        body_read_timeout: std::time::Duration::from_secs(5),
        system_prompt_merge: false,
        chat_ui: true,
    });
    let app = router(state.clone());
    let (status, _) = call(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "still loading");
    let loaded = Loaded {
        engine,
        tokenizer,
        generation: Default::default(),
        vocab_size: config.vocab_size,
        max_model_len: 512,
        backend: "panicking",
        guides: Err("not needed here".into()),
    };
    assert!(state.0.loaded.set(loaded).is_ok());
    let (status, _) = call(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    let body =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 4});
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, err) = call(&app, req).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine stopped"),
        "{err}"
    );

    let (status, health) = call(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["error"]["message"], "The engine has stopped.");
    // The engine was marked dead before its parts (the backend, then the
    // channels whose closing fails the requests in flight) were dropped.
    assert_eq!(seen.lock().unwrap().1, Some(false));
}
