//! POST /v1/chat/completions

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use lhama_engine::{Event, TokenLogprob};
use lhama_model::{ChatMessage, Tokenizer};
use serde_json::{Value, json};
use std::sync::Arc;

use crate::access::RequestLog;
use crate::connections::ClientEof;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::generation::{self, finish_str, request_id, unix_now};
use crate::openai::{ChatRequest, message_text, top_count};
use crate::sse::{self, ChunkWriter};
use crate::state::AppState;

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

pub async fn chat_completions(
    State(state): State<AppState>,
    eof: Option<Extension<Arc<ClientEof>>>,
    log: Option<Extension<Arc<RequestLog>>>,
    scope: Option<Extension<crate::KeyScope>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let loaded = state.serving(&req.model)?;
    req.check_unsupported()?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid_param(
                &format!("messages[{i}].role"),
                format!("unknown role {:?}; expected one of {ROLES:?}", m.role),
            ));
        }
        messages.push(ChatMessage::new(&m.role, message_text(m, i)?));
    }
    if state.0.config.system_prompt_merge {
        messages = merge_system_messages(messages);
    }
    let sampling = req.sampling();
    let n = sampling.n()?;
    let text_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    let max_model_len = loaded.max_model_len;
    generation::check_text_len(&loaded.tokenizer, max_model_len, text_bytes, "messages")?;
    let tokenizer = loaded.tokenizer.clone();
    let prompt: Arc<[u32]> = state
        .heavy(move || -> Result<Arc<[u32]>, ApiError> {
            let text = tokenizer
                .apply_chat_template(&messages, true)
                .map_err(ApiError::from_template)?;
            generation::check_text_len(&tokenizer, max_model_len, text.len(), "messages")?;
            let ids = tokenizer.encode(&text, false).map_err(ApiError::internal)?;
            Ok(ids.into())
        })
        .await??;
    let default_max = loaded.max_model_len.saturating_sub(prompt.len());
    let mut params = sampling.to_params(&loaded.generation, loaded.vocab_size, default_max)?;
    params.cache_salt = crate::cache_salt(scope.map(|s| s.0), sampling.cache_salt.as_deref());
    params.logprobs = match (req.logprobs, req.top_logprobs) {
        (true, k) => Some(top_count("top_logprobs", k.unwrap_or(0))?),
        (false, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ));
        }
        (false, None) => None,
    };
    generation::attach_guide(
        &state,
        loaded,
        req.guided()?,
        &mut params,
        (n, prompt.len() * n, prompt.len()),
        "messages",
    )
    .await?;
    let jobs = generation::choices(&prompt, &params, n, 0);
    let events = generation::start(&state, loaded, jobs, "messages", log.map(|l| l.0))?;
    let id = request_id("chatcmpl");
    let model = req.model.clone();
    let created = unix_now();
    let tokenizer = loaded.tokenizer.clone();
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let writer = ChatChunks {
            id,
            model,
            created,
            n,
            include_usage,
            tokenizer,
            usage: (prompt.len(), 0),
            cached: vec![None; n],
        };
        return Ok(sse::stream(events, writer, state.cut_signal()));
    }
    let logprobs = req.logprobs;
    let prompt_len = prompt.len();
    let render = move |choices: Vec<generation::Choice>| {
        let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
        // The choices share one prompt (counted once): what every one found cached.
        let cached = choices.iter().map(|c| c.cached_tokens).min().unwrap_or(0);
        json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices.iter().enumerate().map(|(i, c)| json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs.then(|| json!({"content": c.logprobs.iter().map(|l| chat_logprob(&tokenizer, l)).collect::<Vec<_>>()})),
                "finish_reason": finish_str(c.finish),
            })).collect::<Vec<_>>(),
            "usage": generation::usage(prompt_len, completion, cached),
            "system_fingerprint": Value::Null,
        })
    };
    generation::respond(&state, eof.map(|e| e.0), events, n, render).await
}

/// `--system-prompt merge`: system and developer messages leave the
/// conversation and their text (blank-line separated, in order) opens the
/// first user turn; with no user turn, it becomes one.
pub fn merge_system_messages(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let is_system = |m: &ChatMessage| m.role == "system" || m.role == "developer";
    let system: Vec<String> = messages
        .iter()
        .filter(|m| is_system(m))
        .map(|m| m.content.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    if system.is_empty() {
        return messages.into_iter().filter(|m| !is_system(m)).collect();
    }
    let preamble = system.join("\n\n");
    let mut out: Vec<ChatMessage> = messages.into_iter().filter(|m| !is_system(m)).collect();
    match out.iter_mut().find(|m| m.role == "user") {
        Some(first) => first.content = format!("{preamble}\n\n{}", first.content),
        None => out.insert(0, ChatMessage::new("user", preamble)),
    }
    out
}

/// The text of a token as OpenAI reports it ("▁" as a space; byte pieces as their byte).
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    if let Some(b) = tokenizer.byte_fallback(id) {
        return (String::from_utf8_lossy(&[b]).into_owned(), vec![b]);
    }
    let text = tokenizer
        .id_to_token(id)
        .unwrap_or_default()
        .replace('▁', " ");
    let bytes = text.as_bytes().to_vec();
    (text, bytes)
}

fn chat_logprob(tokenizer: &Tokenizer, l: &TokenLogprob) -> Value {
    let entry = |id: u32, lp: f32| {
        let (t, b) = token_text(tokenizer, id);
        json!({"token": t, "logprob": lp, "bytes": b})
    };
    let mut v = entry(l.token, l.logprob);
    v["top_logprobs"] = Value::Array(l.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
    v
}

struct ChatChunks {
    id: String,
    model: String,
    created: u64,
    n: usize,
    include_usage: bool,
    tokenizer: Arc<Tokenizer>,
    /// (prompt tokens, completion tokens so far)
    usage: (usize, usize),
    /// Per choice, prompt tokens served from the prefix cache, once admitted.
    cached: Vec<Option<usize>>,
}

impl ChatChunks {
    fn chunk(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "system_fingerprint": Value::Null, "choices": choices})
    }
}

impl ChunkWriter for ChatChunks {
    fn start(&mut self) -> Vec<Value> {
        (0..self.n)
            .map(|i| {
                self.chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]))
            })
            .collect()
    }

    fn event(&mut self, index: usize, ev: Event) -> Result<Vec<Value>, ApiError> {
        Ok(match ev {
            Event::Token { text, logprob, .. } => {
                self.usage.1 += 1;
                if text.is_empty() && logprob.is_none() {
                    return Ok(Vec::new());
                }
                let lp = logprob.map(|l| json!({"content": [chat_logprob(&self.tokenizer, &l)]}));
                vec![self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]))]
            }
            Event::Text(text) => {
                vec![self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]))]
            }
            Event::Done { reason, .. } => {
                vec![self.chunk(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish_str(Some(reason))}]))]
            }
            Event::Admitted { cached_tokens } => {
                if let Some(c) = self.cached.get_mut(index) {
                    *c = Some(cached_tokens);
                }
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
        let cached = self
            .cached
            .iter()
            .map(|c| c.unwrap_or(0))
            .min()
            .unwrap_or(0);
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = generation::usage(p, c, cached);
        vec![chunk]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    #[test]
    fn system_messages_open_the_first_user_turn() {
        let merged = merge_system_messages(vec![
            m("system", "Responda em português."),
            m("user", "Oi"),
            m("assistant", "Olá!"),
            m("developer", " Seja breve. "),
            m("user", "Tudo bem?"),
        ]);
        assert_eq!(
            merged,
            vec![
                m("user", "Responda em português.\n\nSeja breve.\n\nOi"),
                m("assistant", "Olá!"),
                m("user", "Tudo bem?"),
            ]
        );
        // No user turn: the system text becomes one.
        assert_eq!(
            merge_system_messages(vec![m("system", "S")]),
            vec![m("user", "S")]
        );
        // Nothing to merge.
        assert_eq!(
            merge_system_messages(vec![m("user", "Oi")]),
            vec![m("user", "Oi")]
        );
    }
}
