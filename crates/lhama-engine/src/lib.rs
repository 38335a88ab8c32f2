//! lhama's engine layer: KV block allocation, sampling and incremental
//! detokenization, and the single-sequence generation loop the CLI uses. The
//! continuous-batching scheduler builds on these pieces.

pub mod blocks;
pub mod detok;
pub mod generate;
pub mod sampling;
pub mod scheduler;

pub use blocks::BlockAllocator;
pub use detok::IncrementalDecoder;
pub use generate::{GenerateStats, generate};
pub use sampling::{Sampler, SamplingParams};
