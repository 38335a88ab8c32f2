//! Times the CPU fast path's integer AWQ product on ttl-460m's shapes
//! (`cargo run --release -p lhama-cpu --example int8_bench -- [ROWS] [LAYERS]`,
//! default `1,8 24`): the best of many runs per (shape, rows), with the
//! weight bytes streamed per second and the multiply-adds per second. Weights are random (the speed does not
//! depend on them).
use std::time::Instant;

use lhama_cpu::int8::{Int8Layout, matmul};
use lhama_model::awq;
use lhama_model::rng::SplitMix64;
use lhama_model::weights::{AwqWeights, FusedAwq};

fn main() {
    let mut g = SplitMix64::new(1);
    let rows: Vec<usize> = std::env::args()
        .nth(1)
        .map(|a| a.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8]);
    // Second argument: copies of each layer (24, the model's layers: from
    // memory; 1: from cache, what the arithmetic alone takes).
    let layers: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(24)
        .max(1);
    let reps = (240 / layers).max(10);
    println!("shape (K x N)        rows   best us    GB/s  GMAC/s");
    for (name, k, n) in [
        ("qkv", 1024, 3072),
        ("o", 1024, 1024),
        ("gate_up", 1024, 8192),
        ("down", 4096, 1024),
    ] {
        let w: Vec<f32> = (0..k * n).map(|_| g.next_normal() as f32).collect();
        let q = awq::quantize(&w, k, n, 128);
        let a = AwqWeights {
            in_features: k,
            out_features: n,
            group_size: 128,
            qweight: q.qweight,
            qzeros: q.qzeros,
            scales: q.scales,
        };
        let f = FusedAwq::new(&[&a]);
        // As many copies as the model has layers, used in turn: their 100+ MB
        // come from memory, as in a decode step, not from the caches.
        let layouts: Vec<Int8Layout> = (0..layers)
            .map(|_| Int8Layout::new(&f).expect("ttl shapes fit the layout"))
            .collect();
        let layout = &layouts[0];
        for &m in &rows {
            let x: Vec<f32> = (0..m * k).map(|_| g.next_normal() as f32).collect();
            let mut y = vec![0f32; m * n];
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t = Instant::now();
                for l in &layouts {
                    matmul(&x, m, &f, l, &mut y);
                }
                best = best.min(t.elapsed().as_secs_f64() / layers as f64);
            }
            let bytes = layout.bytes() as f64;
            println!(
                "{name:8} {k:5} x {n:5} {m:6} {:9.1} {:7.1} {:7.1}",
                best * 1e6,
                bytes / best / 1e9,
                (m * k * n) as f64 / best / 1e9
            );
        }
    }
}
