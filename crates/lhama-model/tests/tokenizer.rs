//! The synthetic tokenizer has the real checkpoint's layout, and the
//! tokenizer + template layer behaves as Hugging Face's does.

mod common;

use lhama_model::synth::{Preset, write_metadata};
use lhama_model::{ChatMessage, TemplateError, Tokenizer};

#[test]
fn special_and_byte_tokens_sit_where_the_real_model_has_them() {
    for (preset, vocab) in [(Preset::Tiny, 512u32), (Preset::Ttl460m, 32002)] {
        let dir = tempfile::tempdir().unwrap();
        write_metadata(preset, dir.path()).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.vocab_size() as u32, vocab);
        for (id, piece) in [
            (0, "<unk>"),
            (1, "<s>"),
            (2, "</s>"),
            (3, "<0x00>"),
            (3 + 0xC3, "<0xC3>"),
            (258, "<0xFF>"),
        ] {
            assert_eq!(tok.token_to_id(piece), Some(id), "{preset:?} {piece}");
        }
        assert_eq!(tok.token_to_id("<instruction>"), Some(vocab - 2));
        assert_eq!(tok.token_to_id("</instruction>"), Some(vocab - 1));
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_id(), Some(2));
        // The real checkpoint's config must load with this tokenizer.
        lhama_model::LlamaConfig::from_file(&dir.path().join("config.json")).unwrap();
    }
}

#[test]
fn byte_fallback_roundtrips_any_text() {
    let dir = common::tiny_model();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let text = "Olá, coração! 日本語 ça — 🙂";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    let bytes_used = ids.iter().filter(|&&i| (3..259).contains(&i)).count();
    assert!(
        bytes_used >= 9 + 4,
        "CJK and emoji need byte-fallback pieces, got {ids:?}"
    );
    assert!(
        !ids.contains(&0),
        "no <unk>: byte fallback covers everything"
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
}

#[test]
fn chat_template_renders_and_raises_like_transformers() {
    let dir = common::tiny_model();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let text = tok
        .apply_chat_template(
            &[ChatMessage::new("user", "Qual a capital do Brasil?")],
            true,
        )
        .unwrap();
    assert_eq!(
        text,
        "<s><instruction>Qual a capital do Brasil?</instruction>"
    );
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids[..2], [1, 510]);
    assert_eq!(*ids.last().unwrap(), 511);
    let err = tok
        .apply_chat_template(
            &[
                ChatMessage::new("system", "x"),
                ChatMessage::new("user", "y"),
            ],
            true,
        )
        .unwrap_err();
    assert_eq!(
        err,
        TemplateError::Raised(
            "Conversation roles must alternate user/assistant/user/assistant/...".into()
        )
    );
}

#[test]
fn template_lists_and_missing_templates() {
    let dir = common::tiny_model();
    common::edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c["chat_template"] = serde_json::json!([
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] | upper }}"}
        ]);
    });
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(
        tok.apply_chat_template(&[ChatMessage::new("user", "oi")], true)
            .unwrap(),
        "<s>OI"
    );

    common::edit_json(&dir.path().join("tokenizer_config.json"), |c| {
        c.as_object_mut().unwrap().remove("chat_template");
    });
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "oi")], true)
        .unwrap_err();
    assert!(err.to_string().contains("no chat_template"), "{err}");
}
