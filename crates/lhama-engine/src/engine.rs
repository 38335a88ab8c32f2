//! The engine loop: one thread owns the backend and the scheduler; the HTTP
//! side submits requests through a channel and reads a stream of per-token
//! events. Dropping the stream cancels the request: its sequence is removed
//! and its KV blocks freed at the start of the next step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use lhama_model::{
    Backend, BackendError, ForwardBatch, RowSampling, SampledStep, SeqSlice, Tokenizer,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::guided::{self, Guide};
use crate::output::{self, Out};
use crate::params::{RequestParams, logprobs, process_logits};
use crate::sampling::Sampler;
use crate::scheduler::{Scheduler, SchedulerConfig, SeqId, StepPlan};
use llguidance::toktrie::SimpleVob;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Longest sequence (prompt + generated) a request may reach.
    pub max_model_len: usize,
    /// Tokens that end generation unless `ignore_eos`.
    pub eos_ids: Vec<u32>,
    /// A pause after every step: only for tests that need requests to stay
    /// running or queued for a while (`LHAMA_TEST_STEP_DELAY_MS` in `lhama serve`).
    pub step_delay: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The most likely tokens at this position, best first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The scheduler took the sequence into the running batch (first time
    /// only; a preempted sequence's return is not reported again), with
    /// this many prompt tokens served from the prefix cache.
    Admitted {
        cached_tokens: usize,
    },
    /// Logprobs of the prompt tokens (the first has none), before any token.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// A generated token and the text it completes (may be empty while a
    /// character or a possible stop string is incomplete).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end that belongs to no new token.
    Text(String),
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// Live figures for /metrics and /health.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub alive: AtomicBool,
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub blocks_used: AtomicUsize,
    pub blocks_free: AtomicUsize,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// KV blocks holding published prefix content (in use or free).
    pub blocks_cached: AtomicUsize,
    /// Prefix cache: prompt tokens looked up, tokens served, blocks evicted.
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub prefix_evicted_blocks: AtomicU64,
    /// Nanoseconds in the backend's forward passes.
    pub forward_ns: AtomicU64,
    /// Nanoseconds of the engine loop's own work while it has work (planning,
    /// building batches, sampling on the host, handing results on): the
    /// time the device waits for the host.
    pub host_ns: AtomicU64,
}

enum Command {
    Add {
        id: SeqId,
        prompt: Vec<u32>,
        params: RequestParams,
        events: UnboundedSender<Event>,
    },
}

/// Where requests are submitted; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    pub stats: Arc<EngineStats>,
    pub config: Arc<EngineConfig>,
}

/// Events of one request; dropping it cancels the request.
pub struct RequestStream {
    pub events: UnboundedReceiver<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine has stopped")]
    EngineStopped,
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) = {} exceeds the maximum context length of {limit} tokens", prompt + max_tokens)]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
}

impl EngineHandle {
    /// Whether a prompt of this length plus `max_tokens` fits the context
    /// (`submit` checks it too; callers may check before costly work).
    pub fn check_fits(&self, prompt: usize, max_tokens: usize) -> Result<(), SubmitError> {
        let limit = self.config.max_model_len;
        if prompt + max_tokens > limit {
            return Err(SubmitError::TooLong {
                prompt,
                max_tokens,
                limit,
            });
        }
        Ok(())
    }

    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: RequestParams,
    ) -> Result<RequestStream, SubmitError> {
        if prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        self.check_fits(prompt.len(), params.max_tokens)?;
        let (events, rx) = unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.commands
            .send(Command::Add {
                id,
                prompt,
                params,
                events,
            })
            .map_err(|_| SubmitError::EngineStopped)?;
        Ok(RequestStream { events: rx })
    }
}

/// `items` in at most `groups` runs of nearly equal length, in order.
fn split_in_groups<T>(mut items: Vec<T>, groups: usize) -> Vec<Vec<T>> {
    let per_group = items.len().div_ceil(groups.max(1)).max(1);
    let mut out = Vec::with_capacity(groups);
    while !items.is_empty() {
        let tail = items.split_off(per_group.min(items.len()));
        out.push(std::mem::replace(&mut items, tail));
    }
    out
}

/// Threads that compute `rows` grammar masks during a step: the cores the
/// engine thread leaves (at least one), with at least 4 rows each so a
/// thread's start costs little next to its work.
fn mask_threads(rows: usize) -> usize {
    // Asked once: on Linux the answer reads the affinity mask and cgroup
    // quotas, not worth doing every step.
    static SPARE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let spare = *SPARE.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1)
    });
    rows.div_ceil(4).clamp(1, spare)
}

/// Starts the engine thread. It runs until every handle is dropped and the
/// last request has finished.
pub fn spawn(
    backend: Box<dyn Backend>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
) -> EngineHandle {
    let (commands, rx) = mpsc::channel();
    let stats = Arc::new(EngineStats::default());
    stats.alive.store(true, Ordering::SeqCst);
    let config = Arc::new(config);
    let (output, ended) = output::spawn(tokenizer, stats.clone());
    let engine = Engine {
        _alive: Alive(stats.clone()),
        scheduler: Scheduler::new(config.scheduler),
        backend,
        config: config.clone(),
        stats: stats.clone(),
        active: HashMap::new(),
        out: SampledStep::default(),
        outbox: Vec::new(),
        output,
        ended,
    };
    std::thread::Builder::new()
        .name("lhama-engine".into())
        .spawn(move || engine.run(rx))
        .expect("spawning the engine thread");
    EngineHandle {
        commands,
        next_id: Arc::new(AtomicU64::new(1)),
        stats,
        config,
    }
}

struct Active {
    prompt_len: usize,
    /// Prompt, then every generated token.
    tokens: Vec<u32>,
    params: RequestParams,
    sampler: Sampler,
    /// Kept to see a cancellation (the receiver dropped); events go
    /// through the output thread.
    events: UnboundedSender<Event>,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    prompt_logprobs_sent: bool,
    /// Event::Admitted has been sent.
    admitted: bool,
}

impl Active {
    fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

/// Marks the engine dead when dropped, however its loop ends (panics
/// included).
struct Alive(Arc<EngineStats>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

struct Engine {
    /// First, so dropped first: the engine counts as dead (`/health` 503)
    /// before the channels below close and requests in flight fail.
    _alive: Alive,
    scheduler: Scheduler,
    backend: Box<dyn Backend>,
    config: Arc<EngineConfig>,
    stats: Arc<EngineStats>,
    active: HashMap<SeqId, Active>,
    /// The backend's answer to a step, reused.
    out: SampledStep,
    /// This step's messages for the output thread, sent together.
    outbox: Vec<Out>,
    output: mpsc::Sender<Vec<Out>>,
    /// Sequences the output thread ended (stop strings), to drop.
    ended: mpsc::Receiver<SeqId>,
}

impl Engine {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let mut open = true;
        loop {
            // Block for work when idle; otherwise take what has arrived.
            if !self.scheduler.has_work() {
                if !open {
                    return;
                }
                match commands.recv() {
                    Ok(c) => self.accept(c),
                    Err(_) => return,
                }
            }
            let start = std::time::Instant::now();
            let forward_before = self.stats.forward_ns.load(Ordering::Relaxed);
            loop {
                match commands.try_recv() {
                    Ok(c) => self.accept(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.drop_cancelled();
            self.drop_ended();
            let plan = self.scheduler.schedule();
            if !plan.is_empty() {
                let _span = tracing::debug_span!(
                    "step",
                    seqs = plan.seqs.len(),
                    tokens = plan.num_tokens()
                )
                .entered();
                self.step(&plan);
            }
            self.publish_stats();
            self.flush_outbox();
            let forward = self.stats.forward_ns.load(Ordering::Relaxed) - forward_before;
            let busy = start.elapsed().as_nanos() as u64;
            self.stats
                .host_ns
                .fetch_add(busy.saturating_sub(forward), Ordering::Relaxed);
            if !plan.is_empty()
                && let Some(d) = self.config.step_delay
            {
                std::thread::sleep(d);
            }
        }
    }

    /// Hands this step's messages to the output thread in one send.
    fn flush_outbox(&mut self) {
        if !self.outbox.is_empty() {
            // The output thread ends only when this sender is dropped.
            let _ = self.output.send(std::mem::take(&mut self.outbox));
        }
    }

    /// An event of the engine's own, in order with the sequence's tokens.
    fn send(&mut self, id: SeqId, event: Event) {
        self.outbox.push(Out::Event { id, event });
    }

    fn accept(&mut self, command: Command) {
        let Command::Add {
            id,
            prompt,
            params,
            events,
        } = command;
        self.stats
            .prompt_tokens
            .fetch_add(prompt.len() as u64, Ordering::Relaxed);
        self.outbox.push(Out::Open {
            id,
            events: events.clone(),
            skip_special_tokens: params.skip_special_tokens,
            stop: params.stop.clone(),
            prompt_tokens: prompt.len(),
        });
        let active = Active {
            prompt_len: prompt.len(),
            tokens: prompt.clone(),
            sampler: Sampler::new(params.sampling.clone()),
            params,
            events,
            prompt_logprobs: vec![None],
            prompt_logprobs_sent: false,
            admitted: false,
        };
        // Prompt logprobs need every prompt position's logits: no reuse.
        let reuse = active.params.prompt_logprobs.is_none();
        let salt = active
            .params
            .cache_salt
            .as_deref()
            .map(|s| crate::blocks::salt_hash(s.as_bytes()));
        self.active.insert(id, active);
        self.scheduler.add_salted(id, prompt, reuse, salt);
    }

    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.finish(id);
        }
    }

    /// Drops the sequences whose text reached a stop string: their last
    /// events are sent; tokens of steps already run for them are discarded.
    fn drop_ended(&mut self) {
        while let Ok(id) = self.ended.try_recv() {
            if self.active.contains_key(&id) {
                self.finish(id);
            }
        }
    }

    fn finish(&mut self, id: SeqId) {
        self.scheduler.remove(id);
        if self.active.remove(&id).is_some() {
            self.outbox.push(Out::Close { id });
        }
    }

    fn publish_stats(&self) {
        let s = &self.stats;
        s.waiting
            .store(self.scheduler.num_waiting(), Ordering::Relaxed);
        s.running
            .store(self.scheduler.num_running(), Ordering::Relaxed);
        s.blocks_used
            .store(self.scheduler.blocks_used(), Ordering::Relaxed);
        s.blocks_free
            .store(self.scheduler.blocks_free(), Ordering::Relaxed);
        s.preemptions
            .store(self.scheduler.preemptions(), Ordering::Relaxed);
        s.blocks_cached
            .store(self.scheduler.blocks_cached(), Ordering::Relaxed);
        let c = self.scheduler.cache_counters();
        s.prefix_queried_tokens
            .store(c.queried_tokens, Ordering::Relaxed);
        s.prefix_hit_tokens.store(c.hit_tokens, Ordering::Relaxed);
        s.prefix_evicted_blocks
            .store(c.evicted_blocks, Ordering::Relaxed);
    }

    /// The token masks of the plan's sampled guided rows, computed on the
    /// cores the engine thread leaves (one grammar's mask can take a tenth
    /// of a millisecond or more, times up to max_num_seqs rows a step), while
    /// a device backend runs the step's forward pass. A grammar that panics
    /// fails only its own sequence.
    fn guided_masks(
        active: &mut HashMap<SeqId, Active>,
        plan: &StepPlan,
    ) -> HashMap<SeqId, Result<SimpleVob, String>> {
        let guided: Vec<(SeqId, Guide)> = plan
            .seqs
            .iter()
            .filter(|s| s.sample)
            .filter_map(|s| {
                let a = active.get_mut(&s.id)?;
                Some((s.id, a.params.guide.take()?))
            })
            .collect();
        if guided.is_empty() {
            return HashMap::new();
        }
        let ids: Vec<SeqId> = guided.iter().map(|(id, _)| *id).collect();
        let groups = split_in_groups(guided, mask_threads(ids.len()));
        let computed: Vec<(SeqId, Guide, Result<SimpleVob, String>)> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = groups
                    .into_iter()
                    .map(|group| {
                        scope.spawn(move || {
                            group
                                .into_iter()
                                .map(|(id, mut g)| {
                                    let m = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                                        || g.allowed(),
                                    ))
                                    .unwrap_or_else(|_| {
                                        Err("structured output: the mask computation failed".into())
                                    });
                                    (id, g, m)
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap_or_default())
                    .collect()
            });
        let mut masks = HashMap::new();
        for (id, g, m) in computed {
            if let Some(a) = active.get_mut(&id) {
                a.params.guide = Some(g);
            }
            masks.insert(id, m);
        }
        for id in ids {
            // A thread that panicked lost its grammars.
            masks
                .entry(id)
                .or_insert_with(|| Err("structured output: the mask computation failed".into()));
        }
        masks
    }

    fn step(&mut self, plan: &StepPlan) {
        // The grammar masks of this step's sampled guided rows are computed
        // while the forward pass runs (forward_sample_masked), so that a
        // backend that samples on the device applies them there.
        let guided = plan.seqs.iter().any(|s| {
            s.sample
                && self
                    .active
                    .get(&s.id)
                    .is_some_and(|a| a.params.guide.is_some())
        });
        let device_masks = self.backend.supports_masks();
        // (sequence, logit row) of the guided rows the backend masks.
        let mut device_masked: Vec<(SeqId, usize)> = Vec::new();
        let mut tokens = Vec::with_capacity(plan.num_tokens());
        let mut positions = Vec::with_capacity(plan.num_tokens());
        let mut rows = Vec::new();
        // How each row becomes a token: on the backend unless the request
        // needs the whole row (prompt logprobs, logprobs, penalties, bias,
        // min_tokens), in which case the logits come back.
        let mut sampling = Vec::new();
        // Per sequence: (first logit row, rows) for reading results back.
        let mut row_start = Vec::with_capacity(plan.seqs.len());
        for s in &plan.seqs {
            if let Some(a) = self.active.get_mut(&s.id)
                && !a.admitted
            {
                a.admitted = true;
                let cached_tokens = self.scheduler.cached_tokens(s.id).unwrap_or(0);
                self.outbox.push(Out::Event {
                    id: s.id,
                    event: Event::Admitted { cached_tokens },
                });
            }
            let base = tokens.len() as u32;
            tokens.extend_from_slice(&s.tokens);
            positions.extend((s.start..s.start + s.tokens.len()).map(|p| p as u32));
            let first_row = rows.len();
            let active = self.active.get_mut(&s.id);
            let wants_prompt = active.as_ref().is_some_and(|a| {
                a.params.prompt_logprobs.is_some()
                    && !a.prompt_logprobs_sent
                    && s.start < a.prompt_len
            });
            if wants_prompt {
                rows.extend(base..base + s.tokens.len() as u32);
                sampling.resize(rows.len(), RowSampling::Logits);
            } else if s.sample {
                rows.push(base + s.tokens.len() as u32 - 1);
                // A guided row is sampled by the backend when it applies
                // masks (a mask that fails or allows nothing is reported
                // after the step, and the row's token dropped).
                sampling.push(match active {
                    Some(a)
                        if !a.params.changes_logits(a.generated().len())
                            && a.params.logprobs.is_none()
                            && (a.params.guide.is_none() || device_masks)
                            && a.params.max_tokens > 0 =>
                    {
                        if a.params.guide.is_some() {
                            device_masked.push((s.id, rows.len() - 1));
                        }
                        a.sampler.next_row_sampling()
                    }
                    _ => RowSampling::Logits,
                });
            }
            row_start.push(first_row);
        }
        let seqs: Vec<SeqSlice<'_>> = {
            let mut start = 0;
            plan.seqs
                .iter()
                .map(|s| {
                    let slice = SeqSlice {
                        token_start: start,
                        num_tokens: s.tokens.len(),
                        block_table: &s.block_table,
                    };
                    start += s.tokens.len();
                    slice
                })
                .collect()
        };
        let batch = ForwardBatch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            logit_rows: &rows,
        };
        let mut out = std::mem::take(&mut self.out);
        let mut masks = HashMap::new();
        let forward_start = std::time::Instant::now();
        let result = if guided {
            // Called by the backend once the forward pass is under way: every
            // guided row's mask, handing back those of the rows the backend
            // samples (no logits come back for them).
            let active = &mut self.active;
            let mut device_rows = || {
                masks = Self::guided_masks(active, plan);
                device_masked
                    .iter()
                    .filter_map(|(id, row)| match masks.get(id) {
                        Some(Ok(m)) if !m.is_zero() => Some((*row, m.as_slice().to_vec())),
                        _ => None,
                    })
                    .collect()
            };
            self.backend
                .forward_sample_masked(&batch, &sampling, &mut device_rows, &mut out)
        } else {
            self.backend.forward_sample(&batch, &sampling, &mut out)
        };
        self.stats
            .forward_ns
            .fetch_add(forward_start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        // A backend that never asked for the masks would leave guided rows
        // unconstrained.
        let result = result.and_then(|()| {
            if guided && masks.is_empty() {
                Err(BackendError::Device(
                    "the backend sampled guided rows without asking for their masks".into(),
                ))
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "forward step failed");
            for s in &plan.seqs {
                if self.active.contains_key(&s.id) {
                    self.send(s.id, Event::Error(e.to_string()));
                }
                self.finish(s.id);
            }
            self.out = out;
            return;
        }
        let logits = &out.logits;
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let vocab = self.backend.config().vocab_size;
        let mut sampled = Vec::new();
        let mut finished = Vec::new();
        for (s, &first_row) in plan.seqs.iter().zip(&row_start) {
            let Some(a) = self.active.get_mut(&s.id) else {
                continue;
            };
            let mut row = first_row;
            if a.params.prompt_logprobs.is_some()
                && !a.prompt_logprobs_sent
                && s.start < a.prompt_len
            {
                let k = a.params.prompt_logprobs.unwrap_or(0);
                // Entry j is token j's logprob (entry 0 has none). A sequence
                // recomputed after preemption starts again at position 0, so
                // what an earlier pass left at and after this chunk goes.
                a.prompt_logprobs.truncate(s.start + 1);
                for i in 0..s.tokens.len() {
                    let pos = s.start + i;
                    if pos + 1 < a.prompt_len {
                        let next = a.tokens[pos + 1];
                        let (lp, top) = logprobs(&logits[(row + i) * vocab..][..vocab], next, k);
                        a.prompt_logprobs.push(Some(TokenLogprob {
                            token: next,
                            logprob: lp,
                            top,
                        }));
                    }
                }
                row += s.tokens.len() - 1;
            }
            if !s.sample {
                continue;
            }
            if a.params.prompt_logprobs.is_some() && !a.prompt_logprobs_sent {
                a.prompt_logprobs_sent = true;
                let lps = std::mem::take(&mut a.prompt_logprobs);
                self.outbox.push(Out::Event {
                    id: s.id,
                    event: Event::PromptLogprobs(lps),
                });
            }
            if a.params.max_tokens == 0 {
                self.outbox.push(Out::Event {
                    id: s.id,
                    event: Event::Done {
                        reason: FinishReason::Length,
                        prompt_tokens: a.prompt_len,
                        completion_tokens: 0,
                    },
                });
                finished.push(s.id);
                continue;
            }
            // A guided row: the mask applies before everything else (done by
            // the backend for the rows it sampled).
            let on_device = device_masked.iter().any(|(id, _)| *id == s.id);
            let masked_row = match masks.remove(&s.id) {
                None => None,
                Some(Ok(m)) if on_device && m.is_zero() => {
                    self.outbox.push(Out::Event {
                        id: s.id,
                        event: Event::Error(
                            "structured output: no token the grammar allows is possible".into(),
                        ),
                    });
                    finished.push(s.id);
                    continue;
                }
                Some(Ok(_)) if on_device => None,
                Some(Err(e)) => {
                    self.outbox.push(Out::Event {
                        id: s.id,
                        event: Event::Error(e),
                    });
                    finished.push(s.id);
                    continue;
                }
                Some(Ok(mask)) => {
                    let mut r = logits[row * vocab..][..vocab].to_vec();
                    if !guided::apply_mask(&mut r, &mask) {
                        self.outbox.push(Out::Event {
                            id: s.id,
                            event: Event::Error(
                                "structured output: no token the grammar allows is possible".into(),
                            ),
                        });
                        finished.push(s.id);
                        continue;
                    }
                    Some(r)
                }
            };
            let token = match sampling[row] {
                RowSampling::Logits => {
                    let raw = masked_row
                        .as_deref()
                        .unwrap_or(&logits[row * vocab..][..vocab]);
                    // Copy the row only when something changes it (penalties, bias, min_tokens).
                    if a.params.changes_logits(a.generated().len()) {
                        let mut processed = raw.to_vec();
                        process_logits(
                            &mut processed,
                            &a.params,
                            &a.tokens[..a.prompt_len],
                            a.generated(),
                            &self.config.eos_ids,
                        );
                        if masked_row.is_some() && !processed.iter().any(|l| l.is_finite()) {
                            // The grammar allows only what min_tokens or a
                            // stop token bans (its end): the grammar wins.
                            a.sampler.sample(raw)
                        } else {
                            a.sampler.sample(&processed)
                        }
                    } else {
                        a.sampler.sample(raw)
                    }
                }
                _ => out.tokens[row],
            };
            // Requests asking for logprobs always get their row back (masked
            // for a guided row).
            let logprob = a.params.logprobs.map(|k| {
                let raw = masked_row
                    .as_deref()
                    .unwrap_or(&logits[row * vocab..][..vocab]);
                let (lp, top) = logprobs(raw, token, k);
                TokenLogprob {
                    token,
                    logprob: lp,
                    top,
                }
            });
            if let Some(g) = a.params.guide.as_mut()
                && let Err(e) = g.accept(token)
            {
                self.outbox.push(Out::Event {
                    id: s.id,
                    event: Event::Error(e),
                });
                finished.push(s.id);
                continue;
            }
            a.tokens.push(token);
            sampled.push((s.id, token));
            if self.emit(s.id, token, logprob) {
                finished.push(s.id);
            }
        }
        self.out = out;
        self.scheduler.complete(plan, &sampled);
        for id in finished {
            self.finish(id);
        }
    }

    /// Hands the token to the output thread with the end the ids show (a
    /// stop token, max_tokens, the context, a finished grammar); returns
    /// whether the sequence ends here. A stop string is found there.
    fn emit(&mut self, id: SeqId, token: u32, logprob: Option<TokenLogprob>) -> bool {
        let eos = &self.config.eos_ids;
        let Some(a) = self.active.get(&id) else {
            return false;
        };
        let stop_token = a.params.stop_token_ids.contains(&token)
            || (!a.params.ignore_eos && eos.contains(&token));
        let generated = a.tokens.len() - a.prompt_len;
        let end = if stop_token || a.params.guide.as_ref().is_some_and(Guide::is_finished) {
            // A stop token, or a complete grammar that allows nothing more.
            Some(FinishReason::Stop)
        } else if generated >= a.params.max_tokens || a.tokens.len() >= self.config.max_model_len {
            Some(FinishReason::Length)
        } else {
            None
        };
        self.outbox.push(Out::Token {
            id,
            token,
            logprob,
            stop_token,
            end,
        });
        end.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_rows_are_split_in_order_without_loss() {
        for (rows, groups) in [(0, 3), (1, 3), (4, 1), (7, 3), (64, 15), (5, 8)] {
            let items: Vec<usize> = (0..rows).collect();
            let split = split_in_groups(items.clone(), groups);
            assert!(
                split.len() <= groups,
                "{rows} rows in {} > {groups} groups",
                split.len()
            );
            assert!(split.iter().all(|g| !g.is_empty()));
            assert_eq!(split.concat(), items, "{rows} rows, {groups} groups");
            if let (Some(max), Some(min)) = (
                split.iter().map(Vec::len).max(),
                split.iter().map(Vec::len).min(),
            ) {
                assert!(
                    max - min <= max.div_ceil(2),
                    "{rows} rows: uneven {split:?}"
                );
            }
        }
        assert_eq!(mask_threads(0), 1);
        assert_eq!(mask_threads(3), 1);
        assert!(mask_threads(1000) >= 1);
    }
}
