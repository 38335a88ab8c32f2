//! Prometheus metrics through `prometheus-client` (OpenMetrics text): every
//! series carries a `model_name` label, as vLLM's do, so dashboards built for
//! it can be pointed at lhama (docs/METRICS.md maps the names). Request
//! counts by route and status, requests by finish reason, latency and length
//! histograms, engine gauges and counters (read from the engine's atomics at
//! each scrape), KV cache usage, and process metrics (Linux /proc).

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lhama_engine::FinishReason;
use lhama_engine::engine::EngineStats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Seconds: 1 ms to about 65 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

/// Tokens: 1 to 16384.
fn length_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 15)
}

type Labels = Vec<(&'static str, String)>;

/// An accepted connection, counted in `lhama_http_open_connections` while alive.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Engine counters are monotonic atomics in the engine; a scrape adds what
/// they gained since the last one.
#[derive(Default)]
struct Delta {
    counter: Counter,
    seen: AtomicU64,
}

impl Delta {
    fn update(&self, now: u64) {
        let before = self.seen.swap(now, Ordering::Relaxed);
        self.counter.inc_by(now.saturating_sub(before));
    }
}

/// A [`Delta`] of an engine clock in nanoseconds, exported in seconds.
#[derive(Default)]
struct SecondsDelta {
    counter: Counter<f64, AtomicU64>,
    seen: AtomicU64,
}

impl SecondsDelta {
    fn update(&self, now_ns: u64) {
        let before = self.seen.swap(now_ns, Ordering::Relaxed);
        self.counter
            .inc_by(now_ns.saturating_sub(before) as f64 * 1e-9);
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    finished: Family<Labels, Counter>,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue_time: Histogram,
    prompt_len: Histogram,
    generation_len: Histogram,
    waiting: Gauge,
    running: Gauge,
    kv_used: Gauge,
    kv_free: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    preemptions: Delta,
    prompt_tokens: Delta,
    generation_tokens: Delta,
    steps: Delta,
    forward_seconds: SecondsDelta,
    host_seconds: SecondsDelta,
    prefix_queries: Delta,
    prefix_hits: Delta,
    prefix_evictions: Delta,
    prefix_blocks: Gauge,
    open_connections: Gauge,
    refused_connections: Counter,
    resident_memory: Gauge,
    open_fds: Gauge,
    cpu_seconds: Mutex<(Counter<f64, AtomicU64>, f64)>,
    start_time: Gauge<f64, AtomicU64>,
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Latency {
    TimeToFirstToken,
    InterToken,
    EndToEnd,
    /// From submission to the engine admitting the sequence.
    Queue,
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        let mut registry = Registry::with_labels(
            [(
                Cow::Borrowed("model_name"),
                Cow::Owned(model_name.to_string()),
            )]
            .into_iter(),
        );
        let m = Self {
            requests: Family::default(),
            finished: Family::default(),
            ttft: Histogram::new(latency_buckets()),
            itl: Histogram::new(latency_buckets()),
            e2e: Histogram::new(latency_buckets()),
            queue_time: Histogram::new(latency_buckets()),
            prompt_len: Histogram::new(length_buckets()),
            generation_len: Histogram::new(length_buckets()),
            waiting: Gauge::default(),
            running: Gauge::default(),
            kv_used: Gauge::default(),
            kv_free: Gauge::default(),
            kv_usage: Gauge::default(),
            preemptions: Delta::default(),
            prompt_tokens: Delta::default(),
            generation_tokens: Delta::default(),
            steps: Delta::default(),
            forward_seconds: SecondsDelta::default(),
            host_seconds: SecondsDelta::default(),
            prefix_queries: Delta::default(),
            prefix_hits: Delta::default(),
            prefix_evictions: Delta::default(),
            prefix_blocks: Gauge::default(),
            open_connections: Gauge::default(),
            refused_connections: Counter::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            cpu_seconds: Mutex::new((Counter::default(), 0.0)),
            start_time: Gauge::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "lhama_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        r.register(
            "lhama_request_success",
            "Sequences finished, by finish reason (stop, length)",
            m.finished.clone(),
        );
        r.register(
            "lhama_time_to_first_token_seconds",
            "Time from request to its first token",
            m.ttft.clone(),
        );
        r.register(
            "lhama_inter_token_latency_seconds",
            "Time between consecutive tokens of a request",
            m.itl.clone(),
        );
        r.register(
            "lhama_e2e_request_latency_seconds",
            "Time from request to its last token",
            m.e2e.clone(),
        );
        r.register(
            "lhama_request_queue_time_seconds",
            "Time from submission until the engine admits the sequence",
            m.queue_time.clone(),
        );
        r.register(
            "lhama_request_prompt_tokens",
            "Prompt tokens of finished sequences",
            m.prompt_len.clone(),
        );
        r.register(
            "lhama_request_generation_tokens",
            "Generated tokens of finished sequences",
            m.generation_len.clone(),
        );
        r.register(
            "lhama_queue_depth",
            "Sequences waiting for admission",
            m.waiting.clone(),
        );
        r.register(
            "lhama_running_sequences",
            "Sequences in the running batch",
            m.running.clone(),
        );
        r.register(
            "lhama_kv_blocks_used",
            "KV cache blocks in use",
            m.kv_used.clone(),
        );
        r.register(
            "lhama_kv_blocks_free",
            "KV cache blocks free",
            m.kv_free.clone(),
        );
        r.register(
            "lhama_kv_cache_usage_perc",
            "Fraction of the KV cache blocks in use (0 to 1)",
            m.kv_usage.clone(),
        );
        r.register(
            "lhama_preemptions",
            "Sequences preempted for lack of KV blocks",
            m.preemptions.counter.clone(),
        );
        r.register(
            "lhama_prompt_tokens",
            "Prompt tokens received",
            m.prompt_tokens.counter.clone(),
        );
        r.register(
            "lhama_generation_tokens",
            "Tokens generated",
            m.generation_tokens.counter.clone(),
        );
        r.register(
            "lhama_engine_steps",
            "Forward steps run",
            m.steps.counter.clone(),
        );
        r.register(
            "lhama_engine_forward_seconds",
            "Time in the backend's forward passes",
            m.forward_seconds.counter.clone(),
        );
        r.register(
            "lhama_engine_host_seconds",
            "The engine loop's own time between forward passes while it has work (the device waits for it)",
            m.host_seconds.counter.clone(),
        );
        r.register(
            "lhama_prefix_cache_queries",
            "Prompt tokens of admitted sequences looked up in the prefix cache",
            m.prefix_queries.counter.clone(),
        );
        r.register(
            "lhama_prefix_cache_hits",
            "Prompt tokens served from the prefix cache",
            m.prefix_hits.counter.clone(),
        );
        r.register(
            "lhama_prefix_cache_evictions",
            "Cached KV blocks whose content was dropped to reuse the block",
            m.prefix_evictions.counter.clone(),
        );
        r.register(
            "lhama_prefix_cache_blocks",
            "KV blocks holding cached prefix content (in use or free)",
            m.prefix_blocks.clone(),
        );
        r.register(
            "lhama_http_open_connections",
            "HTTP connections open (accepted under --max-connections)",
            m.open_connections.clone(),
        );
        r.register(
            "lhama_http_refused_connections",
            "HTTP connections refused with 503 at the connection cap",
            m.refused_connections.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            m.resident_memory.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            m.open_fds.clone(),
        );
        if let Ok(c) = m.cpu_seconds.lock() {
            r.register(
                "process_cpu_seconds",
                "User and system CPU time of the server process",
                c.0.clone(),
            );
        }
        r.register(
            "process_start_time_seconds",
            "Start of the server, Unix time",
            m.start_time.clone(),
        );
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.start_time.set(start);
        Self { registry, ..m }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn observe(&self, which: Latency, secs: f64) {
        match which {
            Latency::TimeToFirstToken => &self.ttft,
            Latency::InterToken => &self.itl,
            Latency::EndToEnd => &self.e2e,
            Latency::Queue => &self.queue_time,
        }
        .observe(secs);
    }

    /// A connection was accepted; the returned guard counts it open until dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection(self.open_connections.clone())
    }

    /// A connection over the cap was refused.
    pub fn connection_refused(&self) {
        self.refused_connections.inc();
    }

    /// A sequence finished.
    pub fn sequence_done(
        &self,
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) {
        let reason = match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        };
        self.finished
            .get_or_create(&vec![("finished_reason", reason.to_string())])
            .inc();
        self.prompt_len.observe(prompt_tokens as f64);
        self.generation_len.observe(completion_tokens as f64);
    }

    /// The exposition, after reading the engine's figures and the process's.
    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let _one_scrape_at_a_time = self.scrape.lock();
        if let Some(s) = engine {
            let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as i64;
            self.waiting.set(load(&s.waiting));
            self.running.set(load(&s.running));
            let (used, free) = (load(&s.blocks_used), load(&s.blocks_free));
            self.kv_used.set(used);
            self.kv_free.set(free);
            if used + free > 0 {
                self.kv_usage.set(used as f64 / (used + free) as f64);
            }
            self.preemptions
                .update(s.preemptions.load(Ordering::Relaxed));
            self.prompt_tokens
                .update(s.prompt_tokens.load(Ordering::Relaxed));
            self.generation_tokens
                .update(s.generated_tokens.load(Ordering::Relaxed));
            self.steps.update(s.steps.load(Ordering::Relaxed));
            self.forward_seconds
                .update(s.forward_ns.load(Ordering::Relaxed));
            self.host_seconds.update(s.host_ns.load(Ordering::Relaxed));
            self.prefix_queries
                .update(s.prefix_queried_tokens.load(Ordering::Relaxed));
            self.prefix_hits
                .update(s.prefix_hit_tokens.load(Ordering::Relaxed));
            self.prefix_evictions
                .update(s.prefix_evicted_blocks.load(Ordering::Relaxed));
            self.prefix_blocks.set(load(&s.blocks_cached));
        }
        self.read_process();
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.push_str("# metrics could not be encoded\n");
        }
        out
    }

    /// Resident memory, open descriptors and CPU time from /proc (Linux;
    /// elsewhere these stay at 0).
    fn read_process(&self) {
        const PAGE: i64 = 4096;
        const TICKS_PER_SECOND: f64 = 100.0;
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<i64>().ok())
        {
            self.resident_memory.set(pages * PAGE);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces): utime and
            // stime are the 12th and 13th after the closing parenthesis.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let secs = (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
            if let Ok(mut c) = self.cpu_seconds.lock()
                && secs > c.1
            {
                c.0.inc_by(secs - c.1);
                c.1 = secs;
            }
        }
    }
}
