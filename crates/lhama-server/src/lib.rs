//! lhama's HTTP layer: OpenAI-compatible routes over the engine, with errors
//! in OpenAI's shape everywhere, API keys, body and queue limits, CORS,
//! Prometheus metrics and graceful shutdown.

pub mod access;
mod body;
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
pub mod ui;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

pub use error::ApiError;
pub use state::{AppState, Loaded, ServerConfig};

/// The whole router: /v1 routes behind the API-key check, the rest open.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(misc::list_models))
        .route("/v1/models/{id}", get(misc::get_model));
    let mut open = Router::new()
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/version", get(misc::version))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize));
    if state.0.config.chat_ui {
        open = open.merge(ui::routes());
    }
    let mut app = v1
        .merge(open)
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        // Every /v1 path, unknown ones too (401 before 404, as vLLM does).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            access::access_log,
        ))
        .with_state(state.clone());
    if !state.0.config.cors_origins.is_empty() {
        app = app.layer(cors(&state.0.config.cors_origins));
    }
    app
}

/// Checks a CORS origin from the configuration: `*`, or
/// `scheme://host[:port]` exactly as browsers send it (no path, no trailing
/// slash, which would silently never match).
pub fn check_cors_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let bad = |why: &str| Err(format!("CORS origin {origin:?}: {why}"));
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("expected scheme://host[:port], e.g. https://chat.example.com");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    if rest.is_empty() {
        return bad("no host");
    }
    if rest.contains('/') {
        return bad("an origin has no path or trailing slash");
    }
    match origin.parse::<axum::http::Uri>() {
        Ok(uri) if uri.host().is_some() && HeaderValue::from_str(origin).is_ok() => Ok(()),
        _ => bad("not a valid origin"),
    }
}

fn cors(origins: &[String]) -> CorsLayer {
    // Browsers' SDKs send headers of their own (the OpenAI JS SDK's
    // x-stainless-*): allow whatever the preflight asks for, and let scripts
    // read Retry-After and the request id.
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(std::time::Duration::from_secs(600))
        .expose_headers([
            header::RETRY_AFTER,
            axum::http::HeaderName::from_static("x-request-id"),
        ]);
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

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether `given` is one of `keys`, compared in constant time (every key is
/// compared, each without an early exit).
/// Which key `given` is, comparing with every key in constant time.
fn key_index(keys: &[String], given: &str) -> Option<usize> {
    use subtle::ConstantTimeEq;
    let mut found = None;
    for (i, key) in keys.iter().enumerate() {
        if bool::from(key.as_bytes().ct_eq(given.as_bytes())) {
            found = Some(i);
        }
    }
    found
}

/// The API key a request was authenticated with (its place in the list):
/// requests under different keys never share prefix-cache blocks, so one
/// client cannot learn from its latency what another sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyScope(pub usize);

/// The prefix-cache salt of a request: its key's scope and its own
/// `cache_salt` (vLLM's field), if any.
pub fn cache_salt(scope: Option<KeyScope>, requested: Option<&str>) -> Option<String> {
    match (scope, requested) {
        (None, None) => None,
        (scope, requested) => Some(format!(
            "key={};salt={}",
            scope.map_or(String::from("-"), |s| s.0.to_string()),
            requested.unwrap_or("")
        )),
    }
}

async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &state.0.config.api_keys;
    let path = req.uri().path();
    if keys.is_empty() || !(path == "/v1" || path.starts_with("/v1/")) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given.map(|k| key_index(keys, k)) {
        Some(Some(i)) => {
            let mut req = req;
            req.extensions_mut().insert(KeyScope(i));
            next.run(req).await
        }
        Some(None) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, key_index};

    fn key_matches(keys: &[String], given: &str) -> bool {
        key_index(keys, given).is_some()
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_keys_must_match_exactly() {
        assert_eq!(bearer_token("Bearer k1"), Some("k1"));
        assert_eq!(bearer_token("bearer k1"), Some("k1"));
        assert_eq!(bearer_token("BEARER  k1 "), Some("k1"));
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("k1"), None);
        let keys = vec!["secret".to_string(), "other".to_string()];
        assert!(key_matches(&keys, "secret"));
        assert!(key_matches(&keys, "other"));
        assert!(!key_matches(&keys, "secre"));
        assert!(!key_matches(&keys, "secrets"));
        assert!(!key_matches(&keys, ""));
        assert_eq!(key_index(&keys, "other"), Some(1));
    }
}
