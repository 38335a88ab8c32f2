//! /v1/models, /health, /metrics, /tokenize, /detokenize, /version.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

fn model_card(state: &AppState, id: &str) -> serde_json::Value {
    let max_len = state.0.loaded.get().map(|l| l.max_model_len);
    json!({"id": id, "object": "model", "created": state.0.created, "owned_by": "lhama",
           "root": state.model_name(), "max_model_len": max_len})
}

pub async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let data: Vec<_> = state
        .0
        .config
        .served_model_names
        .iter()
        .map(|n| model_card(&state, n))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn get_model(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(format!("Invalid path: {e}"), None))?;
    state.check_model(&id)?;
    Ok(Json(model_card(&state, &id)))
}

pub async fn health(State(state): State<AppState>) -> Response {
    match state.ready() {
        Ok(l) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "backend": l.backend})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let engine = state.0.loaded.get().map(|l| &*l.engine.stats);
    let body = state.0.metrics.render(engine);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

#[derive(Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: String,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let loaded = match &req.model {
        Some(m) => state.serving(m)?,
        None => state.ready()?,
    };
    let tokenizer = loaded.tokenizer.clone();
    let max_model_len = loaded.max_model_len;
    let ids = state
        .heavy(move || {
            crate::generation::check_text_len(
                &tokenizer,
                max_model_len,
                req.prompt.len(),
                "prompt",
            )?;
            tokenizer
                .encode(&req.prompt, req.add_special_tokens)
                .map_err(ApiError::internal)
        })
        .await??;
    Ok(Json(
        json!({"tokens": ids, "count": ids.len(), "max_model_len": loaded.max_model_len}),
    ))
}

#[derive(Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<i64>,
}

pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let loaded = match &req.model {
        Some(m) => state.serving(m)?,
        None => state.ready()?,
    };
    let ids = req
        .tokens
        .iter()
        .map(|&t| {
            if t < 0 || t as usize >= loaded.vocab_size {
                Err(ApiError::invalid_param(
                    "tokens",
                    format!(
                        "token id {t} is outside the vocabulary (0..{})",
                        loaded.vocab_size
                    ),
                ))
            } else {
                Ok(t as u32)
            }
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let tokenizer = loaded.tokenizer.clone();
    let text = state
        .heavy(move || tokenizer.decode(&ids, false).map_err(ApiError::internal))
        .await??;
    Ok(Json(json!({"prompt": text})))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("No such route.")
}
