//! Goldens from an independent reference (Hugging Face transformers, see
//! tests/reference/make_goldens.py) and the comparison of a backend against
//! them: logits at every prompt position, a greedy continuation, and chat
//! templates rendered by `apply_chat_template`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, ForwardBatch, SeqSlice};
use crate::error::{ModelError, Result, read_json};
use crate::template::ChatMessage;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Golden {
    /// What produced the file (library versions, precision, device).
    pub reference: String,
    /// sha256 of model.safetensors the goldens were computed from, when recorded.
    pub weights_sha256: Option<String>,
    pub prompts: Vec<GoldenPrompt>,
    #[serde(default)]
    pub chats: Vec<GoldenChat>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GoldenPrompt {
    pub ids: Vec<u32>,
    /// `logits[i]` is position `logits_from + i` (a long prompt keeps only
    /// its last positions).
    #[serde(default)]
    pub logits_from: usize,
    /// [positions, vocab]; absent when the file keeps only the continuation.
    pub logits: Option<Vec<Vec<f32>>>,
    /// Greedy continuation, never stopping at EOS.
    pub greedy: Vec<u32>,
    /// The reference's top-2 logit gap at each greedy step (near ties).
    #[serde(default)]
    pub greedy_gaps: Vec<f32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GoldenChat {
    pub messages: Vec<GoldenMessage>,
    pub add_generation_prompt: bool,
    /// The rendered text, or the exception's message when the template raised.
    pub text: Option<String>,
    pub error: Option<String>,
    /// tokenizer(text, add_special_tokens=False).input_ids
    pub ids: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GoldenMessage {
    pub role: String,
    pub content: String,
}

impl Golden {
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = read_json(path)?;
        crate::error::from_value(path, value)
    }
}

/// How a backend compares with a golden file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Largest |ours - reference| over every logit of every prompt position.
    pub max_abs_logit_diff: f32,
    /// Largest |reference| logit (for scale).
    pub max_abs_logit: f32,
    /// Largest |Δ logprob| over the reference's 5 most likely tokens, at
    /// every position with reference logits (the fast path's budget: 0.05).
    pub max_top5_logprob_diff: f32,
    /// Greedy steps compared and how many matched before the first difference.
    pub greedy_steps: usize,
    pub greedy_matching_prefix: Vec<usize>,
    /// Prompts whose greedy continuation differs.
    pub greedy_mismatches: usize,
    /// Per prompt: the reference's top-2 logit gap at the first differing
    /// greedy step, when there is one and the golden records gaps (a
    /// divergence is a near tie only if this is below the measured error).
    pub first_mismatch_gap: Vec<Option<f32>>,
    /// Chat cases whose text, ids or error differ: (index, explanation).
    pub chat_mismatches: Vec<(usize, String)>,
}

/// Logits for every position of `ids` run as one sequence from position 0,
/// using blocks 0.. of the backend's pool: [len, vocab].
pub fn prompt_logits(backend: &mut dyn Backend, ids: &[u32]) -> Result<Vec<f32>, BackendError> {
    let bs = backend.kv_geometry().block_size;
    let table: Vec<u32> = (0..ids.len().div_ceil(bs) as u32).collect();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let rows: Vec<u32> = (0..ids.len() as u32).collect();
    let seqs = [SeqSlice {
        token_start: 0,
        num_tokens: ids.len(),
        block_table: &table,
    }];
    let mut logits = Vec::new();
    backend.forward(
        &ForwardBatch {
            tokens: ids,
            positions: &positions,
            seqs: &seqs,
            logit_rows: &rows,
        },
        &mut logits,
    )?;
    Ok(logits)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding of `steps` tokens after `ids` (prefill, then one token per
/// step through the KV cache), never stopping at EOS.
pub fn greedy(
    backend: &mut dyn Backend,
    ids: &[u32],
    steps: usize,
) -> Result<Vec<u32>, BackendError> {
    let vocab = backend.config().vocab_size;
    let bs = backend.kv_geometry().block_size;
    let total = ids.len() + steps;
    let table: Vec<u32> = (0..total.div_ceil(bs) as u32).collect();
    let mut out = Vec::with_capacity(steps);
    let mut logits = Vec::new();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let last = [ids.len() as u32 - 1];
    let seqs = [SeqSlice {
        token_start: 0,
        num_tokens: ids.len(),
        block_table: &table,
    }];
    backend.forward(
        &ForwardBatch {
            tokens: ids,
            positions: &positions,
            seqs: &seqs,
            logit_rows: &last,
        },
        &mut logits,
    )?;
    let mut next = argmax(&logits[..vocab]);
    for step in 0..steps {
        out.push(next);
        if step + 1 == steps {
            break;
        }
        let pos = [(ids.len() + step) as u32];
        let seqs = [SeqSlice {
            token_start: 0,
            num_tokens: 1,
            block_table: &table,
        }];
        backend.forward(
            &ForwardBatch {
                tokens: &[next],
                positions: &pos,
                seqs: &seqs,
                logit_rows: &[0],
            },
            &mut logits,
        )?;
        next = argmax(&logits[..vocab]);
    }
    Ok(out)
}

/// Runs every golden prompt and chat case; the caller decides what tolerance
/// passes.
/// log-softmax of a row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    row.iter().map(|&v| v as f64 - log_z).collect()
}

/// Largest |logprob(ours) − logprob(reference)| over the reference's `k`
/// most likely tokens.
pub fn top_logprob_diff(ours: &[f32], reference: &[f32], k: usize) -> f32 {
    let (a, b) = (log_softmax(ours), log_softmax(reference));
    let mut order: Vec<usize> = (0..b.len()).collect();
    order.sort_by(|&i, &j| b[j].total_cmp(&b[i]));
    order
        .iter()
        .take(k)
        .map(|&i| (a[i] - b[i]).abs() as f32)
        .fold(0.0, f32::max)
}

pub fn compare(
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    golden: &Golden,
) -> Result<Report> {
    let dev = |e: BackendError| ModelError::Source {
        model: "golden".into(),
        message: e.to_string(),
    };
    let vocab = backend.config().vocab_size;
    let mut report = Report::default();
    for p in &golden.prompts {
        if let Some(reference) = &p.logits {
            let ours = prompt_logits(backend, &p.ids).map_err(dev)?;
            if p.logits_from + reference.len() > p.ids.len() {
                return Err(ModelError::Source {
                    model: "golden".into(),
                    message: format!(
                        "a prompt of {} tokens has logits for positions {}..{}",
                        p.ids.len(),
                        p.logits_from,
                        p.logits_from + reference.len()
                    ),
                });
            }
            for (i, row) in reference.iter().enumerate() {
                let pos = p.logits_from + i;
                let mine = &ours[pos * vocab..(pos + 1) * vocab];
                for (i, &r) in row.iter().enumerate().take(vocab) {
                    let d = (mine[i] - r).abs();
                    report.max_abs_logit_diff = report.max_abs_logit_diff.max(d);
                    report.max_abs_logit = report.max_abs_logit.max(r.abs());
                }
                report.max_top5_logprob_diff = report.max_top5_logprob_diff.max(top_logprob_diff(
                    mine,
                    &row[..vocab.min(row.len())],
                    5,
                ));
            }
        }
        let ours = greedy(backend, &p.ids, p.greedy.len()).map_err(dev)?;
        let prefix = ours
            .iter()
            .zip(&p.greedy)
            .take_while(|(a, b)| a == b)
            .count();
        report.greedy_steps += p.greedy.len();
        report.greedy_matching_prefix.push(prefix);
        report.first_mismatch_gap.push(if prefix < p.greedy.len() {
            p.greedy_gaps.get(prefix).copied()
        } else {
            None
        });
        if prefix != p.greedy.len() {
            report.greedy_mismatches += 1;
        }
    }
    for (i, chat) in golden.chats.iter().enumerate() {
        let msgs: Vec<ChatMessage> = chat
            .messages
            .iter()
            .map(|m| ChatMessage::new(&m.role, &m.content))
            .collect();
        match (
            tokenizer.apply_chat_template(&msgs, chat.add_generation_prompt),
            &chat.text,
            &chat.error,
        ) {
            (Ok(text), Some(expected), _) => {
                if &text != expected {
                    report
                        .chat_mismatches
                        .push((i, format!("rendered {text:?}, reference {expected:?}")));
                } else if let Some(ids) = &chat.ids {
                    let ours = tokenizer
                        .encode(&text, false)
                        .map_err(|e| ModelError::Source {
                            model: "golden".into(),
                            message: e,
                        })?;
                    if &ours != ids {
                        report
                            .chat_mismatches
                            .push((i, format!("ids {ours:?}, reference {ids:?}")));
                    }
                }
            }
            (Err(e), _, Some(expected)) => {
                if !expected.contains(&e.to_string()) {
                    report
                        .chat_mismatches
                        .push((i, format!("error {e}, reference {expected:?}")));
                }
            }
            (ours, text, error) => report.chat_mismatches.push((
                i,
                format!("ours {ours:?}, reference text {text:?} error {error:?}"),
            )),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::top_logprob_diff;

    #[test]
    fn top_logprob_diff_compares_normalized_top_tokens() {
        let reference = [2.0f32, 1.0, 0.0, -1.0, -2.0, -30.0];
        // A constant shift changes no logprob.
        let shifted: Vec<f32> = reference.iter().map(|v| v + 7.5).collect();
        assert!(top_logprob_diff(&shifted, &reference, 5) < 1e-6);
        // A change outside the top 5 moves the top-5 logprobs only through
        // the normalizer (here by almost nothing).
        let mut tail = reference;
        tail[5] = -20.0;
        assert!(top_logprob_diff(&tail, &reference, 5) < 1e-6);
        // Raising the top token by 0.1 changes its logprob by less than 0.1.
        let mut top = reference;
        top[0] += 0.1;
        let d = top_logprob_diff(&top, &reference, 5);
        assert!(d > 0.01 && d < 0.1, "{d}");
    }
}
