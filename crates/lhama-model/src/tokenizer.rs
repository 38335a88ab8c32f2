//! tokenizer.json (through the `tokenizers` crate) plus what
//! tokenizer_config.json adds: special-token strings and the chat template.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result, read_json};
use crate::template::{ChatMessage, ChatTemplate, TemplateError};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    chat_template: Option<ChatTemplate>,
    /// Bytes of the longest piece in the vocabulary (added tokens included).
    max_piece_bytes: usize,
    /// The byte each byte-fallback piece (`<0xNN>`) stands for, by id:
    /// looked up per generated token, so built once at load.
    byte_pieces: Vec<Option<u8>>,
}

/// `"<s>"` or `{"content": "<s>", ...}`: both forms occur in tokenizer_config.json.
fn token_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The template: a string, or a list of `{name, template}` from which the
/// one named "default" is taken.
fn template_source(path: &Path, value: Option<&Value>) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                if item.get("name").and_then(Value::as_str) == Some("default")
                    && let Some(t) = item.get("template").and_then(Value::as_str)
                {
                    return Ok(Some(t.to_string()));
                }
            }
            Err(ModelError::config(
                path,
                "chat_template",
                "a list without a \"default\" entry",
            ))
        }
        Some(_) => Err(ModelError::config(
            path,
            "chat_template",
            "neither a string nor a list",
        )),
    }
}

/// The byte of a byte-fallback piece, `<0xNN>`.
fn byte_of_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).map_err(|e| ModelError::io(&tok_path, e))?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| ModelError::Tokenizer {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            let v = read_json(&cfg_path)?;
            if !v.is_object() {
                return Err(ModelError::Json {
                    path: cfg_path,
                    message: "expected a JSON object at the top level".into(),
                });
            }
            v
        } else {
            Value::Null
        };
        let bos_token = token_string(cfg.get("bos_token"));
        let eos_token = token_string(cfg.get("eos_token"));
        let lookup = |tok: &Option<String>, key: &str| -> Result<Option<u32>> {
            match tok {
                None => Ok(None),
                Some(t) => inner.token_to_id(t).map(Some).ok_or_else(|| {
                    ModelError::config(&cfg_path, key, format!("{t:?} is not in tokenizer.json"))
                }),
            }
        };
        let bos_id = lookup(&bos_token, "bos_token")?;
        let eos_id = lookup(&eos_token, "eos_token")?;
        let chat_template = match template_source(&cfg_path, cfg.get("chat_template"))? {
            None => None,
            Some(src) => {
                Some(
                    ChatTemplate::new(&src).map_err(|message| ModelError::TemplateSyntax {
                        path: cfg_path.clone(),
                        message,
                    })?,
                )
            }
        };
        let vocab = inner.get_vocab(true);
        let max_piece_bytes = vocab.keys().map(String::len).max().unwrap_or(1);
        let mut byte_pieces = vec![None; vocab.values().max().map_or(0, |&id| id as usize + 1)];
        for (piece, &id) in &vocab {
            byte_pieces[id as usize] = byte_of_piece(piece);
        }
        Ok(Self {
            inner,
            max_piece_bytes,
            byte_pieces,
            bos_token,
            eos_token,
            bos_id,
            eos_id,
            chat_template,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Bytes of the longest piece in the vocabulary: a text of B bytes
    /// encodes to at least B / max_piece_bytes tokens when normalization
    /// does not shorten it (Llama's Metaspace only lengthens it).
    pub fn max_piece_bytes(&self) -> usize {
        self.max_piece_bytes
    }

    /// The byte a byte-fallback piece (`<0xNN>`) stands for.
    pub fn byte_fallback(&self, id: u32) -> Option<u8> {
        self.byte_pieces.get(id as usize).copied().flatten()
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Replaces the model's chat template (`--chat-template FILE`).
    pub fn set_chat_template(&mut self, template: ChatTemplate) {
        self.chat_template = Some(template);
    }

    /// Encodes text; `add_special_tokens` applies the tokenizer's own
    /// post-processor (BOS for Llama).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Decodes ids; byte-fallback tokens are merged back into characters, and
    /// an incomplete UTF-8 sequence comes out as U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| e.to_string())
    }

    /// Renders a conversation with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            TemplateError::Render("this model has no chat_template in tokenizer_config.json".into())
        })?;
        template.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }
}
