//! Loading a model for the CPU backend, shared by the subcommands.

use std::path::Path;

use anyhow::Context;
use lhama_model::cpu::CpuBackend;
use lhama_model::golden::{self, Golden};
use lhama_model::weights::LlamaWeights;
use lhama_model::{KvGeometry, LlamaConfig, ModelFiles, source};

pub const BLOCK_SIZE: usize = 16;

/// Resolves `--model` (directory or Hub repo id) and loads every file.
pub fn load_model(spec: &str) -> anyhow::Result<ModelFiles> {
    let dir = source::resolve_model_dir(spec)?;
    let files = ModelFiles::load(&dir)?;
    tracing::info!(
        model = %dir.display(),
        layers = files.config.num_layers,
        hidden = files.config.hidden_size,
        vocab = files.config.vocab_size,
        awq = files.config.awq.is_some(),
        "model loaded"
    );
    Ok(files)
}

/// A CPU backend with a KV pool of at least `tokens` tokens.
pub fn cpu_backend(config: &LlamaConfig, weights: LlamaWeights, tokens: usize) -> CpuBackend {
    let kv = KvGeometry {
        num_blocks: tokens.div_ceil(BLOCK_SIZE).max(1),
        block_size: BLOCK_SIZE,
    };
    CpuBackend::new(config, weights, kv)
}

pub fn verify(model: &str, golden_path: &Path, tolerance: f32) -> anyhow::Result<()> {
    let ModelFiles {
        config,
        tokenizer,
        weights,
        ..
    } = load_model(model)?;
    let golden = Golden::from_file(golden_path)?;
    let longest = golden
        .prompts
        .iter()
        .map(|p| p.ids.len() + p.greedy.len())
        .max()
        .unwrap_or(1);
    let mut backend = cpu_backend(&config, weights, longest);
    let report =
        golden::compare(&mut backend, &tokenizer, &golden).context("running the goldens")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(
        report.max_abs_logit_diff <= tolerance,
        "logits differ by up to {} (tolerance {tolerance})",
        report.max_abs_logit_diff
    );
    anyhow::ensure!(
        report.greedy_mismatches == 0,
        "{} greedy continuations differ",
        report.greedy_mismatches
    );
    anyhow::ensure!(
        report.chat_mismatches.is_empty(),
        "{} chat renderings differ",
        report.chat_mismatches.len()
    );
    println!(
        "verify: ok ({} greedy steps identical)",
        report.greedy_steps
    );
    Ok(())
}
