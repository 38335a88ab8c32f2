//! Where a model comes from: `--model` names a local directory in Hugging Face
//! layout, or a Hub repo id that is downloaded into the standard HF cache
//! (HF_HOME, HF_TOKEN and HF_HUB_OFFLINE are honoured).

use std::path::{Path, PathBuf};

use hf_hub::HFClientSync;
use hf_hub::HFError;
use hf_hub::progress::{DownloadEvent, Progress, ProgressEvent, ProgressHandler};

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
    from_hub(spec, env_flag("HF_HUB_OFFLINE"))
}

/// The Hub client, and the repository `owner/name` on it.
fn hub_repo(repo_id: &str) -> Result<hf_hub::HFRepositorySync<hf_hub::RepoTypeModel>> {
    let (owner, name) = repo_id
        .split_once('/')
        .expect("looks_like_repo_id checked owner/name");
    // Endpoint, token (HF_TOKEN, HF_TOKEN_PATH, $HF_HOME/token) and cache
    // (HF_HUB_CACHE, $HF_HOME/hub) come from the environment, as in the
    // Python client.
    let client = HFClientSync::new().map_err(|e| ModelError::Source {
        model: repo_id.into(),
        message: format!("could not set up the Hugging Face Hub client ({e}); {LOCAL_HINT}"),
    })?;
    Ok(client.model(owner, name))
}

/// Fetches `file` of the repo into the standard cache (or, offline, finds it
/// there) and returns its path. `Ok(None)`: the repo has no such file.
fn fetch_file(
    repo: &hf_hub::HFRepositorySync<hf_hub::RepoTypeModel>,
    file: &str,
    offline: bool,
) -> std::result::Result<Option<PathBuf>, HFError> {
    let progress = (!offline).then(|| Progress::new(DownloadLog::new(file)));
    match repo
        .download_file()
        .filename(file)
        .local_files_only(offline)
        .maybe_progress(progress)
        .send()
    {
        Ok(p) => Ok(Some(p)),
        Err(HFError::EntryNotFound { .. }) => Ok(None),
        Err(HFError::LocalEntryNotFound { .. }) if offline => Ok(None),
        Err(e) => Err(e),
    }
}

/// Brings the model's files from the Hub into the standard cache (or, with
/// `offline`, only looks there): config.json and tokenizer.json, the
/// optional configs, and the weights (one file, or the index and its shards).
/// Returns the snapshot directory that holds them.
fn from_hub(repo_id: &str, offline: bool) -> Result<PathBuf> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ModelError::Source {
        model: repo_id.into(),
        message: if offline {
            format!(
                "HF_HUB_OFFLINE is set and {what} is not in the Hugging Face cache ({e}); {LOCAL_HINT}"
            )
        } else {
            format!("could not download {what} from the Hugging Face Hub ({e}); {LOCAL_HINT}")
        },
    };
    let missing = |what: &str| fail(what, &"the repository has no such file");
    let repo = hub_repo(repo_id)?;
    let mut dir = None;
    for file in REQUIRED {
        let p = fetch_file(&repo, file, offline)
            .map_err(|e| fail(file, &e))?
            .ok_or_else(|| missing(file))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL {
        // Absent optional files are fine; the loader falls back to defaults.
        fetch_file(&repo, file, offline).map_err(|e| fail(file, &e))?;
    }
    match fetch_file(&repo, INDEX_FILE, offline).map_err(|e| fail(INDEX_FILE, &e))? {
        Some(index_path) => {
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
                fetch_file(&repo, &shard, offline)
                    .map_err(|e| fail(&shard, &e))?
                    .ok_or_else(|| missing(&shard))?;
            }
        }
        None => {
            fetch_file(&repo, SINGLE_FILE, offline)
                .map_err(|e| fail(SINGLE_FILE, &e))?
                .ok_or_else(|| {
                    fail("the weights (model.safetensors or its index)", &"not found")
                })?;
        }
    }
    Ok(dir.expect("REQUIRED is not empty, so the loop set dir or returned"))
}

/// Download progress of one file on stderr: a line at the start, at every
/// tenth of the size, and at the end.
struct DownloadLog {
    file: String,
    tenths: std::sync::atomic::AtomicU64,
}

impl DownloadLog {
    fn new(file: &str) -> Self {
        Self {
            file: file.to_string(),
            tenths: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    fn report(&self, done: u64, total: u64) {
        use std::sync::atomic::Ordering;
        if total == 0 {
            return;
        }
        let tenth = done.min(total) * 10 / total;
        if self.tenths.swap(tenth, Ordering::Relaxed) != tenth {
            eprintln!(
                "downloading {}: {:.1} of {:.1} MB",
                self.file,
                done as f64 / 1e6,
                total as f64 / 1e6
            );
        }
    }
}

impl ProgressHandler for DownloadLog {
    fn on_progress(&self, event: &ProgressEvent) {
        match event {
            ProgressEvent::Download(DownloadEvent::Start { total_bytes, .. }) => {
                self.report(0, *total_bytes);
            }
            ProgressEvent::Download(DownloadEvent::Progress { files }) => {
                for f in files.iter().filter(|f| f.filename == self.file) {
                    self.report(f.bytes_completed, f.total_bytes);
                }
            }
            ProgressEvent::Download(DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            }) => self.report(*bytes_completed, *total_bytes),
            _ => {}
        }
    }
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
