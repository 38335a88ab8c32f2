//! A JSON body extractor whose every rejection is an OpenAI-shaped error:
//! body too large (413), too slow to arrive (408), not JSON or wrong types
//! (400, naming the field). Parsing runs on the blocking pool, so a large
//! body never holds up the async workers.

use axum::extract::{FromRequest, Request};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// Bytes of an oversized body read (and dropped) before answering 413, so a
/// client still sending gets the answer instead of a reset connection.
const DRAIN_LIMIT: usize = 256 << 20;

async fn read_body(req: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = req.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("Could not read the request body: {e}"), None)
        })?;
        total += chunk.len();
        if total > DRAIN_LIMIT {
            break;
        }
        if total <= limit {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > limit {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(buf)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(format!("Request body is not valid UTF-8: {e}"), None)
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("Request body is not valid JSON: {inner}"), None)
        } else {
            let param = (path != ".").then_some(path);
            ApiError::bad_request(
                format!(
                    "Invalid value for `{}`: {inner}",
                    param.as_deref().unwrap_or("body")
                ),
                param.as_deref(),
            )
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("Request body is not valid JSON: {e}"), None))?;
    Ok(value)
}

/// `application/json` or `application/<something>+json`, with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // A body that says it is not JSON is refused (415): a cross-site
        // "simple" request (text/plain, form data) must not run a
        // generation without a CORS preflight.
        if let Some(v) = req.headers().get(axum::http::header::CONTENT_TYPE) {
            let text = v.to_str().unwrap_or("");
            if !is_json(text) {
                return Err(ApiError::unsupported_media_type(text));
            }
        }
        let cfg = &state.0.config;
        let timeout = cfg.body_read_timeout;
        let bytes = tokio::time::timeout(timeout, read_body(req, cfg.max_body_bytes))
            .await
            .map_err(|_| {
                ApiError::request_timeout(format!(
                    "The request body did not arrive within {} s.",
                    timeout.as_secs_f64()
                ))
            })??;
        state.heavy(move || parse(&bytes)).await?.map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn only_json_content_types_pass() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
