//! Structured output: a grammar (JSON schema, regex, choice list, Lark
//! grammar) compiled by llguidance into a matcher that gives, before each
//! sampled token, the set of tokens allowed next. The engine applies the
//! mask to the row's logits before penalties, bias, sampling and logprobs,
//! so every one of them sees the masked distribution; the token drawn is fed
//! back to the matcher, and a finished grammar ends the sequence.
//!
//! One `GuideCompiler` per model holds llguidance's view of the vocabulary
//! (each token's bytes, from tokenizer.json); compiling a request's grammar
//! is bounded by llguidance's parser limits (lexer fuel, grammar size,
//! Earley items per mask), so a hostile schema fails instead of stalling.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GuidedSpec {
    /// A JSON value valid under this JSON schema.
    JsonSchema(Value),
    /// Any JSON object.
    JsonObject,
    /// Text matching this regular expression (whole output).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark syntax.
    Grammar(String),
}

/// Compiles grammars against one model's vocabulary.
pub struct GuideCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GuideCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuideCompiler")
    }
}

/// JSON is generated compactly (no free white space between tokens): a
/// schema's own `x-guidance` options win.
fn compact(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"}),
        );
    }
    schema
}

/// A regex that matches exactly one of `choices`.
fn choice_regex(choices: &[String]) -> String {
    choices
        .iter()
        .map(|c| regex_syntax::escape(c))
        .collect::<Vec<_>>()
        .join("|")
}

impl GuideCompiler {
    /// llguidance's vocabulary from tokenizer.json's content (token bytes;
    /// special tokens marked), padded to the model's `vocab_size`, with the
    /// model's end-of-sequence tokens.
    pub fn new(tokenizer_json: &Value, vocab_size: usize, eos_ids: &[u32]) -> Result<Self, String> {
        let mut words = llguidance::token_bytes_from_tokenizer_json(tokenizer_json)
            .map_err(|e| format!("tokenizer.json: {e}"))?;
        if words.len() > vocab_size {
            return Err(format!(
                "tokenizer.json has {} tokens, more than the model's vocab_size {vocab_size}",
                words.len()
            ));
        }
        words.resize(vocab_size, Vec::new());
        let Some(&eos) = eos_ids.first() else {
            return Err("the model has no end-of-sequence token".into());
        };
        if let Some(bad) = eos_ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(format!(
                "end-of-sequence token {bad} is outside the vocabulary ({vocab_size})"
            ));
        }
        let trie =
            TokTrie::from(&TokRxInfo::new(vocab_size as u32, eos), &words).with_eos_tokens(eos_ids);
        // Tokenizing text into tokens is only needed for forced tokens,
        // which the engine does not use; greedy over the trie is enough.
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// Compiles `spec`; the error says what llguidance could not accept.
    pub fn compile(&self, spec: &GuidedSpec) -> Result<Guide, String> {
        let grammar = match spec {
            GuidedSpec::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            GuidedSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
            }
            GuidedSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GuidedSpec::Choice(choices) => {
                if choices.is_empty() {
                    return Err("the list of choices is empty".into());
                }
                TopLevelGrammar::from_regex(&choice_regex(choices))
            }
            GuidedSpec::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        // llguidance reports errors as values; a panic inside it would be a
        // bug there, and must not take the request's thread down unreported.
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let parser = self.factory.create_parser(grammar);
            Matcher::new(parser)
        }))
        .map_err(|_| "the grammar compiler failed on this input".to_string())?;
        if let Some(e) = made.get_error() {
            return Err(e);
        }
        Ok(Guide {
            spec: Arc::new(spec.clone()),
            matcher: made,
        })
    }
}

/// One sequence's grammar state. Cloning gives an independent copy (each
/// choice of a request gets its own).
#[derive(Clone)]
pub struct Guide {
    spec: Arc<GuidedSpec>,
    matcher: Matcher,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide").field("spec", &self.spec).finish()
    }
}

/// Two guides are equal when they constrain to the same thing.
impl PartialEq for Guide {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Guide {
    pub fn spec(&self) -> &GuidedSpec {
        &self.spec
    }

    /// The tokens allowed next (end-of-sequence ones when the grammar is
    /// complete). Takes from microseconds to about a millisecond.
    pub fn allowed(&mut self) -> Result<SimpleVob, String> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("structured output: {e}"))
    }

    /// Advances past a sampled token.
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("structured output: {e}"))
    }

    /// The grammar is complete and allows nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Sets the logits of tokens the mask does not allow to −∞. Returns
/// whether any token is still allowed.
pub fn apply_mask(logits: &mut [f32], mask: &SimpleVob) -> bool {
    let mut any = false;
    for (id, l) in logits.iter_mut().enumerate() {
        if id < mask.len() && mask.get(id) {
            any |= *l > f32::NEG_INFINITY;
        } else {
            *l = f32::NEG_INFINITY;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary: every byte a token, plus `</s>` (id 256).
    fn compiler() -> GuideCompiler {
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u8 {
            vocab.insert(format!("<0x{b:02X}>"), json!(b));
        }
        let tokenizer = json!({
            "added_tokens": [{"id": 256, "content": "</s>", "special": true}],
            "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]},
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
        });
        GuideCompiler::new(&tokenizer, 258, &[256]).unwrap()
    }

    fn allowed(g: &mut Guide) -> Vec<u32> {
        let m = g.allowed().unwrap();
        (0..258u32).filter(|&t| m.get(t as usize)).collect()
    }

    #[test]
    fn a_choice_allows_only_its_strings_then_eos() {
        let c = compiler();
        let mut g = c
            .compile(&GuidedSpec::Choice(vec!["sim".into(), "não".into()]))
            .unwrap();
        // 's' or the first byte of "não".
        assert_eq!(allowed(&mut g), vec![b'n' as u32, b's' as u32]);
        for &b in b"sim" {
            g.accept(b as u32).unwrap();
        }
        // Nothing can follow: the grammar is finished, and only the end is left.
        assert!(g.is_finished());
        assert_eq!(allowed(&mut g), vec![256]);
        // A grammar that may go on or end allows the end beside its bytes.
        let mut g = c.compile(&GuidedSpec::Regex("[0-9]{1,3}".into())).unwrap();
        g.accept(b'7' as u32).unwrap();
        assert!(!g.is_finished());
        let next = allowed(&mut g);
        assert!(
            next.contains(&256) && next.contains(&(b'0' as u32)),
            "{next:?}"
        );
        g.accept(256).unwrap();
        assert!(g.is_finished());
    }

    #[test]
    fn json_is_compact_and_schemas_that_cannot_compile_say_why() {
        let c = compiler();
        let mut g = c
            .compile(&GuidedSpec::JsonSchema(json!({"type": "object",
                "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false})))
            .unwrap();
        assert_eq!(allowed(&mut g), vec![b'{' as u32], "no leading white space");
        g.accept(b'{' as u32).unwrap();
        assert_eq!(allowed(&mut g), vec![b'"' as u32]);
        let e = c
            .compile(&GuidedSpec::JsonSchema(json!({"type": "strin"})))
            .unwrap_err();
        assert!(e.contains("strin"), "{e}");
        let e = c
            .compile(&GuidedSpec::Regex("(unclosed".into()))
            .unwrap_err();
        assert!(!e.is_empty());
        assert!(c.compile(&GuidedSpec::Choice(vec![])).is_err());
    }

    #[test]
    fn masks_drop_what_is_not_allowed() {
        let c = compiler();
        let mut g = c.compile(&GuidedSpec::Regex("[0-9]+".into())).unwrap();
        let mask = g.allowed().unwrap();
        let mut logits = vec![0.0f32; 258];
        assert!(apply_mask(&mut logits, &mask));
        let kept: Vec<usize> = (0..258).filter(|&i| logits[i] == 0.0).collect();
        assert_eq!(kept, (b'0' as usize..=b'9' as usize).collect::<Vec<_>>());
    }
}
