//! The engine loop on the tiny synthetic model: outputs equal the same
//! request run alone, whatever runs beside it, even under preemption;
//! cancelled requests free their KV blocks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lhama_cpu::CpuBackend;
use lhama_engine::scheduler::SchedulerConfig;
use lhama_engine::{
    EngineConfig, EngineHandle, Event, FinishReason, RequestParams, SamplingParams, spawn,
};
use lhama_model::golden::greedy;
use lhama_model::synth::{Preset, write_model};
use lhama_model::{
    Backend, BackendError, ForwardBatch, KvGeometry, ModelFiles, RowSampling, SampledStep,
    Tokenizer,
};

struct Fixture {
    _dir: tempfile::TempDir,
    files: ModelFiles,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    write_model(Preset::Tiny, 0, dir.path()).unwrap();
    let files = ModelFiles::load(dir.path()).unwrap();
    Fixture { _dir: dir, files }
}

fn engine(f: &Fixture, num_blocks: usize, budget: usize) -> EngineHandle {
    engine_with(f, num_blocks, budget, false)
}

fn engine_with(
    f: &Fixture,
    num_blocks: usize,
    budget: usize,
    prefix_caching: bool,
) -> EngineHandle {
    let backend = CpuBackend::new(
        &f.files.config,
        f.files.weights.clone(),
        KvGeometry {
            num_blocks,
            block_size: 16,
        },
    );
    let tokenizer = Arc::new(Tokenizer::from_dir(&f.files.dir).unwrap());
    spawn(
        Box::new(backend),
        tokenizer,
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: 64,
                max_num_batched_tokens: budget,
                num_blocks,
                block_size: 16,
                prefix_caching,
            },
            max_model_len: f.files.config.max_position_embeddings,
            eos_ids: f.files.eos_token_ids(),
            step_delay: None,
        },
    )
}

/// A CPU backend of its own, for reference runs of one sequence at a time.
fn solo_backend(f: &Fixture) -> CpuBackend {
    CpuBackend::new(
        &f.files.config,
        f.files.weights.clone(),
        KvGeometry {
            num_blocks: 64,
            block_size: 16,
        },
    )
}

fn prompt(i: u32, len: usize) -> Vec<u32> {
    std::iter::once(1)
        .chain((1..len as u32).map(|j| 3 + (j * 97 + i * 31) % 500))
        .collect()
}

fn greedy_params(max_tokens: usize) -> RequestParams {
    RequestParams {
        sampling: SamplingParams::greedy(),
        max_tokens,
        ignore_eos: true,
        ..RequestParams::default()
    }
}

/// Collects (tokens, text, finish reason) from a stream.
fn collect(mut s: lhama_engine::RequestStream) -> (Vec<u32>, String, FinishReason) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(ev) = s.events.blocking_recv() {
        match ev {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                text += &t;
            }
            Event::Text(t) => text += &t,
            Event::Done {
                reason,
                completion_tokens,
                ..
            } => {
                assert_eq!(completion_tokens, ids.len());
                return (ids, text, reason);
            }
            Event::Error(e) => panic!("engine error: {e}"),
            Event::PromptLogprobs(_) | Event::Admitted { .. } => {}
        }
    }
    panic!("stream ended without Done");
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn concurrent_greedy_requests_equal_their_solo_runs_even_under_preemption() {
    let f = fixture();
    // Solo references straight from the backend.
    let mut solo = solo_backend(&f);
    let prompts: Vec<Vec<u32>> = (0..24)
        .map(|i| prompt(i, 5 + (i as usize * 7) % 40))
        .collect();
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| greedy(&mut solo, p, 20).unwrap())
        .collect();
    // A pool of 12 blocks (192 tokens) for 24 sequences of up to 60 tokens:
    // preemption is unavoidable. A budget of 32 tokens forces chunked prefill.
    let eng = engine(&f, 12, 32);
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| eng.submit(p.clone(), greedy_params(20)).unwrap())
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (ids, _, reason) = collect(s);
        assert_eq!(ids, expected[i], "request {i}");
        assert_eq!(reason, FinishReason::Length);
    }
    assert!(
        eng.stats.preemptions.load(Ordering::Relaxed) > 0,
        "the test should exercise preemption"
    );
    wait_until("blocks to be freed", || {
        eng.stats.blocks_used.load(Ordering::Relaxed) == 0
    });
}

#[test]
fn dropping_the_stream_cancels_and_frees_blocks() {
    let f = fixture();
    let eng = engine(&f, 64, 64);
    let mut s = eng.submit(prompt(1, 30), greedy_params(400)).unwrap();
    // Wait for the first token, then walk away.
    loop {
        if let Some(Event::Token { .. }) = s.events.blocking_recv() {
            break;
        }
    }
    // Stats are published at the end of each step, after its events are sent.
    wait_until("the running sequence's blocks to show", || {
        eng.stats.blocks_used.load(Ordering::Relaxed) > 0
    });
    drop(s);
    wait_until("the cancelled sequence's blocks", || {
        eng.stats.blocks_used.load(Ordering::Relaxed) == 0
            && eng.stats.running.load(Ordering::Relaxed) == 0
    });
    // The engine keeps serving.
    let (ids, _, _) = collect(eng.submit(prompt(2, 8), greedy_params(3)).unwrap());
    assert_eq!(ids.len(), 3);
}

#[test]
fn seeds_stop_strings_min_tokens_and_limits() {
    let f = fixture();
    let eng = engine(&f, 64, 128);
    let sampled = |seed| RequestParams {
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        max_tokens: 24,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let a = collect(eng.submit(prompt(3, 10), sampled(5)).unwrap());
    let b = collect(eng.submit(prompt(3, 10), sampled(5)).unwrap());
    let c = collect(eng.submit(prompt(3, 10), sampled(6)).unwrap());
    assert_eq!(a.0, b.0, "same seed, same tokens");
    assert_ne!(a.0, c.0, "another seed, other tokens");

    // A stop string taken from the greedy text ends generation before it.
    let (_, full, _) = collect(eng.submit(prompt(4, 10), greedy_params(30)).unwrap());
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let params = RequestParams {
        stop: vec![stop.clone()],
        ..greedy_params(30)
    };
    let (_, text, reason) = collect(eng.submit(prompt(4, 10), params).unwrap());
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(
        text,
        full[..full.find(&stop).unwrap()],
        "text up to the stop string"
    );

    // stop_token_ids: the greedy path's third token stops it.
    let (ids, _, _) = collect(eng.submit(prompt(4, 10), greedy_params(30)).unwrap());
    let params = RequestParams {
        stop_token_ids: vec![ids[2]],
        ..greedy_params(30)
    };
    let (got, _, reason) = collect(eng.submit(prompt(4, 10), params).unwrap());
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(got, ids[..=ids.iter().position(|&t| t == ids[2]).unwrap()]);

    // min_tokens suppresses a stop token until reached.
    let params = RequestParams {
        stop_token_ids: vec![ids[0]],
        min_tokens: 5,
        ..greedy_params(8)
    };
    let (got, _, _) = collect(eng.submit(prompt(4, 10), params).unwrap());
    assert!(got.len() >= 5 && !got[..4].contains(&ids[0]), "{got:?}");

    // Over the context length: refused at submission.
    let err = eng
        .submit(prompt(5, 500), greedy_params(100))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("exceeds the maximum context length of 512"),
        "{err}"
    );
}

#[test]
fn a_stop_string_found_off_the_engine_thread_ends_the_sequence() {
    // Stop strings are matched on the output thread; the engine must learn
    // of the match and stop generating, not run on to max_tokens.
    let f = fixture();
    let eng = engine(&f, 64, 128);
    let (_, full, _) = collect(eng.submit(prompt(6, 10), greedy_params(30)).unwrap());
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 3..chars.len() / 3 + 2].iter().collect();
    let steps_before = eng.stats.steps.load(Ordering::Relaxed);
    let tokens_before = eng.stats.generated_tokens.load(Ordering::Relaxed);
    let params = RequestParams {
        stop: vec![stop.clone()],
        ..greedy_params(400)
    };
    // The stream stays open after Done (dropping it would cancel the
    // sequence, which ends it another way).
    let mut stream = eng.submit(prompt(6, 10), params).unwrap();
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match stream.events.blocking_recv() {
            Some(Event::Token { id, text: t, .. }) => {
                ids.push(id);
                text += &t;
            }
            Some(Event::Text(t)) => text += &t,
            Some(Event::Done { reason, .. }) => {
                assert_eq!(reason, FinishReason::Stop);
                break;
            }
            Some(Event::Admitted { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(text, full[..full.find(&stop).unwrap()]);
    wait_until("the stopped sequence to leave", || {
        eng.stats.running.load(Ordering::Relaxed) == 0
            && eng.stats.blocks_used.load(Ordering::Relaxed) == 0
    });
    // One prefill step, one step per later token, and at most a few steps
    // run before the engine heard of the match (not 400).
    let steps = eng.stats.steps.load(Ordering::Relaxed) - steps_before;
    assert!(
        steps <= ids.len() as u64 + 3,
        "{steps} steps for {} tokens",
        ids.len()
    );
    // Tokens generated after the match are not counted as delivered.
    assert_eq!(
        eng.stats.generated_tokens.load(Ordering::Relaxed) - tokens_before,
        ids.len() as u64
    );
    drop(stream);
}

#[test]
fn prompt_logprobs_with_max_tokens_zero() {
    let f = fixture();
    let eng = engine(&f, 64, 16);
    let p = prompt(6, 40); // 40 tokens over 3 chunks of at most 16
    let params = RequestParams {
        max_tokens: 0,
        prompt_logprobs: Some(2),
        ..greedy_params(0)
    };
    let mut s = eng.submit(p.clone(), params).unwrap();
    let mut lps = None;
    while let Some(ev) = s.events.blocking_recv() {
        match ev {
            Event::PromptLogprobs(l) => lps = Some(l),
            Event::Admitted { .. } => {}
            Event::Done {
                completion_tokens,
                reason,
                ..
            } => {
                assert_eq!((completion_tokens, reason), (0, FinishReason::Length));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let lps = lps.expect("prompt logprobs");
    assert_eq!(lps.len(), p.len());
    assert!(lps[0].is_none());
    // Against the backend's own logits.
    let mut solo = CpuBackend::new(
        &f.files.config,
        f.files.weights.clone(),
        KvGeometry {
            num_blocks: 8,
            block_size: 16,
        },
    );
    let logits = lhama_model::golden::prompt_logits(&mut solo, &p).unwrap();
    let vocab = f.files.config.vocab_size;
    for i in 1..p.len() {
        let lp = lps[i].as_ref().unwrap();
        let (want, top) =
            lhama_engine::params::logprobs(&logits[(i - 1) * vocab..][..vocab], p[i], 2);
        assert_eq!(lp.token, p[i]);
        assert!((lp.logprob - want).abs() < 1e-5);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, top[0].0);
    }
}

/// The CPU backend, except that it records how the engine asks each row to
/// be sampled and answers every greedy row with token 7: what the engine
/// emits for such rows must come from the backend, not from the logits.
struct Recording {
    inner: CpuBackend,
    seen: Arc<std::sync::Mutex<Vec<RowSampling>>>,
}

impl Backend for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn config(&self) -> &lhama_model::LlamaConfig {
        self.inner.config()
    }
    fn kv_geometry(&self) -> KvGeometry {
        self.inner.kv_geometry()
    }
    fn forward(
        &mut self,
        batch: &ForwardBatch<'_>,
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        self.inner.forward(batch, logits)
    }
    fn forward_sample(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        self.inner.forward_sample(batch, sampling, out)?;
        for (i, s) in sampling.iter().enumerate() {
            if *s == RowSampling::Greedy {
                out.tokens[i] = 7;
                // Whatever the logits say: poison the row.
                let vocab = self.config().vocab_size;
                out.logits[i * vocab..(i + 1) * vocab].fill(f32::NAN);
            }
        }
        self.seen.lock().unwrap().extend_from_slice(sampling);
        Ok(())
    }
}

#[test]
fn the_backend_samples_unless_the_request_needs_the_logits() {
    let f = fixture();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let backend = Recording {
        inner: CpuBackend::new(
            &f.files.config,
            f.files.weights.clone(),
            KvGeometry {
                num_blocks: 64,
                block_size: 16,
            },
        ),
        seen: seen.clone(),
    };
    let tokenizer = Arc::new(Tokenizer::from_dir(&f.files.dir).unwrap());
    let eng = spawn(
        Box::new(backend),
        tokenizer,
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: 8,
                max_num_batched_tokens: 128,
                num_blocks: 64,
                block_size: 16,
                prefix_caching: false,
            },
            max_model_len: f.files.config.max_position_embeddings,
            eos_ids: f.files.eos_token_ids(),
            step_delay: None,
        },
    );
    let take =
        |seen: &Arc<std::sync::Mutex<Vec<RowSampling>>>| std::mem::take(&mut *seen.lock().unwrap());

    // Greedy, nothing else: every token is the backend's.
    let (ids, _, _) = collect(eng.submit(prompt(1, 10), greedy_params(5)).unwrap());
    assert_eq!(ids, vec![7; 5]);
    assert!(take(&seen).iter().all(|s| *s == RowSampling::Greedy));

    // A seeded draw: the backend gets the request's settings and a number
    // from its generator, the same numbers for the same seed.
    let draw = |seed| RequestParams {
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            min_p: 0.05,
            seed: Some(seed),
        },
        max_tokens: 4,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let (a, _, _) = collect(eng.submit(prompt(2, 10), draw(3)).unwrap());
    let first = take(&seen);
    let (b, _, _) = collect(eng.submit(prompt(2, 10), draw(3)).unwrap());
    assert_eq!(a, b);
    assert_eq!(first, take(&seen));
    assert_eq!(first.len(), 4);
    for s in &first {
        let RowSampling::Draw(p) = s else {
            panic!("expected a draw, got {s:?}")
        };
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.min_p),
            (0.7, 0.9, 40, 0.05)
        );
        assert!((0.0..1.0).contains(&p.u));
    }

    // logprobs and penalties need the row: the logits come back and the
    // engine samples (greedy here, so not token 7 every time).
    for params in [
        RequestParams {
            logprobs: Some(2),
            ..greedy_params(5)
        },
        RequestParams {
            repetition_penalty: 1.3,
            ..greedy_params(5)
        },
    ] {
        let (ids, _, _) = collect(eng.submit(prompt(3, 10), params).unwrap());
        assert_ne!(ids, vec![7; 5]);
        assert!(take(&seen).iter().all(|s| *s == RowSampling::Logits));
    }
}

/// Prompt logprobs of `p` as the engine reports them, asked with max_tokens 0.
fn scored(mut s: lhama_engine::RequestStream) -> Vec<Option<lhama_engine::TokenLogprob>> {
    let mut lps = None;
    while let Some(ev) = s.events.blocking_recv() {
        match ev {
            Event::PromptLogprobs(l) => lps = Some(l),
            Event::Admitted { .. } => {}
            Event::Done { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    lps.expect("prompt logprobs")
}

#[test]
fn prompt_logprobs_survive_preemption_and_recomputation() {
    let f = fixture();
    let p = prompt(9, 150);
    let params = RequestParams {
        max_tokens: 0,
        prompt_logprobs: Some(3),
        ..greedy_params(0)
    };
    let alone = scored(
        engine(&f, 64, 16)
            .submit(p.clone(), params.clone())
            .unwrap(),
    );
    assert_eq!(alone.len(), p.len());
    // 16 blocks of 16: three decodes growing to 70 tokens (5 blocks each)
    // and a 150-token prompt (10 blocks) cannot all fit, and the scoring
    // request, admitted last, is the one preempted while it is prefilled.
    let eng = engine(&f, 16, 16);
    let decodes: Vec<_> = (0..3)
        .map(|i| eng.submit(prompt(20 + i, 30), greedy_params(40)).unwrap())
        .collect();
    wait_until("the decodes to be running", || {
        eng.stats.generated_tokens.load(Ordering::Relaxed) >= 3
    });
    let under_pressure = scored(eng.submit(p.clone(), params).unwrap());
    for d in decodes {
        collect(d);
    }
    assert!(
        eng.stats.preemptions.load(Ordering::Relaxed) > 0,
        "the test should exercise preemption"
    );
    assert_eq!(
        under_pressure.len(),
        alone.len(),
        "one entry per prompt token"
    );
    for (i, (got, want)) in under_pressure.iter().zip(&alone).enumerate() {
        assert_eq!(got, want, "prompt position {i}");
    }
}

/// Tokens, their logprobs and the prompt tokens served from the prefix cache.
fn collect_full(
    mut s: lhama_engine::RequestStream,
) -> (Vec<u32>, Vec<lhama_engine::TokenLogprob>, usize) {
    let (mut ids, mut lps, mut cached) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = s.events.blocking_recv() {
        match ev {
            Event::Admitted { cached_tokens } => cached = Some(cached_tokens),
            Event::Token { id, logprob, .. } => {
                ids.push(id);
                lps.extend(logprob);
            }
            Event::Done { .. } => return (ids, lps, cached.expect("Admitted came first")),
            Event::Error(e) => panic!("engine error: {e}"),
            Event::Text(_) | Event::PromptLogprobs(_) => {}
        }
    }
    panic!("stream ended without Done");
}

/// A three-turn conversation, each turn's prompt the last one's prompt and
/// answer plus a new message: with the prefix cache, every turn after the
/// first starts from the cached blocks, and tokens and logprobs (greedy and
/// seeded draws) are bit-identical to the run without the cache.
#[test]
fn prefix_cached_turns_equal_uncached_ones_bit_for_bit() {
    let f = fixture();
    let run = |caching: bool| {
        let eng = engine_with(&f, 64, 48, caching);
        let mut history = prompt(4, 40);
        let mut turns = Vec::new();
        for turn in 0..3u32 {
            let sampling = if turn == 1 {
                SamplingParams {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed: Some(7),
                    ..SamplingParams::default()
                }
            } else {
                SamplingParams::greedy()
            };
            let params = RequestParams {
                sampling,
                logprobs: Some(5),
                ..greedy_params(12)
            };
            let out = collect_full(eng.submit(history.clone(), params).unwrap());
            history.extend(&out.0);
            history.extend(prompt(10 + turn, 30).into_iter().skip(1));
            turns.push(out);
        }
        let hits = eng.stats.prefix_hit_tokens.load(Ordering::Relaxed);
        (turns, hits)
    };
    let (cached, hits) = run(true);
    let (plain, no_hits) = run(false);
    assert_eq!(no_hits, 0);
    for (i, (c, p)) in cached.iter().zip(&plain).enumerate() {
        assert_eq!(c.0, p.0, "turn {i} tokens");
        assert_eq!(c.1, p.1, "turn {i} logprobs");
        assert_eq!(p.2, 0, "nothing cached without the cache");
    }
    // Turn 0: 40 prompt tokens and 11 of its 12 answer tokens were fed (the
    // last one was only sampled): 3 full blocks. Turn 1: its 81-token prompt
    // and 11 answer tokens, 92 fed: 5 full blocks.
    assert_eq!(
        [cached[0].2, cached[1].2, cached[2].2],
        [0, 48, 80],
        "cached tokens per turn"
    );
    assert_eq!(hits, 128);
}

/// Many requests over a few shared prefixes, two choices of some, random
/// cancellations, a pool small enough to force preemption of sequences with
/// shared blocks: the finished ones equal their solo runs, and every block
/// is free at the end.
#[test]
fn shared_prefixes_under_preemption_and_cancellation_free_every_block() {
    let f = fixture();
    let mut solo = solo_backend(&f);
    let bases: Vec<Vec<u32>> = (0..3).map(|i| prompt(40 + i, 35)).collect();
    let prompts: Vec<Vec<u32>> = (0..30u32)
        .map(|i| {
            let mut p = bases[i as usize % 3].clone();
            // Every fifth request repeats another's prompt exactly.
            let tail = if i % 5 == 4 { i - 1 } else { i };
            p.extend((0..(tail % 7) as usize).map(|j| 300 + tail * 5 + j as u32));
            p
        })
        .collect();
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| greedy(&mut solo, p, 16).unwrap())
        .collect();
    // 20 blocks (320 tokens) for 30 sequences of up to 58 tokens.
    let eng = engine_with(&f, 20, 48, true);
    let mut rng = lhama_model::rng::SplitMix64::new(11);
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| eng.submit(p.clone(), greedy_params(16)).unwrap())
        .collect();
    let mut finished = 0;
    for (i, mut s) in streams.into_iter().enumerate() {
        if rng.next_u64().is_multiple_of(4) {
            // Cancel after a few events.
            for _ in 0..(rng.next_u64() % 6) {
                if s.events.blocking_recv().is_none() {
                    break;
                }
            }
            drop(s);
            continue;
        }
        let (ids, _, _) = collect(s);
        assert_eq!(ids, expected[i], "request {i}");
        finished += 1;
    }
    assert!(finished >= 15, "{finished} finished");
    assert!(
        eng.stats.preemptions.load(Ordering::Relaxed) > 0,
        "the test should exercise preemption"
    );
    assert!(eng.stats.prefix_hit_tokens.load(Ordering::Relaxed) > 0);
    wait_until("every block to be free", || {
        eng.stats.blocks_used.load(Ordering::Relaxed) == 0
            && eng.stats.running.load(Ordering::Relaxed) == 0
    });
}

/// The CPU backend, logging how the engine hands it a guided step's masks:
/// through `forward_sample_masked`, asked for after the forward pass (or,
/// with `ask` false, never asked for).
struct MaskOrder {
    inner: CpuBackend,
    log: Arc<std::sync::Mutex<Vec<&'static str>>>,
    ask: bool,
}

impl Backend for MaskOrder {
    fn name(&self) -> &'static str {
        "mask-order"
    }
    fn config(&self) -> &lhama_model::LlamaConfig {
        self.inner.config()
    }
    fn kv_geometry(&self) -> KvGeometry {
        self.inner.kv_geometry()
    }
    fn forward(
        &mut self,
        batch: &ForwardBatch<'_>,
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        self.inner.forward(batch, logits)
    }
    fn supports_masks(&self) -> bool {
        true
    }
    fn set_masks(&mut self, masks: &[(usize, &[u32])]) -> Result<(), BackendError> {
        self.log.lock().unwrap().push("set_masks");
        self.inner.set_masks(masks)
    }
    fn forward_sample_masked(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        masks: &mut lhama_model::MaskSource<'_>,
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        self.inner.forward(batch, &mut out.logits)?;
        self.log.lock().unwrap().push("forward");
        let masks = if self.ask {
            let m = masks();
            self.log.lock().unwrap().push("masks");
            m
        } else {
            Vec::new()
        };
        let vocab = self.config().vocab_size;
        lhama_model::backend::sample_on_host(vocab, sampling, &masks, out);
        Ok(())
    }
}

/// A guided step's masks are asked for once the forward pass has run (a
/// device backend computes them meanwhile), and a backend that samples
/// guided rows without asking fails the request instead of leaving it
/// unconstrained.
#[test]
fn guided_masks_are_asked_for_after_the_forward_pass() {
    let f = fixture();
    let tokenizer_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.files.dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let compiler = lhama_engine::GuideCompiler::new(
        &tokenizer_json,
        f.files.config.vocab_size,
        &f.files.eos_token_ids(),
    )
    .unwrap();
    let regex = lhama_engine::GuidedSpec::Regex("[0-9]{3}-[a-z]{2}".into());
    for ask in [true, false] {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let backend = MaskOrder {
            inner: CpuBackend::new(
                &f.files.config,
                f.files.weights.clone(),
                KvGeometry {
                    num_blocks: 64,
                    block_size: 16,
                },
            ),
            log: log.clone(),
            ask,
        };
        let eng = spawn(
            Box::new(backend),
            Arc::new(Tokenizer::from_dir(&f.files.dir).unwrap()),
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_num_seqs: 8,
                    max_num_batched_tokens: 128,
                    num_blocks: 64,
                    block_size: 16,
                    prefix_caching: false,
                },
                max_model_len: f.files.config.max_position_embeddings,
                eos_ids: f.files.eos_token_ids(),
                step_delay: None,
            },
        );
        let params = RequestParams {
            guide: Some(compiler.compile(&regex).unwrap()),
            ..greedy_params(20)
        };
        let mut stream = eng.submit(prompt(3, 10), params).unwrap();
        let (mut text, mut error) = (String::new(), None);
        while let Some(ev) = stream.events.blocking_recv() {
            match ev {
                Event::Token { text: t, .. } => text += &t,
                Event::Text(t) => text += &t,
                Event::Error(e) => error = Some(e),
                Event::Done { .. } => break,
                Event::PromptLogprobs(_) | Event::Admitted { .. } => {}
            }
        }
        let log = log.lock().unwrap().clone();
        if ask {
            assert_eq!(error, None);
            let re = regex_lite(&text);
            assert!(re, "{text:?} does not match the grammar");
            assert!(!log.is_empty());
            assert!(log.chunks(2).all(|c| c == ["forward", "masks"]), "{log:?}");
        } else {
            let e = error.expect("a guided row sampled without its mask must fail");
            assert!(e.contains("without asking for their masks"), "{e}");
        }
    }
}

/// `text` is three digits, a dash and two lowercase letters.
fn regex_lite(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_lowercase)
}
