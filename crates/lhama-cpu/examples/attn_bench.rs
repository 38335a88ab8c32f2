//! Times the fast path's decode attention on ttl-460m's shapes (16 heads of
//! 64, blocks of 16 positions): `cargo run --release -p lhama-cpu --example
//! attn_bench -- [BATCH] [CONTEXT] [LAYERS]`, default `8 256 24`. Each layer
//! has its own K/V pool (so, as in a decode step, the rows come from
//! memory), the sequences' blocks are scattered over it, and the time is the
//! best of 10 passes over all layers, with the K/V bytes read per second.
//! `attn_bench prefill [TOKENS] [LAYERS]` (default `1024 24`) times one
//! prompt of TOKENS attending to itself instead (a prompt's prefill, tiles
//! of the same sequence), with the (query, position) pairs per second.
use std::time::Instant;

use half::f16;
use lhama_cpu::attention::paged_attention_fast;
use lhama_cpu::kernels::AttnShape;
use lhama_model::rng::SplitMix64;

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let prefill = std::env::args().nth(1).as_deref() == Some("prefill");
    let (batch, ctx, layers) = if prefill {
        (1, arg(2, 1024), arg(3, 24))
    } else {
        (arg(1, 8), arg(2, 256), arg(3, 24))
    };
    let shape = AttnShape {
        heads: 16,
        kv_heads: 16,
        head_dim: 64,
        block_size: 16,
    };
    let row = shape.kv_heads * shape.head_dim;
    let blocks_per_seq = ctx.div_ceil(shape.block_size);
    let blocks = batch * blocks_per_seq;
    let mut g = SplitMix64::new(7);
    let pool = |g: &mut SplitMix64| -> Vec<f16> {
        (0..blocks * shape.block_size * row)
            .map(|_| f16::from_f32(g.next_normal() as f32))
            .collect()
    };
    let caches: Vec<(Vec<f16>, Vec<f16>)> =
        (0..layers).map(|_| (pool(&mut g), pool(&mut g))).collect();
    // Block b of sequence s is pool block (b * batch + s): interleaved, as a
    // pool shared by sequences that grew together is.
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| {
            (0..blocks_per_seq)
                .map(|b| (b * batch + s) as u32)
                .collect()
        })
        .collect();
    let (seq_of, positions): (Vec<&[u32]>, Vec<u32>) = if prefill {
        (0..ctx).map(|p| (tables[0].as_slice(), p as u32)).unzip()
    } else {
        (
            tables.iter().map(|t| t.as_slice()).collect(),
            vec![(ctx - 1) as u32; batch],
        )
    };
    let batch = positions.len();
    let q: Vec<f32> = (0..batch * shape.heads * shape.head_dim)
        .map(|_| g.next_normal() as f32)
        .collect();
    let mut out = vec![0f32; q.len()];
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        for (k, v) in &caches {
            paged_attention_fast(&q, k, v, &seq_of, &positions, shape, &mut out);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    if prefill {
        let pairs = (batch * (batch + 1) / 2 * shape.heads * layers) as f64;
        println!(
            "prefill {batch} tokens layers {layers}: {:.2} ms, {:.2} G (query, position, head) pairs/s",
            best * 1e3,
            pairs / best / 1e9
        );
        return;
    }
    let bytes = (2 * batch * ctx * row * 2 * layers) as f64;
    println!(
        "batch {batch} context {ctx} layers {layers}: {:.2} ms, {:.1} GB/s",
        best * 1e3,
        bytes / best / 1e9
    );
}
