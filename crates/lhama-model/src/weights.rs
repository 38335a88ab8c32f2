//! The tensors of a Llama checkpoint, checked against the config and held in
//! host memory in a backend-neutral form: AWQ layers stay packed exactly as
//! AutoAWQ wrote them; each backend turns them into what its kernels want.

use half::f16;

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::safetensors_io::{SafetensorsSet, Tensor};

/// AutoAWQ `WQLinear_GEMM` weights of one linear layer with K inputs and N
/// outputs (see `awq` for the packing).
#[derive(Debug, Clone)]
pub struct AwqWeights {
    pub in_features: usize,
    pub out_features: usize,
    pub group_size: usize,
    /// [K, N/8] eight 4-bit values per word, AWQ nibble order.
    pub qweight: Vec<u32>,
    /// [K/G, N/8] packed like qweight.
    pub qzeros: Vec<u32>,
    /// [K/G, N]
    pub scales: Vec<f16>,
}

/// One linear layer y = x · W (x: [M, K], y: [M, N]).
#[derive(Debug, Clone)]
pub enum LinearWeights {
    Awq(AwqWeights),
    /// Unquantized, torch layout: weight [N, K].
    Dense {
        in_features: usize,
        out_features: usize,
        weight: Vec<f32>,
    },
}

impl LinearWeights {
    pub fn in_features(&self) -> usize {
        match self {
            Self::Awq(w) => w.in_features,
            Self::Dense { in_features, .. } => *in_features,
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Self::Awq(w) => w.out_features,
            Self::Dense { out_features, .. } => *out_features,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// [hidden]
    pub input_layernorm: Vec<f32>,
    /// [hidden]
    pub post_attention_layernorm: Vec<f32>,
    pub q_proj: LinearWeights,
    pub k_proj: LinearWeights,
    pub v_proj: LinearWeights,
    pub o_proj: LinearWeights,
    pub gate_proj: LinearWeights,
    pub up_proj: LinearWeights,
    pub down_proj: LinearWeights,
}

#[derive(Debug, Clone)]
pub struct LlamaWeights {
    /// [vocab, hidden]
    pub embed_tokens: Vec<f16>,
    pub layers: Vec<LayerWeights>,
    /// [hidden]
    pub norm: Vec<f32>,
    /// [vocab, hidden]; `None` when tied to the embedding.
    pub lm_head: Option<Vec<f16>>,
}

impl LlamaWeights {
    /// Loads and checks every tensor the config calls for.
    pub fn load(config: &LlamaConfig, st: &SafetensorsSet) -> Result<Self> {
        let h = config.hidden_size;
        let v = config.vocab_size;
        let q_out = config.num_heads * config.head_dim;
        let kv_out = config.num_kv_heads * config.head_dim;
        let inter = config.intermediate_size;
        let linear = |name: &str, k: usize, n: usize| load_linear(config, st, name, k, n);
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(LayerWeights {
                input_layernorm: st.f32(&format!("{p}.input_layernorm.weight"), &[h])?.data,
                post_attention_layernorm: st
                    .f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?
                    .data,
                q_proj: linear(&format!("{p}.self_attn.q_proj"), h, q_out)?,
                k_proj: linear(&format!("{p}.self_attn.k_proj"), h, kv_out)?,
                v_proj: linear(&format!("{p}.self_attn.v_proj"), h, kv_out)?,
                o_proj: linear(&format!("{p}.self_attn.o_proj"), q_out, h)?,
                gate_proj: linear(&format!("{p}.mlp.gate_proj"), h, inter)?,
                up_proj: linear(&format!("{p}.mlp.up_proj"), h, inter)?,
                down_proj: linear(&format!("{p}.mlp.down_proj"), inter, h)?,
            });
        }
        let embed_tokens = st.f16("model.embed_tokens.weight", &[v, h])?.data;
        let norm = st.f32("model.norm.weight", &[h])?.data;
        let lm_head = if config.tie_word_embeddings && !st.contains("lm_head.weight") {
            None
        } else {
            Some(st.f16("lm_head.weight", &[v, h])?.data)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// The output projection: lm_head, or the embedding when tied.
    pub fn lm_head(&self) -> &[f16] {
        self.lm_head.as_deref().unwrap_or(&self.embed_tokens)
    }
}

fn load_linear(
    config: &LlamaConfig,
    st: &SafetensorsSet,
    prefix: &str,
    k: usize,
    n: usize,
) -> Result<LinearWeights> {
    match config.awq {
        Some(awq) => {
            let g = awq.group_size;
            let Tensor { data: qweight, .. } =
                st.packed_u32(&format!("{prefix}.qweight"), &[k, n / 8])?;
            let Tensor { data: qzeros, .. } =
                st.packed_u32(&format!("{prefix}.qzeros"), &[k / g, n / 8])?;
            let Tensor { data: scales, .. } = st.f16(&format!("{prefix}.scales"), &[k / g, n])?;
            Ok(LinearWeights::Awq(AwqWeights {
                in_features: k,
                out_features: n,
                group_size: g,
                qweight,
                qzeros,
                scales,
            }))
        }
        None => {
            let weight = st.f32(&format!("{prefix}.weight"), &[n, k])?.data;
            Ok(LinearWeights::Dense {
                in_features: k,
                out_features: n,
                weight,
            })
        }
    }
}

/// Several AWQ layers with the same input computed as one (q|k|v, gate|up):
/// outputs concatenated along N, packed words copied row by row, zero points
/// unpacked and scales widened to f32 (both per group: K/G times smaller than
/// the weights). Both backends start from this.
#[derive(Debug, Clone)]
pub struct FusedAwq {
    pub k: usize,
    pub n: usize,
    pub group: usize,
    /// [K, N/8] AWQ-packed
    pub qweight: Vec<u32>,
    /// [K/G, N]
    pub zeros: Vec<f32>,
    /// [K/G, N]
    pub scales: Vec<f32>,
}

impl FusedAwq {
    /// Fuses `parts`; they must share K and the group size (they do when they
    /// come from one checkpoint's config).
    pub fn new(parts: &[&AwqWeights]) -> Self {
        let first = parts.first().expect("at least one layer to fuse");
        let (k, g) = (first.in_features, first.group_size);
        assert!(
            parts
                .iter()
                .all(|p| p.in_features == k && p.group_size == g),
            "fused layers share K and group size (checked at load)"
        );
        let n: usize = parts.iter().map(|p| p.out_features).sum();
        let mut qweight = Vec::with_capacity(k * n / 8);
        for row in 0..k {
            for a in parts {
                let n8 = a.out_features / 8;
                qweight.extend_from_slice(&a.qweight[row * n8..][..n8]);
            }
        }
        let mut zeros = Vec::with_capacity(k / g * n);
        let mut scales = Vec::with_capacity(k / g * n);
        for grp in 0..k / g {
            for a in parts {
                let n8 = a.out_features / 8;
                for c in 0..n8 {
                    let word = a.qzeros[grp * n8 + c];
                    zeros.extend((0..8).map(|j| crate::awq::unpack(word, j) as f32));
                }
                scales.extend(
                    a.scales[grp * a.out_features..][..a.out_features]
                        .iter()
                        .map(|s| s.to_f32()),
                );
            }
        }
        Self {
            k,
            n,
            group: g,
            qweight,
            zeros,
            scales,
        }
    }
}
