//! The paged KV pool's bookkeeping: which physical blocks are in use, by how
//! many sequences, and which hold a known prefix (automatic prefix caching).
//!
//! A full block is identified by a hash chain: the hash of its parent's
//! hash and its own token ids (`chain_hash`), so equal hashes mean the same
//! tokens at the same positions after the same prefix, hence the same K/V.
//! A sequence publishes each block once it is full and computed; another
//! sequence whose prompt starts with the same blocks takes them as shared,
//! reference-counted blocks instead of computing them. A block whose last
//! user is gone stays in the cache, free, until it is needed for something
//! else: free blocks are handed out least recently freed first, and handing
//! out a cached one evicts its content.

use std::collections::{BTreeMap, HashMap};

/// Identity of a full block's content and everything before it (128 bits
/// of BLAKE3, so that two different prefixes never meet in practice).
pub type BlockHash = u128;

/// The hash of a full block of `tokens` that follows the block `parent`
/// (`None` for the first block of a sequence).
pub fn chain_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = blake3::Hasher::new();
    match parent {
        Some(p) => h.update(&[1]).update(&p.to_le_bytes()),
        None => h.update(&[0]),
    };
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    let bytes = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&bytes.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// The root of the hash chain of sequences with this cache salt: their
/// first block's "parent", so they share blocks only among themselves.
pub fn salt_hash(salt: &[u8]) -> BlockHash {
    let bytes = blake3::Hasher::new()
        .update(b"salt")
        .update(salt)
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&bytes.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Counters of the prefix cache since start (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Prompt tokens of admitted sequences that looked the cache up.
    pub queried_tokens: u64,
    /// Of those, tokens served from cached blocks.
    pub hit_tokens: u64,
    /// Cached blocks whose content was dropped to reuse the block.
    pub evicted_blocks: u64,
}

/// Hands out fixed-size KV blocks from a pool of `num_blocks`, shares full
/// blocks between sequences by content, and keeps freed ones cached.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    num_blocks: usize,
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// The content each block holds, once published.
    content: Vec<Option<BlockHash>>,
    /// Published blocks by content.
    cached: HashMap<BlockHash, u32>,
    /// Blocks nobody holds, by when they were freed (oldest first); a
    /// never-used block counts as freed at start, lowest id first.
    free: BTreeMap<u64, u32>,
    /// Each free block's key in `free`.
    freed_at: Vec<u64>,
    clock: u64,
    caching: bool,
    counters: CacheCounters,
}

impl BlockPool {
    /// A pool with prefix caching on or off (off: freed blocks keep nothing
    /// and nothing is ever shared).
    pub fn new(num_blocks: usize, block_size: usize, caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let clock = num_blocks as u64;
        Self {
            block_size,
            num_blocks,
            refs: vec![0; num_blocks],
            content: vec![None; num_blocks],
            cached: HashMap::new(),
            free: (0..num_blocks as u32).map(|b| (b as u64, b)).collect(),
            freed_at: (0..num_blocks as u64).collect(),
            clock,
            caching,
            counters: CacheCounters::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    /// Blocks no sequence holds (cached or not).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks held by at least one sequence.
    pub fn num_used(&self) -> usize {
        self.num_blocks - self.free.len()
    }

    /// Blocks whose content is published (held or free).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` so it holds `tokens` tokens; on shortage nothing is
    /// taken and `false` is returned. New blocks are private to the caller.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            let (_, block) = self
                .free
                .pop_first()
                .expect("checked that enough blocks are free");
            if let Some(old) = self.content[block as usize].take() {
                self.cached.remove(&old);
                self.counters.evicted_blocks += 1;
            }
            self.refs[block as usize] = 1;
            table.push(block);
        }
        true
    }

    /// Drops the caller's hold on every block of `table` and empties it. A
    /// block nobody holds any more becomes free (keeping its content, if
    /// published); the table's last blocks are freed first, so they are
    /// also the first to be reused.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for block in table.drain(..).rev() {
            let refs = &mut self.refs[block as usize];
            if *refs == 0 {
                // A broken invariant: freeing it again would hand it out twice.
                tracing::error!(block, "a KV block was released twice; ignored");
                continue;
            }
            *refs -= 1;
            if *refs == 0 {
                self.freed_at[block as usize] = self.clock;
                self.free.insert(self.clock, block);
                self.clock += 1;
            }
        }
    }

    /// The cached blocks that hold the longest prefix of `hashes`.
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<u32> {
        if !self.caching {
            return Vec::new();
        }
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// Whether some block holds this content.
    pub fn is_cached(&self, hash: BlockHash) -> bool {
        self.cached.contains_key(&hash)
    }

    /// Takes a hold on a cached block (from `lookup`), appending it to `table`.
    pub fn share(&mut self, table: &mut Vec<u32>, block: u32) {
        let refs = &mut self.refs[block as usize];
        if *refs == 0 {
            self.free.remove(&self.freed_at[block as usize]);
        }
        *refs += 1;
        table.push(block);
    }

    /// Publishes a full, computed block's content. Returns false (and keeps
    /// the block private) when caching is off, the block already holds
    /// published content, or another block already holds this content.
    pub fn publish(&mut self, block: u32, hash: BlockHash) -> bool {
        if !self.caching
            || self.content[block as usize].is_some()
            || self.cached.contains_key(&hash)
        {
            return false;
        }
        self.content[block as usize] = Some(hash);
        self.cached.insert(hash, block);
        true
    }

    /// Counts one admitted sequence's lookup.
    pub fn count_lookup(&mut self, queried_tokens: usize, hit_tokens: usize) {
        self.counters.queried_tokens += queried_tokens as u64;
        self.counters.hit_tokens += hit_tokens as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_releases_and_refuses_when_short() {
        let mut a = BlockPool::new(4, 16, false);
        let mut t1 = Vec::new();
        assert!(a.grow(&mut t1, 17));
        assert_eq!(t1, vec![0, 1]);
        assert!(a.grow(&mut t1, 32), "still fits in two blocks");
        assert_eq!(t1.len(), 2);
        let mut t2 = Vec::new();
        assert!(
            !a.grow(&mut t2, 48),
            "three blocks do not fit in the two left"
        );
        assert!(t2.is_empty());
        assert_eq!(a.num_free(), 2);
        a.release(&mut t1);
        assert_eq!(a.num_used(), 0);
        assert!(a.grow(&mut t2, 64));
        assert_eq!(t2.len(), 4);
    }

    #[test]
    fn chain_hashes_depend_on_the_whole_prefix() {
        let a = chain_hash(None, &[1, 2, 3, 4]);
        assert_eq!(a, chain_hash(None, &[1, 2, 3, 4]));
        assert_ne!(a, chain_hash(None, &[1, 2, 3, 5]));
        let b = chain_hash(Some(a), &[5, 6, 7, 8]);
        assert_ne!(b, chain_hash(None, &[5, 6, 7, 8]), "same tokens, no parent");
        assert_ne!(b, chain_hash(Some(b), &[5, 6, 7, 8]), "another parent");
    }

    #[test]
    fn shared_blocks_are_counted_and_freed_ones_stay_cached() {
        let mut p = BlockPool::new(4, 4, true);
        let h0 = chain_hash(None, &[1; 4]);
        let h1 = chain_hash(Some(h0), &[2; 4]);
        let mut a = Vec::new();
        assert!(p.grow(&mut a, 8));
        assert!(p.publish(a[0], h0));
        assert!(p.publish(a[1], h1));
        assert!(!p.publish(a[1], h0), "a block holds one content");
        // A second sequence shares both blocks.
        let hits = p.lookup(&[h0, h1, 99]);
        assert_eq!(hits, a);
        let mut b = Vec::new();
        for &blk in &hits {
            p.share(&mut b, blk);
        }
        assert_eq!(p.num_used(), 2);
        p.release(&mut a);
        assert_eq!(p.num_used(), 2, "b still holds them");
        p.release(&mut b);
        assert_eq!((p.num_used(), p.num_free(), p.num_cached()), (0, 4, 2));
        // Free and cached: found again, and taken back off the free list.
        let mut c = Vec::new();
        for blk in p.lookup(&[h0]) {
            p.share(&mut c, blk);
        }
        assert_eq!(c, vec![0]);
        assert_eq!(p.num_free(), 3);
        // The never-used blocks go before cached ones; then the least recently
        // freed cached block (block 1) is evicted.
        let mut d = Vec::new();
        assert!(p.grow(&mut d, 12));
        assert_eq!(d, vec![2, 3, 1]);
        assert_eq!(p.counters().evicted_blocks, 1);
        assert!(p.lookup(&[h0, h1]).len() == 1, "h1 was evicted");
    }

    #[test]
    fn a_block_released_twice_is_not_freed_twice() {
        let mut p = BlockPool::new(2, 4, false);
        let mut a = Vec::new();
        assert!(p.grow(&mut a, 4));
        let mut again = a.clone();
        p.release(&mut a);
        p.release(&mut again);
        assert_eq!(p.num_free(), 2);
        let mut b = Vec::new();
        assert!(p.grow(&mut b, 8));
        assert_ne!(b[0], b[1], "one block handed out twice");
        assert!(!p.grow(&mut Vec::new(), 4), "no third block");
    }

    #[test]
    fn without_caching_nothing_is_published_or_found() {
        let mut p = BlockPool::new(2, 4, false);
        let mut a = Vec::new();
        assert!(p.grow(&mut a, 4));
        let h = chain_hash(None, &[1; 4]);
        assert!(!p.publish(a[0], h));
        assert!(p.lookup(&[h]).is_empty());
    }
}
