//! Synthetic checkpoints in exactly the real TeenyTinyLlama-460m-Chat-awq
//! format: random fp16 weights, quantized and packed the AutoAWQ way, with
//! config.json, generation_config.json, tokenizer.json and a
//! tokenizer_config.json carrying the real chat template. Same seed, same bytes.

pub mod vocab;

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use rayon::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::awq;
use crate::error::{ModelError, Result};
use crate::rng::SplitMix64;

/// The real model's chat template, verbatim.
pub const TTL_CHAT_TEMPLATE: &str = "{{bos_token}}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '<instruction>' + message['content'].strip() + '</instruction>'}}{% elif message['role'] == 'assistant' %}{{ message['content'].strip() + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Small enough for fast tests; GQA so the general path is exercised.
    Tiny,
    /// The real model's exact shapes.
    Ttl460m,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiny" => Ok(Self::Tiny),
            "ttl-460m" => Ok(Self::Ttl460m),
            other => Err(format!("unknown preset {other:?} (tiny, ttl-460m)")),
        }
    }
}

/// Shapes of a synthetic model.
#[derive(Debug, Clone, Copy)]
pub struct Shapes {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// SentencePiece pieces; the two instruction tokens come after.
    pub model_vocab: usize,
    pub group_size: usize,
    pub max_positions: usize,
}

impl Preset {
    pub fn shapes(self) -> Shapes {
        match self {
            Self::Tiny => Shapes {
                hidden: 128,
                intermediate: 256,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                model_vocab: 510,
                group_size: 64,
                max_positions: 512,
            },
            Self::Ttl460m => Shapes {
                hidden: 1024,
                intermediate: 4096,
                layers: 24,
                heads: 16,
                kv_heads: 16,
                model_vocab: 32000,
                group_size: 128,
                max_positions: 2048,
            },
        }
    }
}

/// Standard deviations of the random weights: chosen so activations stay
/// O(1) through the layers and logits are spread widely enough that greedy
/// decoding has no near-ties.
fn normal_f32(seed: u64, name: &str, len: usize, std: f64, mean: f64) -> Vec<f32> {
    let mut g = SplitMix64::for_stream(seed, name);
    (0..len)
        .map(|_| (mean + std * g.next_normal()) as f32)
        .collect()
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

fn f16s_bytes(values: &[f16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// One AWQ layer: random W [K, N] rounded to fp16, then quantized.
fn awq_layer(
    seed: u64,
    prefix: &str,
    k: usize,
    n: usize,
    group: usize,
) -> Vec<(String, OwnedTensor)> {
    let w: Vec<f32> = normal_f32(seed, prefix, k * n, 1.0 / (k as f64).sqrt(), 0.0)
        .into_iter()
        .map(|v| f16::from_f32(v).to_f32())
        .collect();
    let q = awq::quantize(&w, k, n, group);
    vec![
        (
            format!("{prefix}.qweight"),
            OwnedTensor {
                dtype: Dtype::I32,
                shape: vec![k, n / 8],
                data: u32_bytes(&q.qweight),
            },
        ),
        (
            format!("{prefix}.qzeros"),
            OwnedTensor {
                dtype: Dtype::I32,
                shape: vec![k / group, n / 8],
                data: u32_bytes(&q.qzeros),
            },
        ),
        (
            format!("{prefix}.scales"),
            OwnedTensor {
                dtype: Dtype::F16,
                shape: vec![k / group, n],
                data: f16s_bytes(&q.scales),
            },
        ),
    ]
}

fn tensors(s: &Shapes, seed: u64) -> BTreeMap<String, OwnedTensor> {
    let vocab = s.model_vocab + 2;
    let hd = s.hidden / s.heads;
    let (q_out, kv_out) = (s.heads * hd, s.kv_heads * hd);
    let mut out: BTreeMap<String, OwnedTensor> = (0..s.layers)
        .into_par_iter()
        .flat_map_iter(|l| {
            let p = format!("model.layers.{l}");
            let g = s.group_size;
            let mut t = Vec::new();
            for (name, k, n) in [
                ("self_attn.q_proj", s.hidden, q_out),
                ("self_attn.k_proj", s.hidden, kv_out),
                ("self_attn.v_proj", s.hidden, kv_out),
                ("self_attn.o_proj", q_out, s.hidden),
                ("mlp.gate_proj", s.hidden, s.intermediate),
                ("mlp.up_proj", s.hidden, s.intermediate),
                ("mlp.down_proj", s.intermediate, s.hidden),
            ] {
                t.extend(awq_layer(seed, &format!("{p}.{name}"), k, n, g));
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                let name = format!("{p}.{norm}.weight");
                let data = f16_bytes(&normal_f32(seed, &name, s.hidden, 0.1, 1.0));
                t.push((
                    name,
                    OwnedTensor {
                        dtype: Dtype::F16,
                        shape: vec![s.hidden],
                        data,
                    },
                ));
            }
            t
        })
        .collect();
    let dense = [
        ("model.embed_tokens.weight", vec![vocab, s.hidden], 1.0, 0.0),
        ("model.norm.weight", vec![s.hidden], 0.1, 1.0),
        (
            "lm_head.weight",
            vec![vocab, s.hidden],
            4.0 / (s.hidden as f64).sqrt(),
            0.0,
        ),
    ];
    for (name, shape, std, mean) in dense {
        let len = shape.iter().product();
        let data = f16_bytes(&normal_f32(seed, name, len, std, mean));
        out.insert(
            name.to_string(),
            OwnedTensor {
                dtype: Dtype::F16,
                shape,
                data,
            },
        );
    }
    out
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serializing a JSON value cannot fail");
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// Writes a complete model directory for `preset` into `out`.
pub fn write_model(preset: Preset, seed: u64, out: &Path) -> Result<()> {
    write_metadata(preset, out)?;
    write_weights(preset, seed, out)
}

/// Writes everything but the weights: config.json, generation_config.json,
/// tokenizer.json and tokenizer_config.json.
pub fn write_metadata(preset: Preset, out: &Path) -> Result<()> {
    let s = preset.shapes();
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let vocab = s.model_vocab + 2;
    write_json(
        &out.join("config.json"),
        &json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": s.hidden,
            "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads,
            "vocab_size": vocab,
            "max_position_embeddings": s.max_positions,
            "rope_theta": 10000.0,
            "rope_scaling": null,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "tie_word_embeddings": false,
            "use_cache": true,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "torch_dtype": "float16",
            "quantization_config": {
                "bits": 4,
                "group_size": s.group_size,
                "quant_method": "awq",
                "version": "gemm",
                "zero_point": true,
            },
        }),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}),
    )?;
    write_json(
        &out.join("tokenizer.json"),
        &vocab::tokenizer_json(s.model_vocab),
    )?;
    let added = |content: &str| {
        json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false,
               "single_word": false, "special": true})
    };
    write_json(
        &out.join("tokenizer_config.json"),
        &json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "added_tokens_decoder": {
                "0": added(vocab::UNK),
                "1": added(vocab::BOS),
                "2": added(vocab::EOS),
                (s.model_vocab).to_string(): added(vocab::INSTRUCTION_OPEN),
                (s.model_vocab + 1).to_string(): added(vocab::INSTRUCTION_CLOSE),
            },
            "bos_token": vocab::BOS,
            "eos_token": vocab::EOS,
            "unk_token": vocab::UNK,
            "chat_template": TTL_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": false,
            "legacy": false,
            "model_max_length": s.max_positions,
            "tokenizer_class": "LlamaTokenizer",
        }),
    )
}

/// Writes model.safetensors: every tensor the config calls for.
pub fn write_weights(preset: Preset, seed: u64, out: &Path) -> Result<()> {
    let tensors = tensors(&preset.shapes(), seed);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .expect("synthetic tensors have consistent shape and byte length");
            (name.clone(), view)
        })
        .collect();
    let path = out.join(crate::safetensors_io::SINGLE_FILE);
    let metadata = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    safetensors::serialize_to_file(views, metadata, &path).map_err(|e| ModelError::Write {
        path: path.clone(),
        message: e.to_string(),
    })
}
