//! Host time of the engine loop per step, with a backend that answers at
//! once (scheduler, batch building, detokenization, stop checks, events):
//! `cargo run --release -p lhama-engine --example engine_overhead -- MODEL_DIR [SEQS] [TOKENS]`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use lhama_engine::scheduler::SchedulerConfig;
use lhama_engine::{EngineConfig, Event, RequestParams, SamplingParams, spawn};
use lhama_model::{
    Backend, BackendError, ForwardBatch, KvGeometry, LlamaConfig, ModelFiles, RowSampling,
    SampledStep, Tokenizer,
};

/// Answers every row with a token derived from its position, instantly.
struct Instant0 {
    config: LlamaConfig,
    kv: KvGeometry,
}

impl Backend for Instant0 {
    fn name(&self) -> &'static str {
        "instant"
    }
    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn kv_geometry(&self) -> KvGeometry {
        self.kv
    }
    fn forward(
        &mut self,
        batch: &ForwardBatch<'_>,
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        logits.clear();
        logits.resize(batch.logit_rows.len() * self.config.vocab_size, 0.0);
        Ok(())
    }
    fn forward_sample(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        let _ = sampling;
        out.tokens.clear();
        out.tokens.extend(
            batch
                .logit_rows
                .iter()
                .map(|&r| 3 + (batch.positions[r as usize] * 37 + r * 11) % 400),
        );
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let files = ModelFiles::load(std::path::Path::new(&args[1])).expect("a model directory");
    let seqs: usize = args.get(2).map_or(256, |s| s.parse().expect("SEQS"));
    let tokens: usize = args.get(3).map_or(200, |s| s.parse().expect("TOKENS"));
    let kv = KvGeometry {
        num_blocks: seqs * (tokens + 32).div_ceil(16) + 16,
        block_size: 16,
    };
    let backend = Instant0 {
        config: files.config.clone(),
        kv,
    };
    let tokenizer = Arc::new(Tokenizer::from_dir(&files.dir).expect("tokenizer"));
    let eng = spawn(
        Box::new(backend),
        tokenizer,
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: seqs,
                max_num_batched_tokens: 8192,
                num_blocks: kv.num_blocks,
                block_size: 16,
                prefix_caching: false,
            },
            max_model_len: files.config.max_position_embeddings,
            eos_ids: files.eos_token_ids(),
            step_delay: None,
        },
    );
    let params = RequestParams {
        sampling: SamplingParams::greedy(),
        max_tokens: tokens,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let start = Instant::now();
    let streams: Vec<_> = (0..seqs)
        .map(|i| {
            eng.submit(
                (0..16).map(|j| 3 + ((i * 7 + j) % 400) as u32).collect(),
                params.clone(),
            )
            .expect("submit")
        })
        .collect();
    let steps0 = eng.stats.steps.load(Ordering::Relaxed);
    let mut total = 0;
    for mut s in streams {
        while let Some(ev) = s.events.blocking_recv() {
            match ev {
                Event::Token { .. } => total += 1,
                Event::Done { .. } => break,
                Event::Error(e) => panic!("{e}"),
                _ => {}
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let steps = eng.stats.steps.load(Ordering::Relaxed) - steps0;
    println!(
        "{seqs} sequences x {tokens} tokens: {total} tokens in {secs:.3} s, {steps} steps, {:.1} us/step, {:.2} us/token",
        secs * 1e6 / steps as f64,
        secs * 1e6 / total as f64
    );
}
