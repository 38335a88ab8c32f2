//! Running one HTTP request's sequences (n choices, several prompts) on the
//! engine: submission through the admission queue, one merged event stream,
//! latency metrics, and collection for non-streamed responses.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use futures_util::stream::{Stream, StreamExt, select_all};
use lhama_engine::{Event, FinishReason, GuidedSpec, RequestParams, SubmitError, TokenLogprob};
use lhama_model::Tokenizer;

use crate::access::RequestLog;
use crate::connections::ClientEof;
use crate::error::ApiError;
use crate::metrics::Latency;
use crate::state::{AppState, Loaded};

pub struct Job {
    /// Index of the choice this sequence produces.
    pub index: usize,
    /// Shared by the choices of one prompt; copied once per sequence only
    /// when it is handed to the engine, after the request is admitted.
    pub prompt: Arc<[u32]>,
    pub params: RequestParams,
}

/// Events of every sequence of one request, tagged with the choice index.
pub type ChoiceEvents = Pin<Box<dyn Stream<Item = (usize, Event)> + Send>>;

/// The `n` choices of one prompt, numbered from `first_index`; a seeded
/// request gives choice i the seed + i, so choices differ yet repeat.
pub fn choices(
    prompt: &Arc<[u32]>,
    params: &RequestParams,
    n: usize,
    first_index: usize,
) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let mut params = params.clone();
            params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(i as u64));
            Job {
                index: first_index + i,
                prompt: prompt.clone(),
                params,
            }
        })
        .collect()
}

/// Refuses (400 `context_length_exceeded`) a prompt that cannot fit the
/// model's context with `max_tokens` generated after it.
pub fn check_context_len(
    max_model_len: usize,
    prompt_len: usize,
    max_tokens: usize,
    prompt_param: &str,
) -> Result<(), ApiError> {
    if prompt_len + max_tokens > max_model_len {
        return Err(ApiError::from_submit(
            SubmitError::TooLong {
                prompt: prompt_len,
                max_tokens,
                limit: max_model_len,
            },
            prompt_param,
        ));
    }
    Ok(())
}

/// Refuses, before tokenizing, a text so long that it cannot fit the
/// model's context even at 4× the longest piece's bytes per token (the
/// margin covers normalizers that shorten text). This bounds the memory and
/// time one request can spend in the tokenizer.
pub fn check_text_len(
    tokenizer: &Tokenizer,
    max_model_len: usize,
    bytes: usize,
    prompt_param: &str,
) -> Result<(), ApiError> {
    let piece = tokenizer.max_piece_bytes().max(1);
    if bytes > max_model_len.saturating_mul(4 * piece) {
        return Err(ApiError::context_length_exceeded(
            format!(
                "This model's maximum context length is {max_model_len} tokens, and the prompt is {bytes} bytes of text: at least {} tokens. Please reduce the length of the prompt.",
                bytes / piece
            ),
            prompt_param,
        ));
    }
    Ok(())
}

/// Admits every job or none (400 for a request that can never be admitted,
/// 429 when the queue is full now), then submits them all; dropping the
/// returned stream cancels them.
pub fn start(
    state: &AppState,
    loaded: &Loaded,
    jobs: Vec<Job>,
    prompt_param: &str,
    log: Option<Arc<RequestLog>>,
) -> Result<ChoiceEvents, ApiError> {
    for job in &jobs {
        check_context_len(
            loaded.max_model_len,
            job.prompt.len(),
            job.params.max_tokens,
            prompt_param,
        )?;
    }
    let lens: Vec<usize> = jobs.iter().map(|j| j.prompt.len()).collect();
    let slots = state.enqueue_all(&lens)?;
    let mut streams = Vec::with_capacity(jobs.len());
    for (job, slot) in jobs.into_iter().zip(slots) {
        let mut slot = Some(slot);
        let mut rx = loaded
            .engine
            .submit(job.prompt.to_vec(), job.params)
            .map_err(|e| ApiError::from_submit(e, prompt_param))?
            .events;
        let metrics_state = state.clone();
        let log = log.clone();
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
                Event::Admitted { .. } => m.observe(Latency::Queue, (now - begun).as_secs_f64()),
                Event::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    m.observe(Latency::EndToEnd, (now - begun).as_secs_f64());
                    m.sequence_done(*reason, *prompt_tokens, *completion_tokens);
                    if let Some(log) = &log {
                        log.sequence_done(*reason, *prompt_tokens, *completion_tokens);
                    }
                }
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
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl Choice {
    /// Folds one event in; an engine error becomes a 500.
    pub fn apply(&mut self, ev: Event) -> Result<(), ApiError> {
        match ev {
            Event::Admitted { cached_tokens } => self.cached_tokens = cached_tokens,
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

/// Collects every choice; a 503 if the shutdown grace period ends first.
pub async fn collect(
    state: &AppState,
    mut events: ChoiceEvents,
    count: usize,
) -> Result<Vec<Choice>, ApiError> {
    let mut choices = vec![Choice::default(); count];
    let cut = state.cut_off();
    tokio::pin!(cut);
    loop {
        tokio::select! {
            next = events.next() => match next {
                Some((i, ev)) => choices[i].apply(ev)?,
                None => return Ok(choices),
            },
            () = &mut cut => return Err(ApiError::unavailable(
                "The server is shutting down and its grace period is over; this request was cut short.",
            )),
        }
    }
}

/// A collected choice set turned into the response body.
type Render = Box<dyn FnOnce(Vec<Choice>) -> serde_json::Value + Send>;

/// Answers a non-streamed request: the choices collected and rendered as
/// JSON. If the client closes its side of the connection meanwhile, it has
/// either gone or only half-closed (and still waits): the answer is then
/// committed at once (200, JSON) and spaces are written (at once, after
/// 50 ms, then every second) until the JSON follows. A half-closed client
/// gets its answer (JSON may begin with white space); for one that has gone,
/// the second write fails, which drops the body and so cancels its sequences.
pub async fn respond(
    state: &AppState,
    eof: Option<Arc<ClientEof>>,
    events: ChoiceEvents,
    count: usize,
    render: impl FnOnce(Vec<Choice>) -> serde_json::Value + Send + 'static,
) -> Result<Response, ApiError> {
    let render: Render = Box::new(render);
    let state = state.clone();
    let mut work: Pin<Box<dyn Future<Output = Result<serde_json::Value, ApiError>> + Send>> =
        Box::pin(async move { collect(&state, events, count).await.map(render) });
    let Some(eof) = eof else {
        return work.await.map(|v| Json(v).into_response());
    };
    tokio::select! {
        done = &mut work => return done.map(|v| Json(v).into_response()),
        () = eof.wait() => {}
    }
    // The first space goes out at once and the second 50 ms later: a client
    // that has gone answers the first with a reset, so the second write
    // fails and the sequences are cancelled within about 50 ms (a
    // half-closed client reads the spaces). Then one a second.
    let body = futures_util::stream::unfold(Some((work, 0u32)), |state| async move {
        let (mut work, beats) = state?;
        let wait = match beats {
            0 => Duration::ZERO,
            1 => Duration::from_millis(50),
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            done = &mut work => {
                let v = done.unwrap_or_else(|e| e.body());
                Some((Ok::<_, Infallible>(Bytes::from(v.to_string())), None))
            }
            () = tokio::time::sleep(wait) => {
                Some((Ok(Bytes::from_static(b" ")), Some((work, beats.saturating_add(1)))))
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

pub fn finish_str(r: Option<FinishReason>) -> Option<&'static str> {
    r.map(|r| match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    })
}

/// Compiles a request's structured-output constraint (on the blocking
/// pool: a large schema takes a while) and attaches it to `params`; a
/// grammar llguidance refuses is a 400 naming the parameter.
pub async fn attach_guide(
    state: &AppState,
    loaded: &Loaded,
    guided: Option<(&'static str, GuidedSpec)>,
    params: &mut RequestParams,
    (sequences, prompt_tokens, longest_prompt): (usize, usize, usize),
    prompt_param: &str,
) -> Result<(), ApiError> {
    let Some((param, spec)) = guided else {
        return Ok(());
    };
    // A request refused anyway must not hold the blocking pool with a
    // compilation: the checks `start` makes without a grammar come first.
    state.check_admissible(sequences, prompt_tokens)?;
    loaded
        .engine
        .check_fits(longest_prompt, params.max_tokens)
        .map_err(|e| ApiError::from_submit(e, prompt_param))?;
    let compiler = loaded.guides.clone().map_err(|why| {
        ApiError::invalid_param(
            param,
            format!("structured output is not available for this model: {why}"),
        )
    })?;
    let guide = state
        .heavy(move || compiler.compile(&spec))
        .await?
        .map_err(|e| ApiError::invalid_param(param, format!("`{param}` cannot be used: {e}")))?;
    params.guide = Some(guide);
    Ok(())
}

/// OpenAI's `usage` object; `cached_tokens`: prompt tokens whose K/V came
/// from the prefix cache.
pub fn usage(
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
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
