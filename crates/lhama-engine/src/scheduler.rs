//! Iteration-level (continuous) batching as a plain state machine, testable
//! without a model.
//!
//! Every step, `schedule` emits a plan under a token budget: running
//! sequences first (one decode token each, or the next chunk of a prompt
//! still being prefilled), then waiting sequences admitted in arrival order
//! as far as the budget, `max_num_seqs` and free KV blocks allow. A long
//! prompt is split into chunks, so it never stalls the streams already
//! running. When KV blocks run out, the most recently admitted running
//! sequence is preempted: its blocks are freed and it goes back to the front
//! of the queue, to be recomputed (prompt + tokens generated so far).
//!
//! With prefix caching, a sequence admitted for the first time (or again
//! after preemption) takes the longest run of cached full blocks that its
//! tokens start with, and its first chunk starts after them; the last
//! prompt token is always computed, so that its logits exist. Every block a
//! sequence fills is published when computed. A waiting sequence whose next
//! block is being computed right now by a running one (the other choices of
//! an `n > 1` request, or the same prompt sent twice at once) waits for it
//! instead of computing it a second time.

use std::collections::{HashMap, VecDeque};

use crate::blocks::{BlockHash, BlockPool, CacheCounters, chain_hash};

pub type SeqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    /// Automatic prefix caching.
    pub prefix_caching: bool,
}

#[derive(Debug, Clone)]
struct Seq {
    id: SeqId,
    /// Prompt followed by every generated token.
    tokens: Vec<u32>,
    /// Tokens whose K/V is in the cache.
    computed: usize,
    blocks: Vec<u32>,
    /// May take cached blocks (not when every prompt position's logits are needed).
    reuse: bool,
    /// Chain hashes of the full blocks of `tokens`, as far as computed so far.
    hashes: Vec<BlockHash>,
    /// Blocks of `blocks` already published (or found published).
    published: usize,
    /// Prompt tokens served from the cache at the first admission.
    cached_tokens: Option<usize>,
    /// The root of its hash chain (`blocks::salt_hash`), if salted.
    salt: Option<BlockHash>,
}

impl Seq {
    /// Extends `hashes` to the first `blocks` full blocks of `tokens`.
    fn hash_blocks(&mut self, blocks: usize, block_size: usize) {
        while self.hashes.len() < blocks {
            let i = self.hashes.len();
            let parent = self.hashes.last().copied().or(self.salt);
            let h = chain_hash(parent, &self.tokens[i * block_size..(i + 1) * block_size]);
            self.hashes.push(h);
        }
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// Position of `tokens[0]` in the sequence.
    pub start: usize,
    pub tokens: Vec<u32>,
    pub block_table: Vec<u32>,
    /// True when this chunk reaches the end of the sequence: its last token's
    /// logits give the next token.
    pub sample: bool,
}

/// What one forward step runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted while planning this step (requeued for recompute).
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockPool,
    waiting: VecDeque<Seq>,
    /// In admission order: the last one is the most recently admitted.
    running: Vec<Seq>,
    /// Blocks that running sequences are computing now, by content: a
    /// waiting sequence that needs one waits for it to be published.
    pending: HashMap<BlockHash, SeqId>,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        assert!(
            config.max_num_seqs > 0 && config.max_num_batched_tokens > 0,
            "limits are validated before the scheduler is built"
        );
        Self {
            blocks: BlockPool::new(config.num_blocks, config.block_size, config.prefix_caching),
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            pending: HashMap::new(),
            preemptions: 0,
        }
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// Queues a sequence. The caller has checked that prompt + max_tokens
    /// fits the KV pool on its own, so it can always run eventually.
    /// `reuse`: it may start from cached blocks (false when the logits of
    /// every prompt position are needed).
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, reuse: bool) {
        self.add_salted(id, prompt, reuse, None);
    }

    /// As `add`, for a sequence whose blocks are shared only with sequences
    /// of the same salt (`blocks::salt_hash`).
    pub fn add_salted(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        reuse: bool,
        salt: Option<BlockHash>,
    ) {
        self.waiting.push_back(Seq {
            salt,
            id,
            tokens: prompt,
            computed: 0,
            blocks: Vec::new(),
            reuse,
            hashes: Vec::new(),
            published: 0,
            cached_tokens: None,
        });
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn blocks_used(&self) -> usize {
        self.blocks.num_used()
    }

    pub fn blocks_free(&self) -> usize {
        self.blocks.num_free()
    }

    /// Blocks holding published content (in use or free).
    pub fn blocks_cached(&self) -> usize {
        self.blocks.num_cached()
    }

    pub fn cache_counters(&self) -> CacheCounters {
        self.blocks.counters()
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Prompt tokens a running sequence took from the cache when first admitted.
    pub fn cached_tokens(&self, id: SeqId) -> Option<usize> {
        self.running
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.cached_tokens)
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_num_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let remaining = self.running[i].tokens.len() - self.running[i].computed;
            let n = remaining.min(budget);
            let target = self.running[i].computed + n;
            // Free blocks by preempting the newest sequences until this one fits.
            loop {
                let seq = &mut self.running[i];
                if self.blocks.grow(&mut seq.blocks, target) {
                    break;
                }
                let victim = self.running.len() - 1;
                plan.preempted.push(self.running[victim].id);
                self.preempt(victim);
                if victim == i {
                    break;
                }
            }
            if i >= self.running.len() {
                break;
            }
            let seq = &self.running[i];
            plan.seqs.push(ScheduledSeq {
                id: seq.id,
                start: seq.computed,
                tokens: seq.tokens[seq.computed..target].to_vec(),
                block_table: seq.blocks.clone(),
                sample: target == seq.tokens.len(),
            });
            budget -= n;
            i += 1;
        }
        // Preempted sequences were requeued at the front; admit in order.
        while budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(front) = self.waiting.front_mut() else {
                break;
            };
            if plan.preempted.contains(&front.id) {
                break; // not again within the step that preempted it
            }
            let Some(hit_tokens) = Self::reuse_prefix(&mut self.blocks, &self.pending, front)
            else {
                break; // its next block is being computed: next step
            };
            let n = (front.tokens.len() - front.computed).min(budget);
            if !self.blocks.grow(&mut front.blocks, front.computed + n) {
                self.blocks.release(&mut front.blocks);
                front.computed = 0;
                front.published = 0;
                break;
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            // Counted once per sequence, at its first admission (its tokens
            // are then the prompt); a return after preemption is not a query.
            if seq.cached_tokens.is_none() && seq.reuse && self.blocks.caching() {
                self.blocks.count_lookup(seq.tokens.len(), hit_tokens);
            }
            seq.cached_tokens.get_or_insert(hit_tokens);
            self.promise(&mut seq);
            plan.seqs.push(ScheduledSeq {
                id: seq.id,
                start: seq.computed,
                tokens: seq.tokens[seq.computed..seq.computed + n].to_vec(),
                block_table: seq.blocks.clone(),
                sample: seq.computed + n == seq.tokens.len(),
            });
            budget -= n;
            self.running.push(seq);
        }
        plan
    }

    /// Gives a waiting sequence (with no blocks yet) the cached blocks its
    /// tokens start with, leaving at least its last token to compute.
    /// Returns the tokens so served, or `None` when the block after them is
    /// being computed by a running sequence (the caller waits a step).
    fn reuse_prefix(
        blocks: &mut BlockPool,
        pending: &HashMap<BlockHash, SeqId>,
        seq: &mut Seq,
    ) -> Option<usize> {
        debug_assert!(seq.blocks.is_empty() && seq.computed == 0);
        if !blocks.caching() {
            return Some(0);
        }
        let bs = blocks.block_size();
        seq.hash_blocks(seq.tokens.len() / bs, bs);
        if !seq.reuse {
            return Some(0);
        }
        let usable = (seq.tokens.len() - 1) / bs;
        let hits = blocks.lookup(&seq.hashes[..usable]);
        if hits.len() < usable && pending.contains_key(&seq.hashes[hits.len()]) {
            return None;
        }
        for &b in &hits {
            blocks.share(&mut seq.blocks, b);
        }
        seq.computed = hits.len() * bs;
        seq.published = hits.len();
        Some(seq.computed)
    }

    /// Marks the full blocks an admitted sequence will compute as pending.
    fn promise(&mut self, seq: &mut Seq) {
        if !self.blocks.caching() {
            return;
        }
        for &h in &seq.hashes[seq.published..] {
            if !self.blocks.is_cached(h) {
                self.pending.entry(h).or_insert(seq.id);
            }
        }
    }

    /// Forgets the pending blocks of a sequence leaving the running batch.
    fn unpromise(&mut self, seq: &Seq) {
        for h in &seq.hashes[seq.published.min(seq.hashes.len())..] {
            if self.pending.get(h) == Some(&seq.id) {
                self.pending.remove(h);
            }
        }
    }

    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.unpromise(&seq);
        self.blocks.release(&mut seq.blocks);
        seq.computed = 0;
        seq.published = 0;
        self.preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// Records that `plan` ran: each sequence's chunk is now in the cache
    /// (its newly full blocks are published), and sampled sequences get
    /// their new token.
    pub fn complete(&mut self, plan: &StepPlan, sampled: &[(SeqId, u32)]) {
        let bs = self.config.block_size;
        for s in &plan.seqs {
            let Some(seq) = self.running.iter_mut().find(|q| q.id == s.id) else {
                continue;
            };
            seq.computed = s.start + s.tokens.len();
            if !self.blocks.caching() {
                continue;
            }
            let full = seq.computed / bs;
            seq.hash_blocks(full, bs);
            for i in seq.published..full {
                let h = seq.hashes[i];
                self.blocks.publish(seq.blocks[i], h);
                if self.pending.get(&h) == Some(&seq.id) {
                    self.pending.remove(&h);
                }
            }
            seq.published = seq.published.max(full);
        }
        for &(id, token) in sampled {
            if let Some(seq) = self.running.iter_mut().find(|q| q.id == id) {
                seq.tokens.push(token);
            }
        }
    }

    /// Removes a sequence (finished or aborted), wherever it is, freeing its blocks.
    pub fn remove(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let mut seq = self.running.remove(i);
            self.unpromise(&seq);
            self.blocks.release(&mut seq.blocks);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            if let Some(mut seq) = self.waiting.remove(i) {
                self.blocks.release(&mut seq.blocks);
            }
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(max_seqs: usize, budget: usize, blocks: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig {
            max_num_seqs: max_seqs,
            max_num_batched_tokens: budget,
            num_blocks: blocks,
            block_size: 4,
            prefix_caching: false,
        })
    }

    fn cached_sched(max_seqs: usize, budget: usize, blocks: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig {
            prefix_caching: true,
            ..sched(max_seqs, budget, blocks).config
        })
    }

    /// Runs plans until no sequence is still prefilling.
    fn settle(s: &mut Scheduler) {
        loop {
            let p = s.schedule();
            run(s, &p);
            if p.seqs.iter().all(|q| q.sample) {
                return;
            }
        }
    }

    fn shape(plan: &StepPlan) -> Vec<(SeqId, usize, usize, bool)> {
        plan.seqs
            .iter()
            .map(|s| (s.id, s.start, s.tokens.len(), s.sample))
            .collect()
    }

    /// Runs a plan as the engine would: every sampled sequence gets token 7.
    fn run(s: &mut Scheduler, plan: &StepPlan) {
        let sampled: Vec<(SeqId, u32)> = plan
            .seqs
            .iter()
            .filter(|q| q.sample)
            .map(|q| (q.id, 7))
            .collect();
        s.complete(plan, &sampled);
    }

    #[test]
    fn long_prompts_are_chunked_and_decodes_go_first() {
        let mut s = sched(8, 10, 100);
        s.add(1, vec![1; 3], true);
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 0, 3, true)]);
        run(&mut s, &p);
        s.add(2, vec![1; 25], true);
        // Seq 1 decodes (1 token); seq 2 gets the rest of the budget (9).
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 3, 1, true), (2, 0, 9, false)]);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 4, 1, true), (2, 9, 9, false)]);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 5, 1, true), (2, 18, 7, true)]);
        assert_eq!(p.num_tokens(), 8);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 6, 1, true), (2, 25, 1, true)]);
    }

    #[test]
    fn admission_respects_max_num_seqs_and_budget() {
        let mut s = sched(2, 6, 100);
        for id in 1..=3 {
            s.add(id, vec![1; 2], true);
        }
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 0, 2, true), (2, 0, 2, true)]);
        assert_eq!(s.num_waiting(), 1);
        run(&mut s, &p);
        assert!(s.remove(1));
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(2, 2, 1, true), (3, 0, 2, true)]);
    }

    #[test]
    fn block_tables_grow_with_the_sequence() {
        let mut s = sched(4, 16, 100);
        s.add(1, vec![1; 4], true);
        let p = s.schedule();
        assert_eq!(p.seqs[0].block_table.len(), 1);
        run(&mut s, &p);
        let p = s.schedule(); // position 4 needs a second block
        assert_eq!(p.seqs[0].block_table.len(), 2);
        assert_eq!(s.blocks_used(), 2);
        run(&mut s, &p);
        s.remove(1);
        assert_eq!(s.blocks_used(), 0);
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_and_recomputes_it_later() {
        // 4 blocks of 4 tokens = 16 tokens of KV.
        let mut s = sched(4, 32, 4);
        s.add(1, vec![1; 7], true); // 2 blocks
        s.add(2, vec![2; 8], true); // 2 blocks
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 0, 7, true), (2, 0, 8, true)]);
        assert_eq!(s.blocks_free(), 0);
        run(&mut s, &p); // 1 has 8 tokens, 2 has 9
        // Seq 1 fits its 8th token in block 2; seq 2 needs a third block: it
        // is the newest, so it preempts itself.
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 7, 1, true)]);
        assert_eq!(p.preempted, vec![2]);
        assert_eq!(s.preemptions(), 1);
        assert_eq!(s.num_waiting(), 1);
        run(&mut s, &p);
        // Seq 1 needs a third block: none free, no other running sequence to
        // preempt except itself... seq 2 is waiting, so seq 1 takes block 3.
        let p = s.schedule();
        assert_eq!(shape(&p)[0], (1, 8, 1, true));
        run(&mut s, &p);
        s.remove(1);
        // Seq 2 is recomputed from scratch: its prompt and its generated token.
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(2, 0, 9, true)]);
        assert_eq!(p.seqs[0].tokens, [vec![2; 8], vec![7]].concat());
    }

    #[test]
    fn preemption_takes_the_most_recent_admission_not_the_current() {
        let mut s = sched(4, 64, 6);
        s.add(1, vec![1; 8], true); // 2 blocks
        s.add(2, vec![1; 8], true); // 2 blocks
        s.add(3, vec![1; 8], true); // 2 blocks
        let p = s.schedule();
        assert_eq!(p.seqs.len(), 3);
        run(&mut s, &p); // all need a third block next
        let p = s.schedule();
        // Seq 1 cannot grow: the newest (3) is preempted, which frees enough
        // for seq 1 and then seq 2 too.
        assert_eq!(p.preempted, vec![3]);
        assert_eq!(shape(&p), vec![(1, 8, 1, true), (2, 8, 1, true)]);
        assert_eq!(s.num_waiting(), 1);
        run(&mut s, &p);
        s.remove(1);
        // Seq 3 comes back, recomputing its prompt and generated token.
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(2, 9, 1, true), (3, 0, 9, true)]);
    }

    #[test]
    fn removing_a_waiting_or_unknown_sequence() {
        let mut s = sched(1, 8, 10);
        s.add(1, vec![1; 2], true);
        s.add(2, vec![1; 2], true);
        let p = s.schedule();
        run(&mut s, &p);
        assert!(s.remove(2), "waiting sequences can be aborted");
        assert!(!s.remove(2));
        assert!(!s.remove(99));
        assert!(s.remove(1));
        assert!(!s.has_work());
        assert_eq!(s.blocks_used(), 0);
    }

    #[test]
    fn a_cached_prefix_is_taken_in_whole_blocks_and_counted() {
        let mut s = cached_sched(8, 64, 16);
        let p1: Vec<u32> = (1..=10).collect(); // blocks [1..4] [5..8] + 2 tokens
        s.add(1, p1.clone(), true);
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 0, 10, true)]);
        run(&mut s, &p);
        assert_eq!(s.blocks_cached(), 2, "the two full blocks are published");
        // Same 9 tokens then others: two whole blocks are served, the
        // chunk starts at 8.
        let p2: Vec<u32> = (1..=9).chain(50..55).collect();
        s.add(2, p2, true);
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 10, 1, true), (2, 8, 6, true)]);
        assert_eq!(s.cached_tokens(2), Some(8));
        assert_eq!(p.seqs[1].block_table[..2], p.seqs[0].block_table[..2]);
        assert_ne!(p.seqs[1].block_table[2], p.seqs[0].block_table[2]);
        run(&mut s, &p);
        // Exactly the cached prompt: its last token is still computed.
        s.add(3, (1..=8).collect(), true);
        let p = s.schedule();
        assert_eq!(shape(&p)[2], (3, 4, 4, true));
        assert_eq!(s.cached_tokens(3), Some(4));
        // A sequence that needs every prompt position's logits takes nothing.
        s.add(4, (1..=8).collect(), false);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(shape(&p)[3], (4, 0, 8, true));
        assert_eq!(s.cached_tokens(4), Some(0));
        // Looked up: 10 + 14 + 8 tokens (not seq 4's); served 8 + 4.
        let c = s.cache_counters();
        assert_eq!((c.queried_tokens, c.hit_tokens), (32, 12));
        run(&mut s, &p);
        for id in 1..=4 {
            assert!(s.remove(id));
        }
        assert_eq!(s.blocks_used(), 0);
        assert!(s.blocks_cached() > 0, "freed blocks stay cached");
    }

    #[test]
    fn choices_of_one_prompt_wait_for_its_blocks_instead_of_computing_them_twice() {
        let mut s = cached_sched(8, 64, 32);
        let prompt: Vec<u32> = (1..=21).collect(); // 5 full blocks + 1
        for id in 1..=3 {
            s.add(id, prompt.clone(), true);
        }
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 0, 21, true)], "the others wait a step");
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(
            shape(&p),
            vec![(1, 21, 1, true), (2, 20, 1, true), (3, 20, 1, true)]
        );
        for q in &p.seqs[1..] {
            assert_eq!(q.block_table[..5], p.seqs[0].block_table[..5]);
        }
        // 6 blocks for the first, 1 of its own each for the others.
        assert_eq!(s.blocks_used(), 8);
        // Different prompts never wait.
        s.add(4, (100..120).collect(), true);
        s.add(5, (200..220).collect(), true);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(shape(&p)[3..], [(4, 0, 20, true), (5, 0, 20, true)]);
    }

    #[test]
    fn a_waiting_choice_goes_on_when_the_sequence_it_waited_for_is_preempted_or_removed() {
        let mut s = cached_sched(8, 8, 32);
        let prompt: Vec<u32> = (1..=20).collect();
        s.add(1, prompt.clone(), true);
        s.add(2, prompt.clone(), true);
        // Budget 8: seq 1 prefills in chunks; seq 2 waits on block 0...
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 0, 8, false)]);
        run(&mut s, &p);
        // ...and then on block 2, the next it lacks.
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 8, 8, false)]);
        run(&mut s, &p);
        // Seq 1 is cancelled: seq 2 takes the 4 published blocks.
        assert!(s.remove(1));
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(2, 16, 4, true)]);
        assert_eq!(s.cached_tokens(2), Some(16));
    }

    #[test]
    fn cached_blocks_are_evicted_least_recently_freed_first_under_pressure() {
        // 8 blocks of 4 tokens.
        let mut s = cached_sched(4, 64, 8);
        s.add(1, (1..=8).collect(), true); // blocks 0, 1
        settle(&mut s);
        s.remove(1);
        s.add(2, (11..=18).collect(), true); // blocks 2, 3
        settle(&mut s);
        s.remove(2);
        assert_eq!((s.blocks_used(), s.blocks_cached()), (0, 4));
        // 19 tokens of something else: the 4 never-used blocks, then the
        // least recently freed cached one: seq 1's last block.
        s.add(3, (31..=49).collect(), true);
        settle(&mut s);
        assert_eq!(s.cache_counters().evicted_blocks, 1);
        // Seq 2's prefix is intact; its third block evicts seq 1's first.
        s.add(4, (11..=18).chain([99]).collect(), true);
        let p = s.schedule();
        assert_eq!(s.cached_tokens(4), Some(8));
        assert_eq!(s.cache_counters().evicted_blocks, 2);
        run(&mut s, &p);
        s.remove(3);
        s.remove(4);
        s.add(5, (1..=8).chain([99]).collect(), true);
        s.add(6, (11..=18).chain([98]).collect(), true);
        let p = s.schedule();
        assert_eq!(s.cached_tokens(5), Some(0), "seq 1's blocks are gone");
        assert_eq!(s.cached_tokens(6), Some(8));
        run(&mut s, &p);
    }

    #[test]
    fn preempting_a_sequence_with_shared_blocks_leaves_the_sharers_intact() {
        // 7 blocks of 4: two sequences share a 2-block prefix and grow apart.
        let mut s = cached_sched(4, 64, 7);
        s.add(1, (1..=9).collect(), true);
        settle(&mut s);
        s.add(2, (1..=8).chain([50]).collect(), true);
        let p = s.schedule();
        assert_eq!(s.cached_tokens(2), Some(8));
        run(&mut s, &p);
        let table_1 = p.seqs[0].block_table.clone();
        // Both decode until the pool runs out and seq 2, the newest, is
        // preempted; seq 1 keeps its table.
        let mut preempted = false;
        for _ in 0..12 {
            let p = s.schedule();
            if p.preempted == vec![2] {
                preempted = true;
                assert_eq!(p.seqs[0].block_table[..3], table_1[..3]);
                run(&mut s, &p);
                break;
            }
            run(&mut s, &p);
        }
        assert!(preempted, "the pool should run out");
        assert_eq!(s.num_waiting(), 1);
        s.remove(1);
        // Seq 2 comes back and finds its own published blocks; a return is
        // not counted as another query.
        let counted = s.cache_counters();
        let p = s.schedule();
        assert_eq!(s.cache_counters(), counted);
        assert_eq!(p.seqs[0].id, 2);
        assert!(p.seqs[0].start >= 8, "{:?}", shape(&p));
        run(&mut s, &p);
        s.remove(2);
        assert_eq!(s.blocks_used(), 0);
    }

    #[test]
    fn sequences_share_blocks_only_with_their_own_salt() {
        use crate::blocks::salt_hash;
        let mut s = cached_sched(8, 64, 32);
        let prompt: Vec<u32> = (1..=9).collect();
        let (a, b) = (Some(salt_hash(b"key=0")), Some(salt_hash(b"key=1")));
        s.add_salted(1, prompt.clone(), true, a);
        settle(&mut s);
        s.add_salted(2, prompt.clone(), true, b);
        s.add_salted(3, prompt.clone(), true, a);
        s.add(4, prompt.clone(), true);
        let p = s.schedule();
        assert_eq!(s.cached_tokens(2), Some(0), "another salt");
        assert_eq!(s.cached_tokens(3), Some(8), "the same salt");
        assert_eq!(s.cached_tokens(4), Some(0), "no salt is a salt of its own");
        run(&mut s, &p);
    }
}
