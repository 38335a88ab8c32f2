//! Captured decode steps: a step of one token per sequence, every row's
//! logits, replays a CUDA graph captured once per batch size, count of
//! context partitions (attention's grid) and whether the sampler runs in it
//! (a masked step samples after its masks arrive): no per-kernel launch cost.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaGraph, CudaStream, sys};

use crate::CudaError;

/// (tokens, context partitions, masks come later).
pub(super) type GraphKey = (usize, usize, bool);

/// A captured step.
struct Graph(CudaGraph);

// SAFETY: CUDA graphs must not be used from two threads at once; a graph is
// only reached through `&mut Graphs` inside `&mut CudaBackend`, so one thread
// at a time uses it (the backend moves to the engine thread and stays there).
unsafe impl Send for Graph {}

pub(super) struct Graphs {
    graphs: HashMap<GraphKey, Graph>,
    /// LHAMA_CUDA_GRAPHS=0 launches every kernel every step (for comparisons).
    pub enabled: bool,
}

impl Graphs {
    pub fn new() -> Self {
        Self {
            graphs: HashMap::new(),
            enabled: std::env::var("LHAMA_CUDA_GRAPHS").map_or(true, |v| v != "0"),
        }
    }

    pub fn contains(&self, key: GraphKey) -> bool {
        self.graphs.contains_key(&key)
    }

    /// Records what `launch` issues on `stream` as the graph for `key`.
    /// `launch` must issue no copy and no synchronization.
    pub fn capture(
        &mut self,
        stream: &Arc<CudaStream>,
        key: GraphKey,
        launch: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let launched = launch();
        // The capture ends whether or not the launches succeeded.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        launched?;
        let graph =
            graph?.ok_or_else(|| CudaError::Driver("graph capture produced no graph".into()))?;
        self.graphs.insert(key, Graph(graph));
        Ok(())
    }

    /// Replays the graph of `key`; false when none is captured.
    pub fn launch(&self, key: GraphKey) -> Result<bool, CudaError> {
        match self.graphs.get(&key) {
            Some(g) => {
                g.0.launch()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
