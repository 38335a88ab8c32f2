//! Every malformed model directory is an error that names the file and the
//! key or tensor at fault — never a panic.

mod common;

use std::path::Path;

use lhama_model::ModelFiles;
use safetensors::Dtype;
use serde_json::json;

/// Loads `dir` and returns the error message, failing if loading succeeds.
fn load_error(dir: &Path) -> String {
    match ModelFiles::load(dir) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            message.contains(p),
            "error {message:?} should mention {p:?}"
        );
    }
}

/// Applies `break_it` to a fresh tiny model and checks the load error.
fn case(break_it: impl FnOnce(&Path), parts: &[&str]) {
    let dir = common::tiny_model();
    break_it(dir.path());
    let msg = load_error(dir.path());
    assert_mentions(&msg, parts);
}

fn config_case(edit: impl FnOnce(&mut serde_json::Value), parts: &[&str]) {
    case(|d| common::edit_config(d, edit), parts);
}

fn tensor_case(
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, common::Raw>),
    parts: &[&str],
) {
    case(
        |d| {
            let path = d.join("model.safetensors");
            let mut t = common::read_tensors(&path);
            edit(&mut t);
            common::write_tensors(&path, &t);
        },
        parts,
    );
}

#[test]
fn missing_config() {
    // Says what a model directory must hold.
    case(
        |d| std::fs::remove_file(d.join("config.json")).unwrap(),
        &[
            "not a model directory",
            "no config.json",
            "tokenizer.json",
            "model.safetensors",
        ],
    );
    // A config.json that cannot be read: the OS error once, not twice.
    let dir = tempfile::tempdir().unwrap();
    lhama_model::synth::write_model(lhama_model::synth::Preset::Tiny, 0, dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    std::fs::create_dir(dir.path().join("config.json")).unwrap();
    let err = lhama_model::ModelFiles::load(dir.path()).err().unwrap();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("cannot read"), "{chain}");
    assert_eq!(chain.matches("os error").count(), 1, "{chain}");
}

#[test]
fn config_that_is_not_json() {
    case(
        |d| std::fs::write(d.join("config.json"), "{\"hidden_size\": 128,,}").unwrap(),
        &["config.json", "not valid JSON", "line 1"],
    );
    case(
        |d| std::fs::write(d.join("config.json"), "[1, 2]").unwrap(),
        &["config.json", "JSON object"],
    );
}

#[test]
fn other_architectures_are_refused() {
    config_case(
        |c| c["architectures"] = json!(["MistralForCausalLM"]),
        &[
            "config.json",
            "unsupported model",
            "MistralForCausalLM",
            "LlamaForCausalLM",
        ],
    );
}

#[test]
fn wrong_types_and_missing_keys_name_the_key() {
    config_case(
        |c| c["hidden_size"] = json!("128"),
        &["config.json", "key `hidden_size`", "invalid type"],
    );
    config_case(
        |c| {
            c.as_object_mut().unwrap().remove("num_hidden_layers");
        },
        &["config.json", "key `num_hidden_layers`", "missing"],
    );
    config_case(
        |c| c["intermediate_size"] = json!(0),
        &["key `intermediate_size`", "greater than 0"],
    );
    config_case(
        |c| c["num_key_value_heads"] = json!(3),
        &["key `num_key_value_heads`", "does not divide"],
    );
    config_case(
        |c| c["eos_token_id"] = json!(99999),
        &["key `eos_token_id`", "outside the vocabulary"],
    );
    config_case(
        |c| c["torch_dtype"] = json!("int8"),
        &["key `torch_dtype`", "int8"],
    );
    config_case(
        |c| c["hidden_act"] = json!("gelu"),
        &["unsupported model", "gelu"],
    );
    config_case(
        |c| c["attention_bias"] = json!(true),
        &["unsupported model", "attention_bias"],
    );
    config_case(
        |c| c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0}),
        &["key `rope_scaling.rope_type`", "yarn"],
    );
}

#[test]
fn unsupported_quantization_configs() {
    config_case(
        |c| c["quantization_config"]["quant_method"] = json!("gptq"),
        &["config.json", "quantization_config.quant_method", "gptq"],
    );
    config_case(
        |c| c["quantization_config"]["bits"] = json!(8),
        &["quantization_config.bits", "8-bit"],
    );
    config_case(
        |c| c["quantization_config"]["version"] = json!("gemv"),
        &["quantization_config.version", "gemv"],
    );
    config_case(
        |c| c["quantization_config"]["group_size"] = json!(100),
        &["quantization_config.group_size", "100"],
    );
    config_case(
        |c| c["quantization_config"]["zero_point"] = json!(false),
        &["quantization_config.zero_point"],
    );
    config_case(
        |c| c["quantization_config"]["group_size"] = json!(256),
        &[
            "quantization_config.group_size",
            "does not divide hidden_size",
        ],
    );
}

#[test]
fn bad_generation_config() {
    case(
        |d| {
            std::fs::write(
                d.join("generation_config.json"),
                "{\"temperature\": \"hot\"}",
            )
            .unwrap()
        },
        &["generation_config.json", "key `temperature`"],
    );
}

#[test]
fn tokenizer_files() {
    case(
        |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
        &["tokenizer.json", "cannot read"],
    );
    case(
        |d| std::fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap(),
        &["tokenizer.json", "tokenizer:"],
    );
    case(
        |d| {
            common::edit_json(&d.join("tokenizer_config.json"), |c| {
                c["chat_template"] = json!("{% for m in messages %}")
            })
        },
        &["tokenizer_config.json", "chat template"],
    );
    case(
        |d| {
            common::edit_json(&d.join("tokenizer_config.json"), |c| {
                c["eos_token"] = json!("<nope>")
            })
        },
        &["tokenizer_config.json", "key `eos_token`", "<nope>"],
    );
    case(
        |d| std::fs::write(d.join("tokenizer_config.json"), "not json").unwrap(),
        &["tokenizer_config.json", "not valid JSON"],
    );
}

#[test]
fn missing_or_truncated_weights() {
    case(
        |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(),
        &["model.safetensors", "model.safetensors.index.json"],
    );
    case(
        |d| {
            let p = d.join("model.safetensors");
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
        },
        &["model.safetensors", "not a valid safetensors file"],
    );
    case(
        |d| std::fs::write(d.join("model.safetensors"), b"\x05\x00").unwrap(),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn wrong_shapes_dtypes_and_missing_tensors() {
    tensor_case(
        |t| t.get_mut("model.norm.weight").unwrap().shape = vec![64, 2],
        &[
            "model.safetensors",
            "tensor `model.norm.weight`",
            "shape is [64, 2], expected [128]",
        ],
    );
    tensor_case(
        |t| {
            t.get_mut("model.layers.1.mlp.down_proj.qweight")
                .unwrap()
                .dtype = Dtype::F32
        },
        &[
            "tensor `model.layers.1.mlp.down_proj.qweight`",
            "dtype is F32, expected I32",
        ],
    );
    tensor_case(
        |t| t.get_mut("model.embed_tokens.weight").unwrap().dtype = Dtype::I16,
        &["tensor `model.embed_tokens.weight`", "dtype is I16"],
    );
    tensor_case(
        |t| {
            t.remove("model.layers.0.self_attn.k_proj.scales");
        },
        &["tensor `model.layers.0.self_attn.k_proj.scales` is missing"],
    );
    tensor_case(
        |t| {
            t.remove("lm_head.weight");
        },
        &["tensor `lm_head.weight` is missing"],
    );
}

#[test]
fn broken_shard_index() {
    case(
        |d| {
            std::fs::write(
                d.join("model.safetensors.index.json"),
                json!({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})
                    .to_string(),
            )
            .unwrap()
        },
        &["model-00002-of-00002.safetensors", "cannot read"],
    );
    case(
        |d| std::fs::write(d.join("model.safetensors.index.json"), "{").unwrap(),
        &["model.safetensors.index.json", "not valid JSON"],
    );
    case(
        |d| {
            std::fs::write(
                d.join("model.safetensors.index.json"),
                json!({"weight_map": {"x": "../escape.safetensors"}}).to_string(),
            )
            .unwrap()
        },
        &[
            "model.safetensors.index.json",
            "weight_map.x",
            "not a plain file name",
        ],
    );
}
