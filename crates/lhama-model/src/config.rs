//! config.json and generation_config.json, in two stages: a raw serde mirror of
//! the file (everything optional) and a validated, fully resolved config.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result, from_value, read_json};

/// Either one id or a list of ids (`eos_token_id` is written both ways).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rms_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    quantization_config: Option<RawQuantConfig>,
}

#[derive(Debug, Deserialize)]
struct RawQuantConfig {
    quant_method: Option<String>,
    bits: Option<u32>,
    group_size: Option<i64>,
    version: Option<String>,
    zero_point: Option<bool>,
}

/// Floating-point type of a checkpoint's unquantized tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F16,
    Bf16,
    F32,
}

/// AutoAWQ `WQLinear_GEMM` quantization: 4-bit, zero point, one scale and
/// zero per `group_size` input rows and output column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwqConfig {
    pub group_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` ("linear" / position interpolation).
    Linear {
        factor: f64,
    },
}

/// A validated Llama configuration: every field the forward pass needs,
/// resolved and checked for consistency.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub dtype: FloatType,
    pub awq: Option<AwqConfig>,
}

fn required(path: &Path, key: &str, value: Option<usize>) -> Result<usize> {
    match value {
        Some(0) => Err(ModelError::config(path, key, "must be greater than 0")),
        Some(v) => Ok(v),
        None => Err(ModelError::config(path, key, "missing")),
    }
}

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = read_json(path)?;
        Self::from_json(path, value)
    }

    /// Validates a parsed config; `path` is used in error messages.
    pub fn from_json(path: &Path, value: Value) -> Result<Self> {
        if !value.is_object() {
            return Err(ModelError::Json {
                path: path.to_path_buf(),
                message: "expected a JSON object at the top level".into(),
            });
        }
        let raw: RawConfig = from_value(path, value)?;
        raw.resolve(path)
    }
}

impl RawConfig {
    fn resolve(self, path: &Path) -> Result<LlamaConfig> {
        let unsupported = |message: String| ModelError::Unsupported {
            path: path.to_path_buf(),
            message,
        };
        match &self.architectures {
            Some(archs) if archs.iter().any(|a| a == "LlamaForCausalLM") => {}
            Some(archs) => {
                return Err(unsupported(format!(
                    "architectures is {archs:?}; lhama serves LlamaForCausalLM only"
                )));
            }
            None => {
                if self.model_type.as_deref() != Some("llama") {
                    return Err(ModelError::config(
                        path,
                        "architectures",
                        "missing (and model_type is not \"llama\")",
                    ));
                }
            }
        }
        let hidden_size = required(path, "hidden_size", self.hidden_size)?;
        let intermediate_size = required(path, "intermediate_size", self.intermediate_size)?;
        let num_layers = required(path, "num_hidden_layers", self.num_hidden_layers)?;
        let num_heads = required(path, "num_attention_heads", self.num_attention_heads)?;
        let num_kv_heads = required(
            path,
            "num_key_value_heads",
            Some(self.num_key_value_heads.unwrap_or(num_heads)),
        )?;
        let vocab_size = required(path, "vocab_size", self.vocab_size)?;
        let max_position_embeddings = required(
            path,
            "max_position_embeddings",
            self.max_position_embeddings,
        )?;
        if num_heads % num_kv_heads != 0 {
            return Err(ModelError::config(
                path,
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads ({num_heads})"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => required(path, "head_dim", Some(d))?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(ModelError::config(
                    path,
                    "num_attention_heads",
                    format!("{num_heads} does not divide hidden_size ({hidden_size})"),
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(ModelError::config(
                path,
                "head_dim",
                format!("{head_dim} is odd; rotary embedding needs an even head_dim"),
            ));
        }
        let rope_theta = self.rope_theta.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(ModelError::config(
                path,
                "rope_theta",
                format!("{rope_theta} is not a finite number above 1"),
            ));
        }
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(ModelError::config(
                path,
                "rms_norm_eps",
                format!("{rms_norm_eps} is not a positive number"),
            ));
        }
        let rope_scaling = parse_rope_scaling(path, self.rope_scaling.as_ref())?;
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(unsupported(format!(
                "hidden_act is {act:?}; only \"silu\" is supported"
            )));
        }
        if self.attention_bias == Some(true) {
            return Err(unsupported(
                "attention_bias is true; biases are not supported".into(),
            ));
        }
        if self.mlp_bias == Some(true) {
            return Err(unsupported(
                "mlp_bias is true; biases are not supported".into(),
            ));
        }
        let dtype_key = if self.torch_dtype.is_some() {
            "torch_dtype"
        } else {
            "dtype"
        };
        let dtype = match self.torch_dtype.as_deref().or(self.dtype.as_deref()) {
            None | Some("float16") | Some("half") => FloatType::F16,
            Some("bfloat16") => FloatType::Bf16,
            Some("float32") | Some("float") => FloatType::F32,
            Some(other) => {
                return Err(ModelError::config(
                    path,
                    dtype_key,
                    format!("{other:?} is not one of float16, bfloat16, float32"),
                ));
            }
        };
        let awq = match self.quantization_config {
            None => None,
            Some(q) => Some(q.resolve(path, hidden_size, intermediate_size)?),
        };
        if let Some(awq) = awq {
            check_awq_shapes(
                path,
                awq,
                hidden_size,
                intermediate_size,
                num_heads * head_dim,
                num_kv_heads * head_dim,
            )?;
        }
        let eos_token_ids = self.eos_token_id.map(|e| e.to_vec()).unwrap_or_default();
        for (key, id) in [
            ("bos_token_id", self.bos_token_id),
            ("pad_token_id", self.pad_token_id),
        ]
        .into_iter()
        .chain(eos_token_ids.iter().map(|&id| ("eos_token_id", Some(id))))
        {
            if let Some(id) = id
                && id as usize >= vocab_size
            {
                return Err(ModelError::config(
                    path,
                    key,
                    format!("{id} is outside the vocabulary (vocab_size {vocab_size})"),
                ));
            }
        }
        Ok(LlamaConfig {
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            max_position_embeddings,
            rope_theta,
            rope_scaling,
            rms_norm_eps,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids,
            pad_token_id: self.pad_token_id,
            dtype,
            awq,
        })
    }
}

impl RawQuantConfig {
    fn resolve(self, path: &Path, hidden: usize, intermediate: usize) -> Result<AwqConfig> {
        let key = |k: &str| format!("quantization_config.{k}");
        match self
            .quant_method
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("awq") => {}
            Some(other) => {
                return Err(ModelError::config(
                    path,
                    key("quant_method"),
                    format!("{other:?} is not supported; lhama reads AWQ (GEMM) checkpoints"),
                ));
            }
            None => return Err(ModelError::config(path, key("quant_method"), "missing")),
        }
        match self.bits {
            Some(4) => {}
            Some(b) => {
                return Err(ModelError::config(
                    path,
                    key("bits"),
                    format!("{b}-bit AWQ is not supported; only 4-bit"),
                ));
            }
            None => return Err(ModelError::config(path, key("bits"), "missing")),
        }
        let version = self
            .version
            .as_deref()
            .unwrap_or("gemm")
            .to_ascii_lowercase();
        if version != "gemm" {
            return Err(ModelError::config(
                path,
                key("version"),
                format!("{version:?} packing is not supported; only \"gemm\""),
            ));
        }
        if self.zero_point == Some(false) {
            return Err(ModelError::config(
                path,
                key("zero_point"),
                "false is not supported; AWQ GEMM checkpoints carry zero points",
            ));
        }
        let group_size = match self.group_size {
            Some(g) if g > 0 && g % 8 == 0 => g as usize,
            Some(g) => {
                return Err(ModelError::config(
                    path,
                    key("group_size"),
                    format!("{g} is not a positive multiple of 8"),
                ));
            }
            None => return Err(ModelError::config(path, key("group_size"), "missing")),
        };
        for (name, dim) in [("hidden_size", hidden), ("intermediate_size", intermediate)] {
            if dim % group_size != 0 {
                return Err(ModelError::config(
                    path,
                    key("group_size"),
                    format!("{group_size} does not divide {name} ({dim})"),
                ));
            }
        }
        Ok(AwqConfig { group_size })
    }
}

/// Every AWQ layer needs N divisible by 8 (one packed word holds 8 columns)
/// and K divisible by the group size.
fn check_awq_shapes(
    path: &Path,
    awq: AwqConfig,
    hidden: usize,
    intermediate: usize,
    q_out: usize,
    kv_out: usize,
) -> Result<()> {
    for (name, dim) in [
        ("hidden_size", hidden),
        ("intermediate_size", intermediate),
        ("num_attention_heads * head_dim", q_out),
        ("num_key_value_heads * head_dim", kv_out),
    ] {
        if dim % 8 != 0 {
            return Err(ModelError::config(
                path,
                "quantization_config",
                format!("{name} = {dim} is not a multiple of 8, as AWQ packing needs"),
            ));
        }
    }
    if !q_out.is_multiple_of(awq.group_size) {
        return Err(ModelError::config(
            path,
            "quantization_config.group_size",
            format!(
                "{} does not divide num_attention_heads * head_dim ({q_out})",
                awq.group_size
            ),
        ));
    }
    Ok(())
}

fn parse_rope_scaling(path: &Path, value: Option<&Value>) -> Result<RopeScaling> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::config(path, "rope_scaling.rope_type", "missing"))?;
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => {
            let factor = value.get("factor").and_then(Value::as_f64).ok_or_else(|| {
                ModelError::config(path, "rope_scaling.factor", "missing or not a number")
            })?;
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(ModelError::config(
                    path,
                    "rope_scaling.factor",
                    format!("{factor} is not a number >= 1"),
                ));
            }
            Ok(RopeScaling::Linear { factor })
        }
        other => Err(ModelError::config(
            path,
            "rope_scaling.rope_type",
            format!("{other:?} is not supported (supported: default, linear)"),
        )),
    }
}

/// Sampling defaults from generation_config.json. Every field is optional: a
/// request that is silent on a parameter takes the value here, else the
/// server's own default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationConfig {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl GenerationConfig {
    /// Reads generation_config.json; a missing file gives all-defaults.
    pub fn from_file_or_default(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let value = read_json(path)?;
        from_value(path, value)
    }
}
