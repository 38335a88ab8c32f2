//! Checkpoint variants the loader must accept: shards with an index, plain
//! fp16/bf16/fp32 weights instead of AWQ, tied embeddings, and no
//! generation_config.json.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Raw;
use half::{bf16, f16};
use lhama_model::awq;
use lhama_model::golden::prompt_logits;
use safetensors::Dtype;
use serde_json::json;

const PROMPT: [u32; 12] = [1, 510, 300, 268, 511, 44, 87, 300, 5, 260, 271, 2];

fn logits_of(dir: &Path) -> Vec<f32> {
    let (_, mut backend) = common::backend(dir, 8);
    prompt_logits(&mut backend, &PROMPT).expect("forward")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let dir = common::tiny_model();
    let reference = logits_of(dir.path());
    let path = dir.path().join("model.safetensors");
    let tensors = common::read_tensors(&path);
    std::fs::remove_file(&path).unwrap();
    let (mut first, mut second) = (BTreeMap::new(), BTreeMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in tensors.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(name.clone(), json!(file));
        if i % 2 == 0 {
            first.insert(name, t)
        } else {
            second.insert(name, t)
        };
    }
    common::write_tensors(&dir.path().join("model-00001-of-00002.safetensors"), &first);
    common::write_tensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &second,
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        json!({"metadata": {"total_size": 0}, "weight_map": map}).to_string(),
    )
    .unwrap();
    assert!(logits_of(dir.path()) == reference);
}

/// Replaces every AWQ layer by its dequantized weight ([N, K], torch layout)
/// in `dtype`, and drops quantization_config.
fn dequantize_checkpoint(dir: &Path, dtype: Dtype) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let group = cfg["quantization_config"]["group_size"].as_u64().unwrap() as usize;
    let path = dir.join("model.safetensors");
    let tensors = common::read_tensors(&path);
    let mut out = BTreeMap::new();
    for (name, t) in &tensors {
        if let Some(prefix) = name.strip_suffix(".qweight") {
            let (k, n) = (t.shape[0], t.shape[1] * 8);
            let words = |r: &Raw| -> Vec<u32> {
                r.data
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            };
            let scales: Vec<f16> = common::f16_to_f32(&tensors[&format!("{prefix}.scales")].data)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let w = awq::dequantize(
                &words(t),
                &words(&tensors[&format!("{prefix}.qzeros")]),
                &scales,
                k,
                n,
                group,
            );
            // transpose [K, N] -> [N, K]
            let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
            let data = match dtype {
                Dtype::F16 => wt
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => wt
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
                Dtype::F32 => wt.iter().flat_map(|&v| v.to_le_bytes()).collect(),
                other => panic!("{other:?}"),
            };
            out.insert(
                format!("{prefix}.weight"),
                Raw {
                    dtype,
                    shape: vec![n, k],
                    data,
                },
            );
        } else if !name.ends_with(".qzeros") && !name.ends_with(".scales") {
            out.insert(name.clone(), t.clone());
        }
    }
    common::write_tensors(&path, &out);
    common::edit_config(dir, |c| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
}

#[test]
fn plain_float_checkpoints_compute_the_same_function() {
    let dir = common::tiny_model();
    let reference = logits_of(dir.path());
    // f32 holds the dequantized values exactly; f16 and bf16 round them.
    for (dtype, tol) in [(Dtype::F32, 1e-4), (Dtype::F16, 2e-2), (Dtype::BF16, 0.2)] {
        let d = common::tiny_model();
        dequantize_checkpoint(d.path(), dtype);
        let diff = max_diff(&logits_of(d.path()), &reference);
        assert!(diff <= tol, "{dtype:?}: max |diff| {diff} > {tol}");
    }
}

#[test]
fn tied_embeddings_use_the_embedding_as_lm_head() {
    let dir = common::tiny_model();
    let path = dir.path().join("model.safetensors");
    let mut tensors = common::read_tensors(&path);
    // Untied model whose lm_head is a copy of the embedding ...
    let embed = tensors["model.embed_tokens.weight"].clone();
    tensors.insert("lm_head.weight".into(), embed);
    common::write_tensors(&path, &tensors);
    let untied = logits_of(dir.path());
    // ... equals the tied model without lm_head.weight.
    tensors.remove("lm_head.weight");
    common::write_tensors(&path, &tensors);
    common::edit_config(dir.path(), |c| c["tie_word_embeddings"] = json!(true));
    assert!(logits_of(dir.path()) == untied);
}

#[test]
fn generation_config_is_optional() {
    let dir = common::tiny_model();
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    let files = lhama_model::ModelFiles::load(dir.path()).expect("load without generation_config");
    assert_eq!(files.generation, lhama_model::GenerationConfig::default());
    assert_eq!(files.eos_token_ids(), vec![2]);
}

#[test]
fn synth_is_deterministic() {
    let read_all = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let a = common::tiny_model();
    let b = common::tiny_model();
    assert!(
        read_all(a.path()) == read_all(b.path()),
        "same seed, different bytes"
    );
    let c = tempfile::tempdir().unwrap();
    lhama_model::synth::write_model(lhama_model::synth::Preset::Tiny, 1, c.path()).unwrap();
    let wa = std::fs::read(a.path().join("model.safetensors")).unwrap();
    let wc = std::fs::read(c.path().join("model.safetensors")).unwrap();
    assert_ne!(wa, wc, "another seed should give other weights");
}
