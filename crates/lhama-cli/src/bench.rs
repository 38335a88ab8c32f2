//! `lhama bench`: prefill throughput and decode latency of a backend at
//! several batch sizes, on synthetic token ids (speed does not depend on them).

use std::time::Instant;

use clap::Args;
use lhama_model::{Backend, ForwardBatch, ModelFiles, RowSampling, SampledStep, SeqSlice};

use crate::load::{BackendKind, BackendLimits, load_model, make_backend};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, env = "LHAMA_MODEL", default_value = lhama_model::source::DEFAULT_MODEL)]
    model: String,
    /// Prompt length of each sequence.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Decode steps timed per batch size (after one warm-up step).
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Batch sizes to time decode at.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
    /// How decode steps choose tokens: greedy, or a draw as a chat client
    /// asks for one (temperature 0.8, top_p 0.95, top_k 50).
    #[arg(long, value_enum, default_value = "greedy")]
    sampling: BenchSampling,
    /// Numerics (fast, the default: on CUDA f16 KV cache and tensor-core
    /// inputs, on the CPU integer dot products for decode; exact: the f32
    /// datapath).
    #[arg(long, value_enum, default_value = "fast")]
    precision: crate::load::PrecisionArg,
    /// Instead: time the AWQ product on each of the model's shapes at these
    /// row counts (exact and fast) next to cuBLAS fp16 (CUDA only), e.g.
    /// `--gemm 1,2,4,8,16,32,64,128,256,512,2048,4096`.
    #[arg(long, value_delimiter = ',')]
    gemm: Option<Vec<usize>>,
    /// After each batch size's timed steps, run one more decode step with
    /// every kernel launch timed (CUDA events; no graphs, no launch overlap)
    /// and print the per-kernel table.
    #[arg(long)]
    profile: bool,
    /// Also time the prefill of this many prompts, packed into forward
    /// passes of up to `--prefill-tokens` tokens (whole prompts), as the
    /// scheduler packs a burst of arrivals; with `--profile`, the kernels of
    /// one such pass.
    #[arg(long, default_value_t = 0)]
    prefill_seqs: usize,
    /// Tokens per packed prefill pass (`--prefill-seqs`).
    #[arg(long, default_value_t = 8192)]
    prefill_tokens: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum BenchSampling {
    Greedy,
    Draw,
}

/// What `prefill` measured: its seconds, and with `profile` the first
/// pass's kernel times and wall microseconds.
struct PrefillRun {
    secs: f64,
    kernels: Vec<(&'static str, f64)>,
    profiled_us: f64,
}

/// Prefills `n` sequences of `len` tokens, `pack` whole prompts a forward
/// pass (the last pass takes the rest), and returns the seconds it took;
/// `tables` gets their block tables. With `profile`, the first pass's
/// kernels are timed and returned.
fn prefill(
    backend: &mut dyn Backend,
    n: usize,
    len: usize,
    steps: usize,
    pack: usize,
    profile: bool,
    tables: &mut Vec<Vec<u32>>,
) -> anyhow::Result<PrefillRun> {
    let bs = backend.kv_geometry().block_size;
    let per_seq = (len + steps + 1).div_ceil(bs);
    tables.clear();
    tables.extend(
        (0..n).map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect::<Vec<u32>>()),
    );
    let vocab = backend.config().vocab_size as u32;
    let mut logits = Vec::new();
    let mut times = Vec::new();
    let mut timed_us = 0.0;
    let start = Instant::now();
    for (pass, first) in (0..n).step_by(pack.max(1)).enumerate() {
        let group = first..(first + pack.max(1)).min(n);
        let mut tokens = Vec::with_capacity(group.len() * len);
        let mut seqs = Vec::with_capacity(group.len());
        let mut rows = Vec::with_capacity(group.len());
        for s in group.clone() {
            seqs.push(SeqSlice {
                token_start: tokens.len(),
                num_tokens: len,
                block_table: &tables[s],
            });
            tokens.extend((0..len as u32).map(|i| 3 + (i * 7919 + s as u32) % (vocab - 3)));
            rows.push(tokens.len() as u32 - 1);
        }
        let positions: Vec<u32> = (0..group.len()).flat_map(|_| 0..len as u32).collect();
        let timed = profile && pass == 0;
        if timed {
            anyhow::ensure!(
                backend.set_profiling(true),
                "--profile: the {} backend has no kernel profile",
                backend.name()
            );
        }
        let t0 = Instant::now();
        backend.forward(
            &ForwardBatch {
                tokens: &tokens,
                positions: &positions,
                seqs: &seqs,
                logit_rows: &rows,
            },
            &mut logits,
        )?;
        if timed {
            timed_us = t0.elapsed().as_secs_f64() * 1e6;
            times = backend.take_profile()?;
            backend.set_profiling(false);
        }
    }
    Ok(PrefillRun {
        secs: start.elapsed().as_secs_f64(),
        kernels: times,
        profiled_us: timed_us,
    })
}

/// `--gemm`: the AWQ products against cuBLAS on the model's shapes.
fn gemm(model: &str, ms: &[usize]) -> anyhow::Result<()> {
    anyhow::ensure!(
        !ms.is_empty() && ms.iter().all(|&m| m > 0),
        "--gemm row counts must be positive"
    );
    let files = load_model(model)?;
    let group = files
        .config
        .awq
        .map(|a| a.group_size)
        .ok_or_else(|| anyhow::anyhow!("--gemm needs an AWQ checkpoint"))?;
    let timings = lhama_cuda::gemm_bench::run(&files.config, group, ms, 20)?;
    println!(
        "{:8} {:>5} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "shape",
        "M",
        "exact us",
        "fast us",
        "cuBLAS us",
        "exact/cb",
        "fast/cb",
        "fast TF/s",
        "fast GB/s",
        "cuBLAS TF/s"
    );
    for t in &timings {
        println!(
            "{:8} {:>5} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>8.2} {:>8.1} {:>9.0} {:>9.1}",
            format!("{}[{}x{}]", t.shape.name, t.shape.k, t.shape.n),
            t.m,
            t.exact_us,
            t.fast_us,
            t.cublas_us,
            t.exact_us / t.cublas_us,
            t.fast_us / t.cublas_us,
            t.tflops(t.fast_us),
            t.awq_weight_gbps(t.fast_us, group),
            t.tflops(t.cublas_us),
        );
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(ms) = &args.gemm {
        return gemm(&args.model, ms);
    }
    anyhow::ensure!(
        args.prompt_len > 0 && args.decode_steps > 0,
        "--prompt-len and --decode-steps must be positive"
    );
    let ModelFiles {
        config, weights, ..
    } = load_model(&args.model)?;
    let max_batch = args.batch.iter().copied().max().unwrap_or(1);
    anyhow::ensure!(max_batch > 0, "--batch sizes must be positive");
    let per_seq = args.prompt_len + args.decode_steps + 1;
    anyhow::ensure!(
        per_seq <= config.max_position_embeddings,
        "--prompt-len + --decode-steps is over the context"
    );
    anyhow::ensure!(
        args.prefill_seqs == 0 || args.prefill_tokens >= args.prompt_len,
        "--prefill-tokens must hold at least one prompt (--prompt-len)"
    );
    let pack = if args.prefill_seqs > 0 {
        (args.prefill_tokens / args.prompt_len).min(args.prefill_seqs)
    } else {
        1
    };
    let limits = BackendLimits {
        kv_cache_tokens: Some(max_batch.max(args.prefill_seqs) * (per_seq + 16)),
        max_batch_tokens: (pack * args.prompt_len).max(max_batch),
        max_seqs: max_batch.max(pack),
        gpu_memory_utilization: 0.9,
        precision: args.precision,
    };
    let mut boxed = make_backend(args.backend, &config, weights, limits)?;
    let backend = boxed.as_mut();
    let threads = lhama_cpu::threads();
    println!(
        "backend: {}, CPU threads: {threads}, CPU kernels: {}, prompt length: {}, decode steps: {}",
        backend.name(),
        lhama_cpu::isa::describe(),
        args.prompt_len,
        args.decode_steps
    );
    let mut tables = Vec::new();
    let secs = prefill(
        backend,
        1,
        args.prompt_len,
        args.decode_steps,
        1,
        false,
        &mut tables,
    )?
    .secs;
    println!(
        "prefill: {} tokens in {:.3} s = {:.1} tok/s",
        args.prompt_len,
        secs,
        args.prompt_len as f64 / secs
    );
    if args.prefill_seqs > 0 {
        let n = args.prefill_seqs;
        // Once to warm up (the first pass of a new size allocates), then timed.
        prefill(
            backend,
            n,
            args.prompt_len,
            args.decode_steps,
            pack,
            false,
            &mut tables,
        )?;
        let run = prefill(
            backend,
            n,
            args.prompt_len,
            args.decode_steps,
            pack,
            args.profile,
            &mut tables,
        )?;
        println!(
            "prefill: {n} prompts of {} tokens, {pack} a pass, in {:.3} s = {:.1} tok/s",
            args.prompt_len,
            run.secs,
            (n * args.prompt_len) as f64 / run.secs
        );
        if args.profile {
            print_profile(
                &format!("prefill pass of {} tokens", pack * args.prompt_len),
                run.profiled_us,
                &run.kernels,
            );
        }
    }
    println!("{:>6} {:>12} {:>12}", "batch", "ms/step", "tok/s");
    let mut out = SampledStep::default();
    for &b in &args.batch {
        prefill(
            backend,
            b,
            args.prompt_len,
            args.decode_steps,
            1,
            false,
            &mut tables,
        )?;
        let seqs: Vec<SeqSlice<'_>> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| SeqSlice {
                token_start: i,
                num_tokens: 1,
                block_table: t,
            })
            .collect();
        let rows: Vec<u32> = (0..b as u32).collect();
        let mut tokens: Vec<u32> = (0..b as u32).map(|i| 5 + i).collect();
        // Greedy rows, sampled by the backend as the engine asks for them:
        // on a GPU only the tokens come back.
        let how = match args.sampling {
            BenchSampling::Greedy => vec![RowSampling::Greedy; b],
            BenchSampling::Draw => (0..b)
                .map(|i| {
                    RowSampling::Draw(lhama_model::DrawParams {
                        temperature: 0.8,
                        top_k: 50,
                        top_p: 0.95,
                        min_p: 0.0,
                        u: (i as f32 + 0.5) / b as f32,
                    })
                })
                .collect(),
        };
        let mut step = |backend: &mut dyn Backend, k: usize| -> anyhow::Result<()> {
            let positions = vec![(args.prompt_len + k) as u32; b];
            backend.forward_sample(
                &ForwardBatch {
                    tokens: &tokens,
                    positions: &positions,
                    seqs: &seqs,
                    logit_rows: &rows,
                },
                &how,
                &mut out,
            )?;
            tokens.copy_from_slice(&out.tokens);
            Ok(())
        };
        step(backend, 0)?; // warm-up
        let start = Instant::now();
        for k in 1..=args.decode_steps {
            step(backend, k)?;
        }
        let per_step = start.elapsed().as_secs_f64() / args.decode_steps as f64;
        println!(
            "{:>6} {:>12.2} {:>12.1}",
            b,
            per_step * 1e3,
            b as f64 / per_step
        );
        if args.profile {
            anyhow::ensure!(
                backend.set_profiling(true),
                "--profile: the {} backend has no kernel profile",
                backend.name()
            );
            let t0 = Instant::now();
            step(backend, args.decode_steps + 1)?;
            let wall = t0.elapsed().as_secs_f64() * 1e6;
            let times = backend.take_profile()?;
            backend.set_profiling(false);
            print_profile(&format!("batch {b}"), wall, &times);
        }
    }
    Ok(())
}

/// One decode step's kernels, summed by name, largest first.
fn print_profile(what: &str, wall_us: f64, times: &[(&'static str, f64)]) {
    let mut by_name: Vec<(&str, usize, f64)> = Vec::new();
    for &(name, us) in times {
        match by_name.iter_mut().find(|e| e.0 == name) {
            Some(e) => {
                e.1 += 1;
                e.2 += us;
            }
            None => by_name.push((name, 1, us)),
        }
    }
    by_name.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = times.iter().map(|t| t.1).sum();
    println!(
        "profile, {what}: {} launches, {total:.1} us of kernel time, {wall_us:.1} us wall (timed launches)",
        times.len()
    );
    println!(
        "  {:<38} {:>8} {:>10} {:>10} {:>6}",
        "kernel", "launches", "total us", "us/launch", "share"
    );
    for (name, n, us) in by_name {
        println!(
            "  {name:<38} {n:>8} {us:>10.1} {:>10.2} {:>5.1}%",
            us / n as f64,
            100.0 * us / total.max(f64::MIN_POSITIVE)
        );
    }
}
