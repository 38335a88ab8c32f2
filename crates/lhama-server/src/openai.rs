//! OpenAI request types and their validation into engine parameters.

use std::collections::HashMap;

use lhama_engine::{GuidedSpec, RequestParams, SamplingParams};
use lhama_model::GenerationConfig;
use serde::Deserialize;

use crate::error::ApiError;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields shared by both endpoints (OpenAI's plus vLLM-style
/// extras), listed once: hands them to `$then!` after its own tokens.
macro_rules! with_sampling_fields {
    ($then:ident ! { $($head:tt)* }) => {
        $then! { $($head)*
            temperature: Option<f64>,
            top_p: Option<f64>,
            top_k: Option<i64>,
            min_p: Option<f64>,
            seed: Option<i64>,
            n: Option<i64>,
            max_tokens: Option<i64>,
            max_completion_tokens: Option<i64>,
            min_tokens: Option<i64>,
            stop: Option<StringOrList>,
            stop_token_ids: Option<Vec<i64>>,
            ignore_eos: Option<bool>,
            presence_penalty: Option<f64>,
            frequency_penalty: Option<f64>,
            repetition_penalty: Option<f64>,
            logit_bias: Option<HashMap<String, f64>>,
            skip_special_tokens: Option<bool>,
            guided_json: Option<serde_json::Value>,
            guided_regex: Option<String>,
            guided_choice: Option<Vec<String>>,
            guided_grammar: Option<String>,
            cache_salt: Option<String>,
        }
    };
}

macro_rules! sampling_struct {
    ($($field:ident : $ty:ty,)*) => {
        /// Sampling fields shared by both endpoints.
        #[derive(Debug, Clone, Default)]
        pub struct Sampling {
            $(pub $field: $ty,)*
        }
    };
}

with_sampling_fields!(sampling_struct! {});

/// Declares a request struct with the sampling fields inline (not
/// `#[serde(flatten)]`, which would hide the name of a field with a wrong
/// type) and a `sampling()` accessor.
macro_rules! request_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : $ty:ty,)* }
     $($sfield:ident : $sty:ty,)*) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
            $(pub $sfield: $sty,)*
        }

        impl $name {
            pub fn sampling(&self) -> Sampling {
                Sampling {
                    $($sfield: self.$sfield.clone(),)*
                }
            }
        }
    };
}

macro_rules! request_with_sampling {
    ($($body:tt)*) => {
        with_sampling_fields!(request_struct! { $($body)* });
    };
}

request_with_sampling! {
    #[derive(Debug, Clone, Deserialize)]
    pub struct ChatRequest {
        pub model: String,
        pub messages: Vec<Message>,
        #[serde(default)]
        pub stream: bool,
        pub stream_options: Option<StreamOptions>,
        #[serde(default)]
        pub logprobs: bool,
        pub top_logprobs: Option<i64>,
        pub response_format: Option<serde_json::Value>,
        pub tools: Option<Vec<serde_json::Value>>,
        pub tool_choice: Option<serde_json::Value>,
        pub functions: Option<Vec<serde_json::Value>>,
        pub function_call: Option<serde_json::Value>,
    }
}

impl ChatRequest {
    /// Features that would change what the reply must look like and that
    /// this server does not implement (tool calling): a 400 naming the
    /// parameter, never a reply that silently ignores them. Their neutral
    /// forms pass (empty `tools`, `tool_choice` "none" or "auto" without
    /// tools).
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        for (param, list) in [("tools", &self.tools), ("functions", &self.functions)] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(ApiError::invalid_param(
                    param,
                    format!("`{param}` (function calling) is not supported by this server"),
                ));
            }
        }
        for (param, choice) in [
            ("tool_choice", &self.tool_choice),
            ("function_call", &self.function_call),
        ] {
            if let Some(c) = choice
                && !matches!(c.as_str(), Some("none" | "auto"))
            {
                return Err(ApiError::invalid_param(
                    param,
                    format!(
                        "`{param}` must be \"none\" or \"auto\": this server does not call tools"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl ChatRequest {
    /// The structured-output constraint: `response_format` (json_object,
    /// json_schema) or one of vLLM's guided_* fields, at most one of them.
    pub fn guided(&self) -> Result<Option<(&'static str, GuidedSpec)>, ApiError> {
        let from_format = match &self.response_format {
            None => None,
            Some(f) => match f.get("type").and_then(|t| t.as_str()) {
                Some("text") => None,
                Some("json_object") => Some(("response_format", GuidedSpec::JsonObject)),
                Some("json_schema") => {
                    let schema = f
                        .get("json_schema")
                        .and_then(|j| j.get("schema"))
                        .filter(|s| s.is_object() || s.is_boolean())
                        .ok_or_else(|| {
                            ApiError::invalid_param(
                                "response_format.json_schema.schema",
                                "`response_format` of type \"json_schema\" needs `json_schema.schema`, a JSON schema object",
                            )
                        })?;
                    Some(("response_format", GuidedSpec::JsonSchema(schema.clone())))
                }
                _ => {
                    return Err(ApiError::invalid_param(
                        "response_format",
                        "`response_format` must be an object with `type` \"text\", \"json_object\" or \"json_schema\"",
                    ));
                }
            },
        };
        let from_fields = self.sampling().guided()?;
        match (from_format, from_fields) {
            (Some(_), Some((param, _))) => Err(ApiError::invalid_param(
                param,
                format!("`{param}` and `response_format` cannot be used together"),
            )),
            (a, b) => Ok(a.or(b)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

request_with_sampling! {
    #[derive(Debug, Clone, Deserialize)]
    pub struct CompletionRequest {
        pub model: String,
        pub prompt: Prompt,
        #[serde(default)]
        pub stream: bool,
        pub stream_options: Option<StreamOptions>,
        #[serde(default)]
        pub echo: bool,
        pub logprobs: Option<i64>,
        pub suffix: Option<String>,
        pub best_of: Option<i64>,
    }
}

pub const MAX_N: i64 = 16;
pub const MAX_TOP_LOGPROBS: i64 = 20;
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_LEN: usize = 256;

fn finite(param: &str, v: f64) -> Result<f64, ApiError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be a finite number"),
        ))
    }
}

fn in_range(param: &str, v: f64, lo: f64, hi: f64) -> Result<f32, ApiError> {
    let v = finite(param, v)?;
    if v < lo || v > hi {
        return Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(v as f32)
}

impl Sampling {
    /// vLLM's structured-output fields (`guided_json` as a schema object or
    /// its JSON text, `guided_regex`, `guided_choice`, `guided_grammar` in
    /// Lark syntax); at most one.
    pub fn guided(&self) -> Result<Option<(&'static str, GuidedSpec)>, ApiError> {
        let mut found: Vec<(&'static str, GuidedSpec)> = Vec::new();
        if let Some(j) = &self.guided_json {
            let schema = match j {
                serde_json::Value::String(text) => serde_json::from_str(text).map_err(|e| {
                    ApiError::invalid_param(
                        "guided_json",
                        format!("`guided_json` is not valid JSON: {e}"),
                    )
                })?,
                other => other.clone(),
            };
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(ApiError::invalid_param(
                    "guided_json",
                    "`guided_json` must be a JSON schema object",
                ));
            }
            found.push(("guided_json", GuidedSpec::JsonSchema(schema)));
        }
        if let Some(r) = &self.guided_regex {
            found.push(("guided_regex", GuidedSpec::Regex(r.clone())));
        }
        if let Some(c) = &self.guided_choice {
            if c.is_empty() {
                return Err(ApiError::invalid_param(
                    "guided_choice",
                    "`guided_choice` must list at least one string",
                ));
            }
            found.push(("guided_choice", GuidedSpec::Choice(c.clone())));
        }
        if let Some(g) = &self.guided_grammar {
            found.push(("guided_grammar", GuidedSpec::Grammar(g.clone())));
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|(p, _)| *p).collect();
            return Err(ApiError::invalid_param(
                found[1].0,
                format!("only one structured-output constraint may be given, got {names:?}"),
            ));
        }
        Ok(found.pop())
    }

    /// Number of choices per prompt.
    pub fn n(&self) -> Result<usize, ApiError> {
        match self.n {
            None => Ok(1),
            Some(n) if (1..=MAX_N).contains(&n) => Ok(n as usize),
            Some(n) => Err(ApiError::invalid_param(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            )),
        }
    }

    /// Validates every field; `default_max` applies when max_tokens is absent.
    pub fn to_params(
        &self,
        generation: &GenerationConfig,
        vocab: usize,
        default_max: usize,
    ) -> Result<RequestParams, ApiError> {
        let temperature = match self.temperature {
            Some(t) => in_range("temperature", t, 0.0, 2.0)?,
            None => match (generation.do_sample, generation.temperature) {
                (Some(false), _) => 0.0,
                (_, Some(t)) => t,
                (_, None) => 1.0,
            },
        };
        let top_p = match self.top_p {
            Some(p) => in_range("top_p", p, 0.0, 1.0)?,
            None => generation.top_p.unwrap_or(1.0),
        };
        if top_p <= 0.0 {
            return Err(ApiError::invalid_param(
                "top_p",
                "`top_p` must be greater than 0",
            ));
        }
        let top_k = match self.top_k {
            Some(k) if k == -1 || k == 0 => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid_param(
                    "top_k",
                    format!("`top_k` must be -1, 0 or positive, got {k}"),
                ));
            }
            None => generation.top_k.map_or(0, |k| k as usize),
        };
        let min_p = self
            .min_p
            .map(|p| in_range("min_p", p, 0.0, 1.0))
            .transpose()?
            .unwrap_or(0.0);
        let seed = self.seed.map(|s| s as u64);
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => default_max,
            Some(m) if m >= 0 => m as usize,
            Some(m) => {
                let param = if self.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                return Err(ApiError::invalid_param(
                    param,
                    format!("`{param}` must be at least 0, got {m}"),
                ));
            }
        };
        let min_tokens = match self.min_tokens {
            None => 0,
            Some(m) if m >= 0 && m as usize <= max_tokens => m as usize,
            Some(m) => {
                return Err(ApiError::invalid_param(
                    "min_tokens",
                    format!("`min_tokens` must be between 0 and max_tokens, got {m}"),
                ));
            }
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StringOrList::One(s)) => vec![s.clone()],
            Some(StringOrList::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "at most {MAX_STOP_STRINGS} stop strings, got {}",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(ApiError::invalid_param(
                "stop",
                format!("stop strings must be 1 to {MAX_STOP_LEN} bytes"),
            ));
        }
        let token = |param: &str, id: i64| -> Result<u32, ApiError> {
            if id < 0 || id as usize >= vocab {
                return Err(ApiError::invalid_param(
                    param,
                    format!("token id {id} is outside the vocabulary (0..{vocab})"),
                ));
            }
            Ok(id as u32)
        };
        let stop_token_ids = self
            .stop_token_ids
            .iter()
            .flatten()
            .map(|&id| token("stop_token_ids", id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut logit_bias = Vec::new();
        for (k, &v) in self.logit_bias.iter().flatten() {
            let id: i64 = k.parse().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias key {k:?} is not a token id"),
                )
            })?;
            logit_bias.push((
                token("logit_bias", id)?,
                in_range("logit_bias", v, -100.0, 100.0)?,
            ));
        }
        logit_bias.sort_by_key(|&(t, _)| t);
        Ok(RequestParams {
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k,
                min_p,
                seed,
            },
            max_tokens,
            min_tokens,
            stop,
            stop_token_ids,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            repetition_penalty: match self.repetition_penalty {
                Some(r) => in_range("repetition_penalty", r, 0.01, 10.0)?,
                None => generation.repetition_penalty.unwrap_or(1.0),
            },
            presence_penalty: self
                .presence_penalty
                .map(|p| in_range("presence_penalty", p, -2.0, 2.0))
                .transpose()?
                .unwrap_or(0.0),
            frequency_penalty: self
                .frequency_penalty
                .map(|p| in_range("frequency_penalty", p, -2.0, 2.0))
                .transpose()?
                .unwrap_or(0.0),
            logit_bias,
            logprobs: None,
            prompt_logprobs: None,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            // Compiled separately (generation::attach_guide).
            guide: None,
            // Set by the handler with the request's API key (crate::cache_salt).
            cache_salt: None,
        })
    }
}

/// top_logprobs / logprobs counts.
pub fn top_count(param: &str, v: i64) -> Result<usize, ApiError> {
    if (0..=MAX_TOP_LOGPROBS).contains(&v) {
        Ok(v as usize)
    } else {
        Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be between 0 and {MAX_TOP_LOGPROBS}, got {v}"),
        ))
    }
}

/// The text of a message: a string, or the concatenated text parts.
pub fn message_text(m: &Message, index: usize) -> Result<String, ApiError> {
    match &m.content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid_param(
                            &format!("messages[{index}].content"),
                            format!(
                                "content parts of type {kind:?} are not supported; only \"text\""
                            ),
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}
