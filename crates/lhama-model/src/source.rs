//! Where a model comes from: `--model` names a local directory in Hugging Face
//! layout, or a Hub repo id that is downloaded into the standard HF cache
//! (HF_HOME, HF_TOKEN and HF_HUB_OFFLINE are honoured).

use std::path::{Path, PathBuf};

use hf_hub::Cache;
use hf_hub::api::sync::ApiBuilder;

use crate::error::{ModelError, Result};
use crate::safetensors_io::{INDEX_FILE, SINGLE_FILE};

pub const DEFAULT_MODEL: &str = "nicholasKluge/TeenyTinyLlama-460m-Chat-awq";

const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

const LOCAL_HINT: &str = "to use a model without hub access, point --model at a local model \
     directory (config.json, tokenizer.json, *.safetensors), for example one written by \
     `lhama synth --preset ttl-460m --out DIR`";

/// True for values such as `owner/name` that can only mean a Hub repo.
fn looks_like_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(owner) && ok(name)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Resolves `--model` to a local directory, downloading from the Hub if it
/// names a repo that is not a local path.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(ModelError::Source {
            model: spec.into(),
            message: "is a file; --model takes a model directory or a Hugging Face repo id".into(),
        });
    }
    if !looks_like_repo_id(spec) {
        return Err(ModelError::Source {
            model: spec.into(),
            message: "no such directory, and not a Hugging Face repo id (owner/name)".into(),
        });
    }
    if env_flag("HF_HUB_OFFLINE") {
        from_cache(spec)
    } else {
        download(spec)
    }
}

fn from_cache(repo_id: &str) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let repo = cache.model(repo_id.to_string());
    let mut dir = None;
    for file in REQUIRED {
        match repo.get(file) {
            Some(p) => dir = p.parent().map(Path::to_path_buf),
            None => {
                return Err(ModelError::Source {
                    model: repo_id.into(),
                    message: format!(
                        "HF_HUB_OFFLINE is set and {file} is not in the Hugging Face cache ({}); {LOCAL_HINT}",
                        cache.path().display()
                    ),
                });
            }
        }
    }
    let dir = dir.expect("REQUIRED is not empty, so the loop set dir or returned");
    if repo.get(INDEX_FILE).is_none() && repo.get(SINGLE_FILE).is_none() {
        return Err(ModelError::Source {
            model: repo_id.into(),
            message: format!(
                "HF_HUB_OFFLINE is set and no weights are in the Hugging Face cache ({}); {LOCAL_HINT}",
                cache.path().display()
            ),
        });
    }
    Ok(dir)
}

fn download(repo_id: &str) -> Result<PathBuf> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ModelError::Source {
        model: repo_id.into(),
        message: format!("could not download {what} from the Hugging Face Hub ({e}); {LOCAL_HINT}"),
    };
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let api = ApiBuilder::from_cache(Cache::from_env())
        .with_progress(true)
        .with_token(token)
        .build()
        .map_err(|e| fail("anything", &e))?;
    let repo = api.model(repo_id.to_string());
    let mut dir = None;
    for file in REQUIRED {
        let p = repo.get(file).map_err(|e| fail(file, &e))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL {
        // Absent optional files are fine; the loader falls back to defaults.
        let _ = repo.get(file);
    }
    match repo.get(INDEX_FILE) {
        Ok(index_path) => {
            let index = crate::error::read_json(&index_path)?;
            let mut shards: Vec<String> = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                repo.get(&shard).map_err(|e| fail(&shard, &e))?;
            }
        }
        Err(_) => {
            repo.get(SINGLE_FILE).map_err(|e| fail(SINGLE_FILE, &e))?;
        }
    }
    Ok(dir.expect("REQUIRED is not empty, so the loop set dir or returned"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        assert!(looks_like_repo_id(DEFAULT_MODEL));
        assert!(looks_like_repo_id("org/model-1.5b_v2"));
        assert!(!looks_like_repo_id("./models/tiny"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("plainname"));
    }
}
