//! Running one HTTP request's sequences (n choices, several prompts) on the
//! engine: submission through the admission queue, one merged event stream,
//! latency metrics, and collection for non-streamed responses.

use std::pin::Pin;
use std::time::Instant;

use futures_util::stream::{Stream, StreamExt, select_all};
use lhama_engine::{Event, FinishReason, RequestParams, TokenLogprob};

use crate::error::ApiError;
use crate::metrics::Latency;
use crate::state::{AppState, Loaded};

pub struct Job {
    /// Index of the choice this sequence produces.
    pub index: usize,
    pub prompt: Vec<u32>,
    pub params: RequestParams,
}

pub type Merged = Pin<Box<dyn Stream<Item = (usize, Event)> + Send>>;

/// The `n` choices of one prompt, numbered from `first_index`; a seeded
/// request gives choice i the seed + i, so choices differ yet repeat.
pub fn choices(prompt: &[u32], params: &RequestParams, n: usize, first_index: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let mut params = params.clone();
            params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(i as u64));
            Job {
                index: first_index + i,
                prompt: prompt.to_vec(),
                params,
            }
        })
        .collect()
}

/// Submits every job; dropping the returned stream cancels them all.
pub fn start(
    state: &AppState,
    loaded: &Loaded,
    jobs: Vec<Job>,
    prompt_param: &str,
) -> Result<Merged, ApiError> {
    let mut streams = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut slot = Some(state.enqueue(job.prompt.len())?);
        let mut rx = loaded
            .engine
            .submit(job.prompt, job.params)
            .map_err(|e| ApiError::from_submit(e, prompt_param))?
            .events;
        let metrics_state = state.clone();
        let begun = Instant::now();
        let mut last: Option<Instant> = None;
        let index = job.index;
        // A stream that ends without Done means the engine went away.
        let mut finished = false;
        let events = futures_util::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(ev)) => {
                finished |= matches!(ev, Event::Done { .. } | Event::Error(_));
                std::task::Poll::Ready(Some(ev))
            }
            std::task::Poll::Ready(None) if !finished => {
                finished = true;
                std::task::Poll::Ready(Some(Event::Error(
                    "the engine stopped before the request finished".into(),
                )))
            }
            other => other,
        });
        let s = events.map(move |ev| {
            if let Some(mut s) = slot.take() {
                s.release();
            }
            let m = &metrics_state.0.metrics;
            let now = Instant::now();
            match &ev {
                Event::Token { .. } => {
                    match last {
                        None => m.observe(Latency::TimeToFirstToken, (now - begun).as_secs_f64()),
                        Some(l) => m.observe(Latency::InterToken, (now - l).as_secs_f64()),
                    }
                    last = Some(now);
                }
                Event::Done { .. } => m.observe(Latency::EndToEnd, (now - begun).as_secs_f64()),
                _ => {}
            }
            (index, ev)
        });
        streams.push(s.boxed());
    }
    Ok(select_all(streams).boxed())
}

/// One choice, collected.
#[derive(Debug, Default, Clone)]
pub struct Choice {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub finish: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Choice {
    /// Folds one event in; an engine error becomes a 500.
    pub fn apply(&mut self, ev: Event) -> Result<(), ApiError> {
        match ev {
            Event::PromptLogprobs(l) => self.prompt_logprobs = Some(l),
            Event::Token { id, text, logprob } => {
                self.tokens.push(id);
                self.text.push_str(&text);
                self.logprobs.extend(logprob);
            }
            Event::Text(t) => self.text.push_str(&t),
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            } => {
                self.finish = Some(reason);
                self.prompt_tokens = prompt_tokens;
                self.completion_tokens = completion_tokens;
            }
            Event::Error(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
        }
        Ok(())
    }
}

pub async fn collect(mut merged: Merged, count: usize) -> Result<Vec<Choice>, ApiError> {
    let mut choices = vec![Choice::default(); count];
    while let Some((i, ev)) = merged.next().await {
        choices[i].apply(ev)?;
    }
    Ok(choices)
}

pub fn finish_str(r: Option<FinishReason>) -> Option<&'static str> {
    r.map(|r| match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    })
}

/// OpenAI's `usage` object.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random-looking request id (time and a counter; uniqueness is what matters).
pub fn request_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{:016x}{n:08x}", t as u64)
}
