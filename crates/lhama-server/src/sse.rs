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
