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
use crate::generation::ChoiceEvents;

/// Turns events into chunks for one endpoint.
pub trait ChunkWriter: Send + 'static {
    /// Chunks sent before any event (e.g. the chat role chunks).
    fn start(&mut self) -> Vec<Value>;
    /// Chunks for one event of choice `index`.
    fn event(&mut self, index: usize, ev: Event) -> Result<Vec<Value>, ApiError>;
    /// Chunks after every choice has finished (e.g. usage).
    fn end(&mut self) -> Vec<Value>;
}

/// Streams `events` through `writer`. When `cut` resolves first (the
/// shutdown grace period is over), the stream ends with an error event and
/// `[DONE]` instead of a bare end of file.
pub fn stream(
    events: ChoiceEvents,
    writer: impl ChunkWriter,
    cut: impl Future<Output = ()> + Send + 'static,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        // Dropped on return: the engine sequences are cancelled.
        let mut events = events;
        let tail = tokio::select! {
            tail = forward(&mut events, writer, &tx) => match tail {
                Ok(tail) => tail,
                Err(ClientGone) => return,
            },
            () = cut => Some(ApiError::unavailable(
                "The server is shutting down and its grace period is over; this stream was cut short.",
            ).body()),
        };
        drop(events);
        if let Some(error) = tail
            && tx.send(data(error)).await.is_err()
        {
            return;
        }
        let _ = tx.send(SseEvent::default().data("[DONE]")).await;
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data(v: Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// The client went away (the response body was dropped).
struct ClientGone;

/// Writes the stream's chunks until its end; returns the error event that
/// ends it early, if any.
async fn forward(
    events: &mut ChoiceEvents,
    mut writer: impl ChunkWriter,
    tx: &mpsc::Sender<SseEvent>,
) -> Result<Option<Value>, ClientGone> {
    for c in writer.start() {
        if tx.send(data(c)).await.is_err() {
            return Err(ClientGone);
        }
    }
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            () = tx.closed() => return Err(ClientGone),
        };
        let Some((index, ev)) = next else { break };
        match writer.event(index, ev) {
            Ok(chunks) => {
                for c in chunks {
                    if tx.send(data(c)).await.is_err() {
                        return Err(ClientGone);
                    }
                }
            }
            Err(e) => return Ok(Some(e.body())),
        }
    }
    for c in writer.end() {
        if tx.send(data(c)).await.is_err() {
            return Err(ClientGone);
        }
    }
    Ok(None)
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
        let events: ChoiceEvents = Box::pin(stream::iter(events));
        let response = stream(events, Plain, std::future::pending());
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

#[cfg(test)]
mod cut_tests {
    use super::*;
    use serde_json::json;

    struct Text;

    impl ChunkWriter for Text {
        fn start(&mut self) -> Vec<Value> {
            Vec::new()
        }
        fn event(&mut self, _index: usize, ev: Event) -> Result<Vec<Value>, ApiError> {
            Ok(match ev {
                Event::Token { text, .. } => vec![json!({"t": text})],
                _ => Vec::new(),
            })
        }
        fn end(&mut self) -> Vec<Value> {
            vec![json!({"end": true})]
        }
    }

    #[tokio::test]
    async fn a_stream_cut_at_grace_expiry_ends_with_an_error_event_and_done() {
        // One token, then nothing more: the engine is still generating.
        let first = futures_util::stream::iter(vec![(
            0,
            Event::Token {
                id: 5,
                text: "a".into(),
                logprob: None,
            },
        )]);
        let events: ChoiceEvents = Box::pin(first.chain(futures_util::stream::pending()));
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
        let response = stream(events, Text, async move {
            let _ = cut_rx.await;
        });
        // Cut once the first event is out (the stream is then running).
        let mut frames = response.into_body().into_data_stream();
        let mut bytes = frames.next().await.unwrap().unwrap().to_vec();
        let _ = cut_tx.send(());
        while let Some(frame) = frames.next().await {
            bytes.extend_from_slice(&frame.unwrap());
        }
        let body = String::from_utf8(bytes).unwrap();
        let data: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.len(), 3, "{body}");
        assert_eq!(data[0], r#"{"t":"a"}"#);
        let err: Value = serde_json::from_str(data[1]).unwrap();
        assert_eq!(err["error"]["type"], "server_error");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("shutting down"),
            "{err}"
        );
        assert_eq!(data[2], "[DONE]");
    }
}
