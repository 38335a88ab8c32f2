//! Incremental detokenization with the synthetic Llama tokenizer: no broken
//! characters in any delta, and deltas that add up to the whole decoding.

use lhama_engine::IncrementalDecoder;
use lhama_model::Tokenizer;
use lhama_model::rng::SplitMix64;
use lhama_model::synth::{Preset, write_metadata};

fn tokenizer() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    write_metadata(Preset::Tiny, dir.path()).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    (dir, tok)
}

const BYTE0: u32 = 3; // <0x00>

#[test]
fn a_character_split_over_byte_tokens_arrives_whole() {
    let (_d, tok) = tokenizer();
    let mut dec = IncrementalDecoder::new(true);
    let a = tok
        .token_to_id("▁a")
        .or_else(|| tok.token_to_id("a"))
        .unwrap();
    assert_eq!(dec.push(&tok, a).unwrap().as_deref(), Some("a"));
    // "日" is E6 97 A5: three byte-fallback tokens.
    assert_eq!(dec.push(&tok, BYTE0 + 0xE6).unwrap(), None);
    assert_eq!(dec.push(&tok, BYTE0 + 0x97).unwrap(), None);
    assert_eq!(dec.push(&tok, BYTE0 + 0xA5).unwrap().as_deref(), Some("日"));
    // "ã" as C3 A3.
    assert_eq!(dec.push(&tok, BYTE0 + 0xC3).unwrap(), None);
    assert_eq!(dec.push(&tok, BYTE0 + 0xA3).unwrap().as_deref(), Some("ã"));
}

fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut dec = IncrementalDecoder::new(true);
    let mut deltas = Vec::new();
    for &id in ids {
        deltas.extend(dec.push(tok, id).unwrap());
    }
    deltas.extend(dec.finish(tok).unwrap());
    deltas
}

#[test]
fn deltas_of_real_text_concatenate_to_the_full_decoding() {
    let (_d, tok) = tokenizer();
    let alphabet: Vec<char> = "abc ãçéõê日本語🙂 ,.!Ωж".chars().collect();
    let mut g = SplitMix64::new(3);
    for case in 0..100 {
        let text: String = (0..30)
            .map(|_| alphabet[(g.next_u64() % alphabet.len() as u64) as usize])
            .collect();
        let ids = tok.encode(&text, false).unwrap();
        let deltas = stream(&tok, &ids);
        for d in &deltas {
            assert!(
                !d.contains('\u{FFFD}'),
                "case {case}: broken character in {d:?}"
            );
        }
        assert_eq!(
            deltas.concat(),
            tok.decode(&ids, true).unwrap(),
            "case {case}: {text:?}"
        );
    }
}

#[test]
fn arbitrary_ids_never_stall_the_stream() {
    let (_d, tok) = tokenizer();
    let vocab = tok.vocab_size() as u64;
    let mut g = SplitMix64::new(4);
    for case in 0..100 {
        // Half byte tokens, many of them invalid UTF-8 runs.
        let ids: Vec<u32> = (0..40)
            .map(|_| {
                if g.next_u64().is_multiple_of(2) {
                    BYTE0 + 0x80 + (g.next_u64() % 0x60) as u32
                } else {
                    (3 + g.next_u64() % (vocab - 3)) as u32
                }
            })
            .collect();
        let text = stream(&tok, &ids).concat();
        // Whatever was held back is out by the end: the last word is there.
        let full = tok.decode(&ids, true).unwrap();
        let tail: String = full
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        assert!(
            text.ends_with(&tail.chars().rev().collect::<String>()),
            "case {case}: {text:?} vs {full:?}"
        );
        assert!(
            text.chars().count() + 8 >= full.chars().count(),
            "case {case}: text lost"
        );
    }
}

#[test]
fn invalid_bytes_are_released_at_once_as_replacement_characters() {
    let (_d, tok) = tokenizer();
    let mut dec = IncrementalDecoder::new(true);
    // <0xFF> can never start a character: each one is a U+FFFD of its own,
    // sent with its token (it used to hold every later delta back).
    for i in 0..500 {
        assert_eq!(
            dec.push(&tok, BYTE0 + 0xFF).unwrap().as_deref(),
            Some("\u{FFFD}"),
            "token {i}"
        );
    }
    // A valid start is still held until its character is complete ...
    assert_eq!(dec.push(&tok, BYTE0 + 0xC3).unwrap(), None);
    assert_eq!(dec.push(&tok, BYTE0 + 0xA3).unwrap().as_deref(), Some("ã"));
    // ... and released as U+FFFD when the next byte cannot continue it.
    assert_eq!(dec.push(&tok, BYTE0 + 0xE6).unwrap(), None);
    let got = dec.push(&tok, BYTE0 + 0x41).unwrap().unwrap_or_default();
    assert!(got.starts_with('\u{FFFD}'), "{got:?}");
    assert_eq!(dec.finish(&tok).unwrap(), None, "nothing left behind");
}
