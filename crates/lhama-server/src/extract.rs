//! A JSON body extractor whose every rejection is an OpenAI-shaped error:
//! body too large (413), not JSON or wrong types (400, naming the field).

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Set on the router as an extension: the largest body accepted, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(1 << 20, |l| l.0);
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::payload_too_large(limit))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
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
        de.end().map_err(|e| {
            ApiError::bad_request(format!("Request body is not valid JSON: {e}"), None)
        })?;
        Ok(ApiJson(value))
    }
}
