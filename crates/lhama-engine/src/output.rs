//! The output thread: detokenization, stop strings and every request's
//! events, off the engine thread, so that the GPU's next step does not wait
//! for the text of the last one.
//!
//! The engine sends one batch of [`Out`] messages a step, in order. It
//! decides every end it can see in the token ids (a stop token, `max_tokens`,
//! the context, a finished grammar); only a stop string needs the text. When
//! this thread finds one, it sends the request's last events at once and
//! tells the engine, which drops the sequence at its next step. Tokens the
//! engine generated for it in between are discarded here, never sent.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use lhama_model::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::detok::IncrementalDecoder;
use crate::engine::{EngineStats, Event, FinishReason, TokenLogprob};
use crate::scheduler::SeqId;
use crate::stop::{StopOutcome, StopText};

pub(crate) enum Out {
    /// A new request: where its events go, and how its text is made.
    Open {
        id: SeqId,
        events: UnboundedSender<Event>,
        skip_special_tokens: bool,
        stop: Vec<String>,
        prompt_tokens: usize,
    },
    /// An event the engine made itself (admission, prompt logprobs, an
    /// error, the end of a request for no tokens), passed on in order. An
    /// error or an end closes the request here.
    Event { id: SeqId, event: Event },
    /// A sampled token. `end` is the end the engine saw in the ids (for
    /// this token), if any; `stop_token` says the token itself ends it and
    /// has no text.
    Token {
        id: SeqId,
        token: u32,
        logprob: Option<TokenLogprob>,
        stop_token: bool,
        end: Option<FinishReason>,
    },
    /// The engine dropped the sequence (ended or cancelled).
    Close { id: SeqId },
}

struct Request {
    events: UnboundedSender<Event>,
    decoder: IncrementalDecoder,
    stop: StopText,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Its last event is sent: what the engine still sends is dropped.
    ended: bool,
}

pub(crate) struct Output {
    tokenizer: Arc<Tokenizer>,
    stats: Arc<EngineStats>,
    requests: HashMap<SeqId, Request>,
    /// Sequences this thread ended (a stop string, a detokenization error),
    /// for the engine to drop.
    ended: mpsc::Sender<SeqId>,
}

/// Starts the output thread; it runs until the engine drops its sender.
pub(crate) fn spawn(
    tokenizer: Arc<Tokenizer>,
    stats: Arc<EngineStats>,
) -> (mpsc::Sender<Vec<Out>>, mpsc::Receiver<SeqId>) {
    let (batches, rx) = mpsc::channel::<Vec<Out>>();
    let (ended, ended_rx) = mpsc::channel();
    let mut output = Output {
        tokenizer,
        stats,
        requests: HashMap::new(),
        ended,
    };
    std::thread::Builder::new()
        .name("lhama-output".into())
        .spawn(move || {
            for batch in rx {
                for out in batch {
                    output.handle(out);
                }
            }
        })
        .expect("spawning the output thread");
    (batches, ended_rx)
}

impl Output {
    pub(crate) fn handle(&mut self, out: Out) {
        match out {
            Out::Open {
                id,
                events,
                skip_special_tokens,
                stop,
                prompt_tokens,
            } => {
                self.requests.insert(
                    id,
                    Request {
                        events,
                        decoder: IncrementalDecoder::new(skip_special_tokens),
                        stop: StopText::new(stop),
                        prompt_tokens,
                        completion_tokens: 0,
                        ended: false,
                    },
                );
            }
            Out::Event { id, event } => {
                if let Some(r) = self.requests.get_mut(&id)
                    && !r.ended
                {
                    r.ended = matches!(event, Event::Error(_) | Event::Done { .. });
                    let _ = r.events.send(event);
                }
            }
            Out::Token {
                id,
                token,
                logprob,
                stop_token,
                end,
            } => self.token(id, token, logprob, stop_token, end),
            Out::Close { id } => {
                self.requests.remove(&id);
            }
        }
    }

    fn token(
        &mut self,
        id: SeqId,
        token: u32,
        logprob: Option<TokenLogprob>,
        stop_token: bool,
        end: Option<FinishReason>,
    ) {
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if r.ended {
            return;
        }
        let tokenizer = &self.tokenizer;
        r.completion_tokens += 1;
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let mut reason = end;
        let mut text = String::new();
        let mut matched_stop_string = false;
        if !stop_token {
            let delta = match r.decoder.push(tokenizer, token) {
                Ok(d) => d.unwrap_or_default(),
                Err(e) => {
                    let _ = r.events.send(Event::Error(format!("detokenizing: {e}")));
                    r.ended = true;
                    let _ = self.ended.send(id);
                    return;
                }
            };
            match r.stop.push(&delta) {
                StopOutcome::Continue(t) => text = t,
                StopOutcome::Stopped(t) => {
                    text = t;
                    reason = Some(FinishReason::Stop);
                    matched_stop_string = true;
                }
            }
        }
        let _ = r.events.send(Event::Token {
            id: token,
            text,
            logprob,
        });
        let Some(mut reason) = reason else {
            return;
        };
        if !matched_stop_string {
            // Release what the decoder and the stop matcher still hold; a
            // stop string may still complete inside it.
            let tail = r
                .decoder
                .finish(tokenizer)
                .ok()
                .flatten()
                .unwrap_or_default();
            let tail = match r.stop.push(&tail) {
                StopOutcome::Continue(t) => t + &r.stop.flush(),
                StopOutcome::Stopped(t) => {
                    reason = FinishReason::Stop;
                    t
                }
            };
            if !tail.is_empty() {
                let _ = r.events.send(Event::Text(tail));
            }
        }
        let _ = r.events.send(Event::Done {
            reason,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        });
        r.ended = true;
        if end.is_none() {
            // The engine would go on generating: only the text ended it.
            let _ = self.ended.send(id);
        }
    }
}
