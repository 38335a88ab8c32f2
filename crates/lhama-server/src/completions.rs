//! POST /v1/completions

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use lhama_engine::{Event, TokenLogprob};
use lhama_model::Tokenizer;
use serde_json::{Map, Value, json};

use crate::access::RequestLog;
use crate::chat::token_text;
use crate::connections::ClientEof;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::generation::{self, Choice, finish_str, request_id, unix_now};
use crate::openai::{CompletionRequest, Prompt, top_count};
use crate::sse::{self, ChunkWriter};
use crate::state::AppState;

/// A prompt's token ids, and its text for `echo`.
type EncodedPrompt = (Arc<[u32]>, String);

/// Limits a prompt is checked against before it is tokenized or decoded.
struct PromptLimits {
    vocab: usize,
    max_model_len: usize,
    max_tokens: usize,
    /// Decode token-id prompts to text (only `echo` needs it).
    echo: bool,
}

/// The prompts of a request as token ids, with their text for `echo`. Each
/// is checked against the context length before it is tokenized (by its
/// size in bytes) or decoded (by its count of ids). Runs on the blocking pool.
fn prompts(
    prompt: Prompt,
    tokenizer: &Tokenizer,
    limits: &PromptLimits,
) -> Result<Vec<EncodedPrompt>, ApiError> {
    let fits = |ids: usize| {
        generation::check_context_len(limits.max_model_len, ids, limits.max_tokens, "prompt")
    };
    let encode = |t: String| -> Result<EncodedPrompt, ApiError> {
        generation::check_text_len(tokenizer, limits.max_model_len, t.len(), "prompt")?;
        let ids = tokenizer.encode(&t, true).map_err(ApiError::internal)?;
        fits(ids.len())?;
        Ok((ids.into(), t))
    };
    let ids = |list: Vec<i64>| -> Result<EncodedPrompt, ApiError> {
        fits(list.len())?;
        let vocab = limits.vocab;
        let ids = list
            .iter()
            .map(|&t| {
                if t < 0 || t as usize >= vocab {
                    Err(ApiError::invalid_param(
                        "prompt",
                        format!("token id {t} is outside the vocabulary (0..{vocab})"),
                    ))
                } else {
                    Ok(t as u32)
                }
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let text = if limits.echo {
            tokenizer.decode(&ids, false).map_err(ApiError::internal)?
        } else {
            String::new()
        };
        Ok((ids.into(), text))
    };
    let out = match prompt {
        Prompt::Text(t) => vec![encode(t)?],
        Prompt::Texts(ts) => ts.into_iter().map(encode).collect::<Result<_, _>>()?,
        Prompt::Ids(list) => vec![ids(list)?],
        Prompt::IdLists(lists) => lists.into_iter().map(ids).collect::<Result<_, _>>()?,
    };
    if out.is_empty() || out.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ApiError::invalid_param(
            "prompt",
            "`prompt` must not be empty",
        ));
    }
    Ok(out)
}

fn prompt_count(p: &Prompt) -> usize {
    match p {
        Prompt::Text(_) | Prompt::Ids(_) => 1,
        Prompt::Texts(ts) => ts.len(),
        Prompt::IdLists(ls) => ls.len(),
    }
}

pub async fn completions(
    State(state): State<AppState>,
    eof: Option<Extension<Arc<ClientEof>>>,
    log: Option<Extension<Arc<RequestLog>>>,
    scope: Option<Extension<crate::KeyScope>>,
    ApiJson(mut req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let loaded = state.serving(&req.model)?;
    if req.suffix.is_some() {
        return Err(ApiError::invalid_param(
            "suffix",
            "`suffix` is not supported",
        ));
    }
    let sampling = req.sampling();
    let n = sampling.n()?;
    if req.best_of.is_some_and(|b| b != n as i64) {
        return Err(ApiError::invalid_param(
            "best_of",
            "`best_of` other than `n` is not supported",
        ));
    }
    let logprobs = req.logprobs.map(|k| top_count("logprobs", k)).transpose()?;
    let mut params = sampling.to_params(&loaded.generation, loaded.vocab_size, 16)?;
    params.cache_salt = crate::cache_salt(scope.map(|s| s.0), sampling.cache_salt.as_deref());
    params.logprobs = logprobs;
    params.prompt_logprobs = if req.echo { logprobs } else { None };
    // More sequences than the queue ever holds: refused before any tokenizing.
    state.check_admissible(prompt_count(&req.prompt).saturating_mul(n), 0)?;
    let tokenizer = loaded.tokenizer.clone();
    let limits = PromptLimits {
        vocab: loaded.vocab_size,
        max_model_len: loaded.max_model_len,
        max_tokens: params.max_tokens,
        echo: req.echo,
    };
    let prompt = std::mem::replace(&mut req.prompt, Prompt::Texts(Vec::new()));
    let prompts = {
        let tokenizer = tokenizer.clone();
        state
            .heavy(move || prompts(prompt, &tokenizer, &limits))
            .await??
    };
    let lens = prompts.iter().map(|(ids, _)| ids.len());
    let shape = (
        prompts.len() * n,
        lens.clone().sum::<usize>() * n,
        lens.max().unwrap_or(0),
    );
    generation::attach_guide(
        &state,
        loaded,
        sampling.guided()?,
        &mut params,
        shape,
        "prompt",
    )
    .await?;
    let mut jobs = Vec::new();
    for (p, (ids, _)) in prompts.iter().enumerate() {
        jobs.extend(generation::choices(ids, &params, n, p * n));
    }
    let count = jobs.len();
    let events = generation::start(&state, loaded, jobs, "prompt", log.map(|l| l.0))?;
    let id = request_id("cmpl");
    let created = unix_now();
    let echo_texts: Vec<String> = if req.echo {
        (0..count).map(|i| prompts[i / n].1.clone()).collect()
    } else {
        Vec::new()
    };
    let prompt_tokens: usize = prompts.iter().map(|(ids, _)| ids.len()).sum::<usize>() * n;
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let writer = CompletionChunks {
            id,
            model: req.model.clone(),
            created,
            echo: req.echo.then_some(echo_texts),
            include_usage,
            tokenizer,
            usage: (prompt_tokens, 0),
            cached: 0,
        };
        return Ok(sse::stream(events, writer, state.cut_signal()));
    }
    let echo = req.echo;
    let model = req.model.clone();
    let render = move |choices: Vec<Choice>| {
        let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
        let cached: usize = choices.iter().map(|c| c.cached_tokens).sum();
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices.iter().enumerate().map(|(i, c)| {
                let text = if echo { format!("{}{}", echo_texts[i], c.text) } else { c.text.clone() };
                json!({
                    "index": i,
                    "text": text,
                    "logprobs": logprobs.map(|_| completion_logprobs(&tokenizer, c, echo.then_some(&prompts[i / n].0))),
                    "finish_reason": finish_str(c.finish),
                })
            }).collect::<Vec<_>>(),
            "usage": generation::usage(prompt_tokens, completion, cached),
        })
    };
    generation::respond(&state, eof.map(|e| e.0), events, count, render).await
}

/// The legacy completions logprobs object; with echo, prompt tokens first.
fn completion_logprobs(tokenizer: &Tokenizer, c: &Choice, prompt: Option<&Arc<[u32]>>) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    let mut offset = 0usize;
    let mut push = |id: u32, lp: Option<&TokenLogprob>| {
        let (t, _) = token_text(tokenizer, id);
        offsets.push(offset);
        offset += t.len();
        tokens.push(Value::String(t));
        token_logprobs.push(lp.map_or(Value::Null, |l| json!(l.logprob)));
        top.push(lp.map_or(Value::Null, |l| {
            let m: Map<String, Value> = l
                .top
                .iter()
                .map(|&(id, p)| (token_text(tokenizer, id).0, json!(p)))
                .collect();
            Value::Object(m)
        }));
    };
    if let (Some(ids), Some(lps)) = (prompt, &c.prompt_logprobs) {
        for (i, &id) in ids.iter().enumerate() {
            push(id, lps.get(i).and_then(Option::as_ref));
        }
    }
    for (id, lp) in c.tokens.iter().zip(&c.logprobs) {
        push(*id, Some(lp));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

struct CompletionChunks {
    id: String,
    model: String,
    created: u64,
    echo: Option<Vec<String>>,
    include_usage: bool,
    tokenizer: Arc<Tokenizer>,
    usage: (usize, usize),
    /// Prompt tokens served from the prefix cache, over every sequence.
    cached: usize,
}

impl CompletionChunks {
    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]})
    }
}

impl ChunkWriter for CompletionChunks {
    fn start(&mut self) -> Vec<Value> {
        match &self.echo {
            Some(texts) => texts
                .iter()
                .enumerate()
                .map(|(i, t)| self.chunk(i, t, Value::Null, None))
                .collect(),
            None => Vec::new(),
        }
    }

    fn event(&mut self, index: usize, ev: Event) -> Result<Vec<Value>, ApiError> {
        Ok(match ev {
            Event::Token { id, text, logprob } => {
                self.usage.1 += 1;
                let lp = logprob.map_or(Value::Null, |l| {
                    let c = Choice {
                        tokens: vec![id],
                        logprobs: vec![l],
                        ..Choice::default()
                    };
                    completion_logprobs(&self.tokenizer, &c, None)
                });
                if text.is_empty() && lp.is_null() {
                    return Ok(Vec::new());
                }
                vec![self.chunk(index, &text, lp, None)]
            }
            Event::Text(text) => vec![self.chunk(index, &text, Value::Null, None)],
            Event::Done { reason, .. } => {
                vec![self.chunk(index, "", Value::Null, finish_str(Some(reason)))]
            }
            Event::Admitted { cached_tokens } => {
                self.cached += cached_tokens;
                Vec::new()
            }
            Event::PromptLogprobs(_) => Vec::new(),
            Event::Error(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
        })
    }

    fn end(&mut self) -> Vec<Value> {
        if !self.include_usage {
            return Vec::new();
        }
        let (p, c) = self.usage;
        vec![
            json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                    "choices": [], "usage": generation::usage(p, c, self.cached)}),
        ]
    }
}
