//! lhama's HTTP layer: OpenAI-compatible routes over the engine, with errors
//! in OpenAI's shape everywhere, API keys, body and queue limits, CORS,
//! Prometheus metrics and graceful shutdown.

pub mod chat;
pub mod completions;
pub mod connections;
pub mod error;
pub mod extract;
pub mod generation;
pub mod metrics;
pub mod misc;
pub mod openai;
pub mod sse;
pub mod state;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

pub use error::ApiError;
pub use state::{AppState, Loaded, ServerConfig};

/// The whole router: /v1 routes behind the API-key check, the rest open.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(misc::list_models))
        .route("/v1/models/{id}", get(misc::get_model))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let open = Router::new()
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/version", get(misc::version))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize));
    let mut app = v1
        .merge(open)
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state.clone());
    if !state.0.config.cors_origins.is_empty() {
        app = app.layer(cors(&state.0.config.cors_origins));
    }
    app
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &state.0.config.api_keys;
    if keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(k) if keys.iter().any(|key| key == k) => next.run(req).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
            .into_response(),
    }
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(req).await;
    state
        .0
        .metrics
        .count_request(&route, response.status().as_u16());
    response
}
