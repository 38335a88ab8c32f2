//! Server-sent events: a task turns the merged engine events into JSON
//! chunks; a client that goes away closes the channel, which ends the task
//! and cancels its sequences.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use lhama_engine::Event;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::generation::Merged;

/// Turns events into chunks for one endpoint.
pub trait ChunkWriter: Send + 'static {
    /// Chunks sent before any event (e.g. the chat role chunks).
    fn start(&mut self) -> Vec<Value>;
    /// Chunks for one event of choice `index`.
    fn event(&mut self, index: usize, ev: Event) -> Result<Vec<Value>, ApiError>;
    /// Chunks after every choice has finished (e.g. usage).
    fn end(&mut self) -> Vec<Value>;
}

pub fn stream(mut merged: Merged, mut writer: impl ChunkWriter) -> Response {
    let (tx, mut rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let send = |v: Value| SseEvent::default().data(v.to_string());
        for c in writer.start() {
            if tx.send(send(c)).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                next = merged.next() => next,
                () = tx.closed() => return, // client gone: dropping `merged` cancels
            };
            let Some((index, ev)) = next else { break };
            match writer.event(index, ev) {
                Ok(chunks) => {
                    for c in chunks {
                        if tx.send(send(c)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(send(e.body())).await;
                    let _ = tx.send(SseEvent::default().data("[DONE]")).await;
                    return;
                }
            }
        }
        for c in writer.end() {
            if tx.send(send(c)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(SseEvent::default().data("[DONE]")).await;
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use lhama_engine::FinishReason;
    use serde_json::json;

    /// Writes each token's text as `{"t": text}`.
    struct Plain;

    impl ChunkWriter for Plain {
        fn start(&mut self) -> Vec<Value> {
            vec![json!({"start": true})]
        }
        fn event(&mut self, _index: usize, ev: Event) -> Result<Vec<Value>, ApiError> {
            match ev {
                Event::Token { text, .. } => Ok(vec![json!({"t": text})]),
                Event::Error(e) => Err(ApiError::internal(format!("generation failed: {e}"))),
                _ => Ok(Vec::new()),
            }
        }
        fn end(&mut self) -> Vec<Value> {
            vec![json!({"end": true})]
        }
    }

    async fn body_of(events: Vec<(usize, Event)>) -> String {
        let merged: Merged = Box::pin(stream::iter(events));
        let response = stream(merged, Plain);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn token(t: &str) -> Event {
        Event::Token {
            id: 5,
            text: t.into(),
            logprob: None,
        }
    }

    #[tokio::test]
    async fn events_then_end_then_done() {
        let body = body_of(vec![
            (0, token("a")),
            (
                0,
                Event::Done {
                    reason: FinishReason::Stop,
                    prompt_tokens: 1,
                    completion_tokens: 1,
                },
            ),
        ])
        .await;
        let data: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(
            data,
            vec![
                r#"{"start":true}"#,
                r#"{"t":"a"}"#,
                r#"{"end":true}"#,
                "[DONE]"
            ]
        );
    }

    #[tokio::test]
    async fn an_error_mid_stream_is_an_openai_error_event() {
        let body = body_of(vec![
            (0, token("a")),
            (0, Event::Error("boom".into())),
            (0, token("never")),
        ])
        .await;
        let data: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.len(), 4, "{body}");
        let err: Value = serde_json::from_str(data[2]).unwrap();
        assert_eq!(err["error"]["message"], "generation failed: boom");
        assert_eq!(err["error"]["type"], "server_error");
        assert_eq!(data[3], "[DONE]");
    }
}
