//! Loading a model for the CPU backend, shared by the subcommands.

use std::path::Path;

use anyhow::Context;
use lhama_cpu::CpuBackend;
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

/// Which backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CUDA when a usable GPU is found, else the CPU (the reason is logged).
    Auto,
    Cpu,
    Cuda,
}

/// Numerics of the CUDA backend (the CPU backend always runs the exact f32
/// datapath).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionArg {
    /// f32 activations into every product and an f32 KV cache: the CPU
    /// reference's numbers to ~1e-5.
    Exact,
    /// CUDA: f16 activations into the tensor-core products and an f16 KV
    /// cache, f32 accumulation, residual stream, norms and softmax. CPU:
    /// decode-sized AWQ products as integer dot products with int16
    /// activations (lhama_cpu::int8). The default.
    #[default]
    Fast,
}

impl From<PrecisionArg> for lhama_cuda::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Exact => Self::Exact,
            PrecisionArg::Fast => Self::Fast,
        }
    }
}

/// Limits a backend is built for.
#[derive(Debug, Clone, Copy)]
pub struct BackendLimits {
    /// KV cache in tokens; None: the backend's default (CPU: 32768, CUDA:
    /// what `gpu_memory_utilization` leaves after weights and buffers).
    pub kv_cache_tokens: Option<usize>,
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    pub gpu_memory_utilization: f64,
    pub precision: PrecisionArg,
}

pub const CPU_DEFAULT_KV_TOKENS: usize = 32768;

/// Builds the backend `kind` asks for; under `auto` a CUDA failure falls
/// back to the CPU with a log line saying why.
pub fn make_backend(
    kind: BackendKind,
    config: &LlamaConfig,
    weights: LlamaWeights,
    limits: BackendLimits,
) -> anyhow::Result<Box<dyn lhama_model::Backend>> {
    let cuda = |weights: &LlamaWeights| {
        let opts = lhama_cuda::CudaOptions {
            gpu_memory_utilization: limits.gpu_memory_utilization,
            max_batch_tokens: limits.max_batch_tokens,
            max_seqs: limits.max_seqs,
            kv_cache_tokens: limits.kv_cache_tokens,
            block_size: BLOCK_SIZE,
            precision: limits.precision.into(),
            ..lhama_cuda::CudaOptions::default()
        };
        lhama_cuda::CudaBackend::new(config, weights, &opts)
    };
    match kind {
        BackendKind::Cuda => Ok(Box::new(
            cuda(&weights).map_err(|e| anyhow::anyhow!("--backend cuda: {e}"))?,
        )),
        BackendKind::Auto => match cuda(&weights) {
            Ok(b) => Ok(Box::new(b)),
            Err(e) => {
                tracing::info!(reason = %e, "backend auto: using the CPU");
                Ok(Box::new(cpu_backend(
                    config,
                    weights,
                    limits.kv_cache_tokens.unwrap_or(CPU_DEFAULT_KV_TOKENS),
                    limits.precision,
                )?))
            }
        },
        BackendKind::Cpu => Ok(Box::new(cpu_backend(
            config,
            weights,
            limits.kv_cache_tokens.unwrap_or(CPU_DEFAULT_KV_TOKENS),
            limits.precision,
        )?)),
    }
}

/// A CPU backend with a KV pool of at least `tokens` tokens; `Fast`: decode
/// products on integer dot products (lhama_cpu::int8).
pub fn cpu_backend(
    config: &LlamaConfig,
    weights: LlamaWeights,
    tokens: usize,
    precision: PrecisionArg,
) -> anyhow::Result<CpuBackend> {
    lhama_cpu::isa::check_env().map_err(anyhow::Error::msg)?;
    tracing::info!(
        kernels = %lhama_cpu::isa::describe(),
        "CPU backend"
    );
    let kv = KvGeometry {
        num_blocks: tokens.div_ceil(BLOCK_SIZE).max(1),
        block_size: BLOCK_SIZE,
    };
    Ok(CpuBackend::with_precision(
        config,
        weights,
        kv,
        precision == PrecisionArg::Fast,
    ))
}

/// Greedy steps of every golden prompt the fast path must reproduce, and its
/// bound on the top-5 logprobs (docs/FIDELITY.md).
pub const FAST_GREEDY_STEPS: usize = 32;
pub const FAST_TOP5_NATS: f32 = 0.05;

pub fn verify(
    model: &str,
    golden_path: &Path,
    tolerance: f32,
    kind: BackendKind,
    precision: PrecisionArg,
) -> anyhow::Result<()> {
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
    let limits = BackendLimits {
        kv_cache_tokens: Some(longest + BLOCK_SIZE),
        max_batch_tokens: longest,
        max_seqs: 1,
        gpu_memory_utilization: 0.9,
        precision,
    };
    let mut backend = make_backend(kind, &config, weights, limits)?;
    let fast = precision == PrecisionArg::Fast;
    println!(
        "backend: {}, precision: {}",
        backend.name(),
        if fast { "fast" } else { "exact" }
    );
    let report =
        golden::compare(backend.as_mut(), &tokenizer, &golden).context("running the goldens")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if fast {
        anyhow::ensure!(
            report.max_top5_logprob_diff <= FAST_TOP5_NATS,
            "top-5 logprobs differ by up to {} (budget {FAST_TOP5_NATS})",
            report.max_top5_logprob_diff
        );
        for (i, (prefix, p)) in report
            .greedy_matching_prefix
            .iter()
            .zip(&golden.prompts)
            .enumerate()
        {
            anyhow::ensure!(
                *prefix >= FAST_GREEDY_STEPS.min(p.greedy.len()),
                "prompt {i}: greedy tokens differ at step {prefix} (budget: {FAST_GREEDY_STEPS} identical)"
            );
        }
    } else {
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
    }
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
