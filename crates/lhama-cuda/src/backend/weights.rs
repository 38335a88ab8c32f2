//! The model's weights on the GPU, uploaded once: embeddings, norms, the
//! AWQ products (fused qkv and gate_up, with the fast path's
//! fragment-ordered copies where they fit) and the rotary tables.

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;
use lhama_model::LlamaConfig;
use lhama_model::rope::RopeTable;
use lhama_model::weights::{AwqWeights, FusedAwq, LinearWeights, LlamaWeights};
use std::sync::Arc;

use crate::CudaError;
use crate::kernels::GpuAwq;

pub(super) struct GpuLayer {
    pub input_norm: CudaSlice<f32>,
    pub post_norm: CudaSlice<f32>,
    pub qkv: GpuAwq,
    pub o: GpuAwq,
    pub gate_up: GpuAwq,
    pub down: GpuAwq,
}

pub(super) struct Weights {
    /// [vocab, hidden]
    pub embed: CudaSlice<f16>,
    /// [vocab, hidden]; None when tied to `embed`.
    pub lm_head: Option<CudaSlice<f16>>,
    pub norm: CudaSlice<f32>,
    pub layers: Vec<GpuLayer>,
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
}

fn awq_parts<'a>(parts: &[&'a LinearWeights]) -> Result<Vec<&'a AwqWeights>, CudaError> {
    parts
        .iter()
        .map(|p| match p {
            LinearWeights::Awq(a) => Ok(a),
            LinearWeights::Dense { .. } => Err(CudaError::Unsupported(
                "only AWQ (GEMM) checkpoints run on the CUDA backend for now".into(),
            )),
        })
        .collect()
}

impl Weights {
    /// The device bytes `upload` will take (at most: `fragments` adds a
    /// fragment-ordered copy of each qweight where the shape fits).
    pub fn bytes(weights: &LlamaWeights, fragments: bool) -> usize {
        let qweight_copies = if fragments { 2 } else { 1 };
        weights.embed_tokens.len() * 2
            + weights.lm_head.as_ref().map_or(0, |l| l.len() * 2)
            + weights
                .layers
                .iter()
                .map(|l| {
                    [
                        &l.q_proj,
                        &l.k_proj,
                        &l.v_proj,
                        &l.o_proj,
                        &l.gate_proj,
                        &l.up_proj,
                        &l.down_proj,
                    ]
                    .iter()
                    .map(|p| match p {
                        LinearWeights::Awq(a) => {
                            a.qweight.len() * 4 * qweight_copies + 2 * a.scales.len() * 4
                        }
                        LinearWeights::Dense { weight, .. } => weight.len() * 4,
                    })
                    .sum::<usize>()
                })
                .sum::<usize>()
    }

    pub fn upload(
        stream: &Arc<CudaStream>,
        config: &LlamaConfig,
        weights: &LlamaWeights,
        fragments: bool,
    ) -> Result<Self, CudaError> {
        let fused = |parts: &[&LinearWeights]| -> Result<GpuAwq, CudaError> {
            GpuAwq::upload_for(stream, &FusedAwq::new(&awq_parts(parts)?), fragments)
        };
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in &weights.layers {
            layers.push(GpuLayer {
                input_norm: stream.clone_htod(&l.input_layernorm)?,
                post_norm: stream.clone_htod(&l.post_attention_layernorm)?,
                qkv: fused(&[&l.q_proj, &l.k_proj, &l.v_proj])?,
                o: fused(&[&l.o_proj])?,
                gate_up: fused(&[&l.gate_proj, &l.up_proj])?,
                down: fused(&[&l.down_proj])?,
            });
        }
        let rope = RopeTable::for_config(config);
        let (cos, sin) = rope.tables();
        Ok(Self {
            embed: stream.clone_htod(&weights.embed_tokens)?,
            lm_head: weights
                .lm_head
                .as_ref()
                .map(|l| stream.clone_htod(l))
                .transpose()?,
            norm: stream.clone_htod(&weights.norm)?,
            layers,
            cos: stream.clone_htod(cos)?,
            sin: stream.clone_htod(sin)?,
        })
    }

    /// The output matrix (the embeddings when tied).
    pub fn head(&self) -> &CudaSlice<f16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}
