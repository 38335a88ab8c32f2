//! A Llama-style SentencePiece BPE tokenizer.json for synthetic checkpoints:
//! `<unk>`, `<s>`, `</s>` at 0..3, the 256 `<0xNN>` byte-fallback pieces, single
//! characters, then merged pieces (Portuguese words first, then systematic
//! letter sequences) up to the vocabulary size, and the chat model's
//! `<instruction>` / `</instruction>` as added special tokens at the end.

use std::collections::HashSet;

use serde_json::{Value, json};

/// Common Portuguese words: their merge chains come first, so real text
/// tokenizes into word-sized pieces.
const WORDS: &[&str] = &[
    "que",
    "de",
    "não",
    "o",
    "a",
    "e",
    "do",
    "da",
    "em",
    "um",
    "para",
    "é",
    "com",
    "uma",
    "os",
    "no",
    "se",
    "na",
    "por",
    "mais",
    "as",
    "dos",
    "como",
    "mas",
    "foi",
    "ao",
    "ele",
    "das",
    "tem",
    "seu",
    "sua",
    "ou",
    "ser",
    "quando",
    "muito",
    "há",
    "nos",
    "já",
    "está",
    "eu",
    "também",
    "só",
    "pelo",
    "pela",
    "até",
    "isso",
    "ela",
    "entre",
    "era",
    "depois",
    "sem",
    "mesmo",
    "aos",
    "ter",
    "seus",
    "quem",
    "nas",
    "me",
    "esse",
    "eles",
    "estão",
    "você",
    "qual",
    "capital",
    "Brasil",
    "Brasília",
    "Qual",
    "Olá",
    "olá",
    "obrigado",
    "bom",
    "dia",
    "pergunta",
    "resposta",
    "modelo",
    "linguagem",
    "português",
    "cidade",
    "país",
    "nação",
    "ajudar",
    "posso",
    "sobre",
    "informação",
    "exemplo",
    "tudo",
    "bem",
    "sim",
    "Sim",
    "Não",
    "A",
    "O",
    "Eu",
    "Você",
    "Como",
    "Por",
    "favor",
    "coração",
    "ação",
    "são",
    "então",
];

/// Characters that get a piece of their own (besides the byte fallback).
const CHARS: &str = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:-'\"()%/áàâãéêíóôõúüçÁÀÂÃÉÊÍÓÔÕÚÇ";

/// Letters the systematic merges extend pieces with.
const FILL_LETTERS: &str = "aeosrinmdutclpvgqbfhãçéjzxíóêáõú";

pub const UNK: &str = "<unk>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const INSTRUCTION_OPEN: &str = "<instruction>";
pub const INSTRUCTION_CLOSE: &str = "</instruction>";

struct VocabBuilder {
    pieces: Vec<String>,
    seen: HashSet<String>,
    merges: Vec<(String, String)>,
    limit: usize,
}

impl VocabBuilder {
    fn full(&self) -> bool {
        self.pieces.len() >= self.limit
    }

    fn add_piece(&mut self, piece: String) {
        if !self.full() && self.seen.insert(piece.clone()) {
            self.pieces.push(piece);
        }
    }

    fn add_merge(&mut self, left: &str, right: &str) {
        let merged = format!("{left}{right}");
        if self.full() || self.seen.contains(&merged) {
            return;
        }
        debug_assert!(self.seen.contains(left) && self.seen.contains(right));
        self.merges.push((left.to_string(), right.to_string()));
        self.add_piece(merged);
    }
}

/// Builds tokenizer.json for a model vocabulary of `model_vocab` pieces
/// (the two instruction tokens come after them).
pub fn tokenizer_json(model_vocab: usize) -> Value {
    let mut b = VocabBuilder {
        pieces: Vec::new(),
        seen: HashSet::new(),
        merges: Vec::new(),
        limit: model_vocab,
    };
    for s in [UNK, BOS, EOS] {
        b.add_piece(s.to_string());
    }
    for byte in 0..=255u8 {
        b.add_piece(format!("<0x{byte:02X}>"));
    }
    for c in CHARS.chars() {
        b.add_piece(c.to_string());
    }
    for word in WORDS {
        let chars: Vec<char> = std::iter::once('▁').chain(word.chars()).collect();
        let mut prefix = chars[0].to_string();
        for c in &chars[1..] {
            let next = c.to_string();
            b.add_merge(&prefix, &next);
            prefix.push(*c);
        }
    }
    // Systematic fill: extend every piece, in the order pieces were made, by
    // each fill letter, breadth first, until the vocabulary is full.
    let fill: Vec<String> = FILL_LETTERS.chars().map(|c| c.to_string()).collect();
    let mut frontier: Vec<String> = std::iter::once("▁".to_string())
        .chain(fill.iter().cloned())
        .collect();
    while !b.full() && !frontier.is_empty() {
        let mut next = Vec::new();
        for piece in &frontier {
            for letter in &fill {
                if b.full() {
                    break;
                }
                let merged = format!("{piece}{letter}");
                if !b.seen.contains(&merged) {
                    b.add_merge(piece, letter);
                    next.push(merged);
                }
            }
        }
        frontier = next;
    }
    let vocab: serde_json::Map<String, Value> = b
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = b
        .merges
        .iter()
        .map(|(l, r)| json!(format!("{l} {r}")))
        .collect();
    let n = b.pieces.len();
    let added = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            added(0, UNK), added(1, BOS), added(2, EOS),
            added(n, INSTRUCTION_OPEN), added(n + 1, INSTRUCTION_CLOSE),
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": BOS, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": BOS, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {BOS: {"id": BOS, "ids": [1], "tokens": [BOS]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": UNK,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    })
}
