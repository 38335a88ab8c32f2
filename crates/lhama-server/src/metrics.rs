//! Prometheus metrics: request counts by route and status, token counters,
//! engine gauges, and latency histograms, rendered in the text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use lhama_engine::engine::EngineStats;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (c, &b) in self.counts.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= b {
                *c += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
    e2e: Mutex<Histogram>,
}

#[derive(Debug, Clone, Copy)]
pub enum Latency {
    TimeToFirstToken,
    InterToken,
    EndToEnd,
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    pub fn observe(&self, which: Latency, secs: f64) {
        let h = match which {
            Latency::TimeToFirstToken => &self.ttft,
            Latency::InterToken => &self.itl,
            Latency::EndToEnd => &self.e2e,
        };
        if let Ok(mut h) = h.lock() {
            h.observe(secs);
        }
    }

    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let mut out = String::new();
        out.push_str("# HELP lhama_requests_total HTTP requests by route and status.\n# TYPE lhama_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "lhama_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        if let Some(s) = engine {
            let gauges = [
                (
                    "lhama_queue_depth",
                    "Requests waiting for admission.",
                    s.waiting.load(Ordering::Relaxed) as u64,
                    "gauge",
                ),
                (
                    "lhama_running_sequences",
                    "Sequences in the running batch.",
                    s.running.load(Ordering::Relaxed) as u64,
                    "gauge",
                ),
                (
                    "lhama_kv_blocks_used",
                    "KV cache blocks in use.",
                    s.blocks_used.load(Ordering::Relaxed) as u64,
                    "gauge",
                ),
                (
                    "lhama_kv_blocks_free",
                    "KV cache blocks free.",
                    s.blocks_free.load(Ordering::Relaxed) as u64,
                    "gauge",
                ),
                (
                    "lhama_preemptions_total",
                    "Sequences preempted for lack of KV blocks.",
                    s.preemptions.load(Ordering::Relaxed),
                    "counter",
                ),
                (
                    "lhama_prompt_tokens_total",
                    "Prompt tokens received.",
                    s.prompt_tokens.load(Ordering::Relaxed),
                    "counter",
                ),
                (
                    "lhama_generation_tokens_total",
                    "Tokens generated.",
                    s.generated_tokens.load(Ordering::Relaxed),
                    "counter",
                ),
                (
                    "lhama_engine_steps_total",
                    "Forward steps run.",
                    s.steps.load(Ordering::Relaxed),
                    "counter",
                ),
            ];
            for (name, help, v, kind) in gauges {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        }
        for (h, name, help) in [
            (
                &self.ttft,
                "lhama_time_to_first_token_seconds",
                "Time from request to first token.",
            ),
            (
                &self.itl,
                "lhama_inter_token_latency_seconds",
                "Time between consecutive tokens of a request.",
            ),
            (
                &self.e2e,
                "lhama_e2e_request_latency_seconds",
                "Time from request to its last token.",
            ),
        ] {
            if let Ok(h) = h.lock() {
                h.render(&mut out, name, help);
            }
        }
        out
    }
}
