//! Request ids and the access log: every request gets an id (the client's
//! `x-request-id` when it sends a usable one), returned in `x-request-id` and
//! carried by a span over everything logged while handling it; one info line
//! per request is written when its response body ends, so a stream's line
//! has its token counts and finish reasons.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use lhama_engine::FinishReason;
use tracing::Instrument;

use crate::body::WithGuard;
use crate::generation::{finish_str, request_id};
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a request's line reports besides its status; filled by the
/// generation code as its sequences finish.
#[derive(Debug)]
pub struct RequestLog {
    pub id: String,
    prompt_tokens: AtomicUsize,
    completion_tokens: AtomicUsize,
    finish_reasons: Mutex<Vec<&'static str>>,
}

impl RequestLog {
    fn new(id: String) -> Self {
        Self {
            id,
            prompt_tokens: AtomicUsize::new(0),
            completion_tokens: AtomicUsize::new(0),
            finish_reasons: Mutex::new(Vec::new()),
        }
    }

    /// One sequence of the request has finished.
    pub fn sequence_done(
        &self,
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) {
        self.prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion_tokens, Ordering::Relaxed);
        if let Ok(mut r) = self.finish_reasons.lock() {
            r.extend(finish_str(Some(reason)));
        }
    }

    /// The finish reason of every sequence, when they agree; else "mixed".
    fn finish_reason(&self) -> &'static str {
        let reasons = self
            .finish_reasons
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        match reasons.split_first() {
            None => "",
            Some((first, rest)) if rest.iter().all(|r| r == first) => first,
            Some(_) => "mixed",
        }
    }
}

/// A client's request id, if usable: 1 to 128 characters of letters,
/// digits and `-_.:`.
fn client_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    ok.then(|| s.to_string())
}

/// Writes the request's access-log line when dropped (the body has ended).
struct LogLine {
    log: Arc<RequestLog>,
    method: Method,
    route: String,
    status: u16,
    start: Instant,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let log = &self.log;
        tracing::info!(
            target: "lhama::access",
            request_id = %log.id,
            method = %self.method,
            route = %self.route,
            status = self.status,
            latency_ms = self.start.elapsed().as_secs_f64() * 1e3,
            prompt_tokens = log.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens = log.completion_tokens.load(Ordering::Relaxed),
            finish_reason = log.finish_reason(),
            "request"
        );
    }
}

/// The middleware: request id, span, metrics by route and status, and the
/// access-log line at the end of the body.
pub async fn access_log(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(client_request_id)
        .unwrap_or_else(|| request_id("req"));
    let log = Arc::new(RequestLog::new(id.clone()));
    req.extensions_mut().insert(log.clone());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let start = Instant::now();
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(req).instrument(span).await;
    let status = response.status().as_u16();
    state.0.metrics.count_request(&route, status);
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let line = LogLine {
        log,
        method,
        route,
        status,
        start,
    };
    response.map(|inner| Body::new(WithGuard::new(inner, line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_client_ids_are_kept() {
        let id = |s: &str| client_request_id(&HeaderValue::from_str(s).unwrap());
        assert_eq!(id("abc-123_x.y:z").as_deref(), Some("abc-123_x.y:z"));
        assert_eq!(id(""), None);
        assert_eq!(id("has space"), None);
        assert_eq!(id(&"a".repeat(129)), None);
    }

    #[test]
    fn finish_reasons_are_reported_once_or_as_mixed() {
        let log = RequestLog::new("r".into());
        assert_eq!(log.finish_reason(), "");
        log.sequence_done(FinishReason::Length, 3, 4);
        log.sequence_done(FinishReason::Length, 3, 4);
        assert_eq!(log.finish_reason(), "length");
        log.sequence_done(FinishReason::Stop, 3, 1);
        assert_eq!(log.finish_reason(), "mixed");
        assert_eq!(log.completion_tokens.load(Ordering::Relaxed), 9);
    }
}
