//! The free list of the paged KV pool: which physical blocks are in use.

/// Hands out fixed-size KV blocks from a pool of `num_blocks`.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    num_blocks: usize,
    /// Free block ids; allocation pops from the end, so low ids go first.
    free: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        Self {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks - self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` so it holds `tokens` tokens; on shortage nothing is
    /// taken and `false` is returned.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            table.push(
                self.free
                    .pop()
                    .expect("checked that enough blocks are free"),
            );
        }
        true
    }

    /// Returns every block of `table` to the pool and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.extend(table.drain(..).rev());
        debug_assert!(
            self.free.len() <= self.num_blocks,
            "a block was released twice"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_releases_and_refuses_when_short() {
        let mut a = BlockAllocator::new(4, 16);
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
}
