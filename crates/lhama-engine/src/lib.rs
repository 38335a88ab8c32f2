//! lhama's engine layer: the continuous-batching scheduler and the engine
//! loop that drives a backend with it, KV block allocation, sampling, stop
//! strings and incremental detokenization, plus the single-sequence
//! generation loop the CLI uses.

pub mod blocks;
pub mod detok;
pub mod engine;
pub mod generate;
pub mod guided;
mod output;
pub mod params;
pub mod sampling;
pub mod scheduler;
pub mod stop;

pub use blocks::{BlockPool, CacheCounters};
pub use detok::IncrementalDecoder;
pub use engine::{
    EngineConfig, EngineHandle, Event, FinishReason, RequestStream, SubmitError, TokenLogprob,
    spawn,
};
pub use generate::{GenerateStats, generate};
pub use guided::{Guide, GuideCompiler, GuidedSpec};
pub use params::RequestParams;
pub use sampling::{Sampler, SamplingParams};
