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

use std::collections::VecDeque;

use crate::blocks::BlockAllocator;

pub type SeqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub num_blocks: usize,
    pub block_size: usize,
}

#[derive(Debug, Clone)]
struct Seq {
    id: SeqId,
    /// Prompt followed by every generated token.
    tokens: Vec<u32>,
    /// Tokens whose K/V is in the cache.
    computed: usize,
    blocks: Vec<u32>,
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
    blocks: BlockAllocator,
    waiting: VecDeque<Seq>,
    /// In admission order: the last one is the most recently admitted.
    running: Vec<Seq>,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        assert!(
            config.max_num_seqs > 0 && config.max_num_batched_tokens > 0,
            "limits are validated before the scheduler is built"
        );
        Self {
            blocks: BlockAllocator::new(config.num_blocks, config.block_size),
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
        }
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// Queues a sequence. The caller has checked that prompt + max_tokens
    /// fits the KV pool on its own, so it can always run eventually.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>) {
        self.waiting.push_back(Seq {
            id,
            tokens: prompt,
            computed: 0,
            blocks: Vec::new(),
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

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
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
            let n = (front.tokens.len() - front.computed).min(budget);
            if !self.blocks.grow(&mut front.blocks, front.computed + n) {
                break;
            }
            let seq = self.waiting.pop_front().expect("front exists");
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

    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.blocks.release(&mut seq.blocks);
        seq.computed = 0;
        self.preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// Records that `plan` ran: each sequence's chunk is now in the cache, and
    /// sampled sequences get their new token.
    pub fn complete(&mut self, plan: &StepPlan, sampled: &[(SeqId, u32)]) {
        for s in &plan.seqs {
            if let Some(seq) = self.running.iter_mut().find(|q| q.id == s.id) {
                seq.computed = s.start + s.tokens.len();
            }
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
        })
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
        s.add(1, vec![1; 3]);
        let p = s.schedule();
        assert_eq!(shape(&p), vec![(1, 0, 3, true)]);
        run(&mut s, &p);
        s.add(2, vec![1; 25]);
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
            s.add(id, vec![1; 2]);
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
        s.add(1, vec![1; 4]);
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
        s.add(1, vec![1; 7]); // 2 blocks
        s.add(2, vec![2; 8]); // 2 blocks
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
        s.add(1, vec![1; 8]); // 2 blocks
        s.add(2, vec![1; 8]); // 2 blocks
        s.add(3, vec![1; 8]); // 2 blocks
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
        s.add(1, vec![1; 2]);
        s.add(2, vec![1; 2]);
        let p = s.schedule();
        run(&mut s, &p);
        assert!(s.remove(2), "waiting sequences can be aborted");
        assert!(!s.remove(2));
        assert!(!s.remove(99));
        assert!(s.remove(1));
        assert!(!s.has_work());
        assert_eq!(s.blocks_used(), 0);
    }
}
