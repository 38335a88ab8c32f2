//! The built-in chat page at `/`: three files embedded in the binary (no CDN,
//! no build step), served with their content types and a
//! Content-Security-Policy that lets the page load only itself and talk
//! only to this server. `/ui/config` tells the page whether it must ask for
//! an API key and whether a system box makes sense (only when the server
//! merges system messages: this model's template has no system role).
//! `--chat-ui false` removes all of it.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;

use crate::state::AppState;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Only this origin's script, style and API; no inline code, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
        .route("/ui/config", get(config))
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn config(State(state): State<AppState>) -> Json<serde_json::Value> {
    let c = &state.0.config;
    Json(json!({
        "api_key_required": !c.api_keys.is_empty(),
        "system_prompt": if c.system_prompt_merge { "merge" } else { "reject" },
    }))
}
