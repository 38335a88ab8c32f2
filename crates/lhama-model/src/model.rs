//! A model directory in Hugging Face layout, loaded and checked as a whole.

use std::path::{Path, PathBuf};

use crate::config::{GenerationConfig, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::safetensors_io::SafetensorsSet;
use crate::tokenizer::Tokenizer;
use crate::weights::LlamaWeights;

/// Everything read from a model directory.
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub generation: GenerationConfig,
    pub tokenizer: Tokenizer,
    pub weights: LlamaWeights,
}

impl ModelFiles {
    /// Loads config, generation config, tokenizer and weights from `dir`,
    /// failing with an error that names the file and key or tensor at fault.
    pub fn load(dir: &Path) -> Result<Self> {
        if dir.is_dir() && !dir.join("config.json").exists() {
            return Err(ModelError::NotAModelDir {
                dir: dir.to_path_buf(),
            });
        }
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let generation =
            GenerationConfig::from_file_or_default(&dir.join("generation_config.json"))?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let tok_vocab = tokenizer.vocab_size();
        if tok_vocab > config.vocab_size {
            return Err(ModelError::config(
                dir.join("tokenizer.json"),
                "model.vocab",
                format!(
                    "the tokenizer has {tok_vocab} tokens but config.json's vocab_size is {}",
                    config.vocab_size
                ),
            ));
        }
        let st = SafetensorsSet::open_dir(dir)?;
        let weights = LlamaWeights::load(&config, &st)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            generation,
            tokenizer,
            weights,
        })
    }

    /// Ids that end generation: config.json's eos ids, generation_config's,
    /// and the tokenizer's eos token.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        if let Some(e) = &self.generation.eos_token_id {
            ids.extend(e.to_vec());
        }
        ids.extend(self.tokenizer.eos_id());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
