//! `lhama generate`: one prompt, streamed to the terminal.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use lhama_engine::{IncrementalDecoder, Sampler, SamplingParams, generate};
use lhama_model::{ChatMessage, ModelFiles};

use crate::load::{BackendKind, BackendLimits, load_model, make_backend};

#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory, or a Hugging Face repo id.
    #[arg(long, env = "LHAMA_MODEL", default_value = lhama_model::source::DEFAULT_MODEL)]
    model: String,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as one user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy. Default: generation_config.json's, else 1.0 when it
    /// samples and 0 when it does not.
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendKind,
    /// Numerics (fast, the default: on CUDA f16 KV cache and tensor-core
    /// inputs, on the CPU integer dot products for decode; exact: the f32
    /// datapath).
    #[arg(long, value_enum, default_value = "fast")]
    precision: crate::load::PrecisionArg,
}

fn sampling_params(args: &GenerateArgs, files: &ModelFiles) -> anyhow::Result<SamplingParams> {
    let g = &files.generation;
    let default_t = match (g.do_sample, g.temperature) {
        (Some(false), _) => 0.0,
        (_, Some(t)) => t,
        (_, None) => 1.0,
    };
    let params = SamplingParams {
        temperature: args.temperature.unwrap_or(default_t),
        top_p: args.top_p.or(g.top_p).unwrap_or(1.0),
        top_k: args.top_k.or(g.top_k.map(|k| k as usize)).unwrap_or(0),
        min_p: 0.0,
        seed: args.seed,
    };
    anyhow::ensure!(
        params.temperature.is_finite() && params.temperature >= 0.0,
        "--temperature must be a number >= 0, got {}",
        params.temperature
    );
    anyhow::ensure!(
        params.top_p > 0.0 && params.top_p <= 1.0,
        "--top-p must be in (0, 1], got {}",
        params.top_p
    );
    Ok(params)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let files = load_model(&args.model)?;
    let params = sampling_params(&args, &files)?;
    let stop_ids = if args.ignore_eos {
        Vec::new()
    } else {
        files.eos_token_ids()
    };
    let ModelFiles {
        config,
        tokenizer,
        weights,
        ..
    } = files;
    let prompt_ids = if args.chat {
        let text = tokenizer
            .apply_chat_template(&[ChatMessage::new("user", &args.prompt)], true)
            .context("chat template")?;
        tokenizer.encode(&text, false).map_err(anyhow::Error::msg)?
    } else {
        tokenizer
            .encode(&args.prompt, true)
            .map_err(anyhow::Error::msg)?
    };
    anyhow::ensure!(!prompt_ids.is_empty(), "the prompt encodes to no tokens");
    let total = prompt_ids.len() + args.max_tokens;
    anyhow::ensure!(
        total <= config.max_position_embeddings,
        "prompt ({} tokens) + --max-tokens ({}) = {total} is over the model's context of {} tokens",
        prompt_ids.len(),
        args.max_tokens,
        config.max_position_embeddings
    );
    let limits = BackendLimits {
        kv_cache_tokens: Some(total),
        max_batch_tokens: lhama_engine::generate::PREFILL_CHUNK,
        max_seqs: 1,
        gpu_memory_utilization: 0.9,
        precision: args.precision,
    };
    let mut backend = make_backend(args.backend, &config, weights, limits)?;
    let mut sampler = Sampler::new(params);
    let mut decoder = IncrementalDecoder::new(true);
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let stats = generate(
        backend.as_mut(),
        &prompt_ids,
        args.max_tokens,
        &mut sampler,
        &stop_ids,
        |id| match decoder.push(&tokenizer, id) {
            Ok(Some(text)) => {
                if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    write_error = Some(e.to_string());
                    return false;
                }
                true
            }
            Ok(None) => true,
            Err(e) => {
                write_error = Some(e);
                false
            }
        },
    )?;
    if let Some(e) = write_error {
        anyhow::bail!("writing the output: {e}");
    }
    if let Some(rest) = decoder.finish(&tokenizer).map_err(anyhow::Error::msg)? {
        out.write_all(rest.as_bytes())?;
    }
    writeln!(out)?;
    // The first token comes out of the prefill; each later one is a decode step.
    let decode_steps = stats.generated_tokens.saturating_sub(1);
    let secs = |d: std::time::Duration| d.as_secs_f64().max(1e-9);
    eprintln!(
        "prompt tokens: {}, generated tokens: {}, prefill: {:.1} tok/s, decode: {:.2} tok/s ({:.1} ms/token)",
        stats.prompt_tokens,
        stats.generated_tokens,
        stats.prompt_tokens as f64 / secs(stats.prefill),
        decode_steps as f64 / secs(stats.decode),
        1e3 * secs(stats.decode) / decode_steps.max(1) as f64,
    );
    Ok(())
}
