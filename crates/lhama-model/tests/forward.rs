//! Properties of the CPU forward pass that the engine relies on: a sequence's
//! logits do not depend on what else is in the batch, on which physical KV
//! blocks it got, or on how its prompt was split into chunks; bit for bit,
//! on the exact path and on the fast one.

mod common;

use lhama_model::golden::prompt_logits;
use lhama_model::{Backend, ForwardBatch, SeqSlice};

fn prompt(len: usize, salt: u32, vocab: u32) -> Vec<u32> {
    std::iter::once(1)
        .chain((1..len as u32).map(|i| 3 + (i * 131 + salt * 17) % (vocab - 3)))
        .collect()
}

#[test]
fn batch_composition_and_block_placement_do_not_change_logits() {
    for fast in [false, true] {
        batch_composition_and_block_placement(fast);
    }
}

fn batch_composition_and_block_placement(fast: bool) {
    let dir = common::tiny_model();
    let (files, mut backend) = common::backend_with(dir.path(), 64, fast);
    let vocab = files.config.vocab_size;
    let a = prompt(21, 1, vocab as u32);
    let alone = prompt_logits(&mut backend, &a).expect("alone");

    // The same prompt as the second of three sequences, with scattered blocks,
    // next to a decode token of a sequence at position 40 and another prompt.
    let b = prompt(41, 2, vocab as u32);
    let c = prompt(9, 3, vocab as u32);
    let table_b: Vec<u32> = vec![50, 51, 52];
    let table_a: Vec<u32> = vec![7, 3];
    let table_c: Vec<u32> = vec![60];
    // Fill b's cache first (positions 0..40).
    let pos_b: Vec<u32> = (0..40).collect();
    let mut logits = Vec::new();
    backend
        .forward(
            &ForwardBatch {
                tokens: &b[..40],
                positions: &pos_b,
                seqs: &[SeqSlice {
                    token_start: 0,
                    num_tokens: 40,
                    block_table: &table_b,
                }],
                logit_rows: &[],
            },
            &mut logits,
        )
        .expect("prefill b");
    let mut tokens = vec![b[40]];
    tokens.extend(&a);
    tokens.extend(&c);
    let mut positions = vec![40];
    positions.extend(0..a.len() as u32);
    positions.extend(0..c.len() as u32);
    let seqs = [
        SeqSlice {
            token_start: 0,
            num_tokens: 1,
            block_table: &table_b,
        },
        SeqSlice {
            token_start: 1,
            num_tokens: a.len(),
            block_table: &table_a,
        },
        SeqSlice {
            token_start: 1 + a.len(),
            num_tokens: c.len(),
            block_table: &table_c,
        },
    ];
    let rows: Vec<u32> = (1..=a.len() as u32).collect();
    backend
        .forward(
            &ForwardBatch {
                tokens: &tokens,
                positions: &positions,
                seqs: &seqs,
                logit_rows: &rows,
            },
            &mut logits,
        )
        .expect("mixed batch");
    assert_eq!(logits.len(), alone.len());
    assert!(
        logits == alone,
        "logits of a prompt changed when batched with others (fast: {fast})"
    );
}

#[test]
fn chunked_prefill_equals_one_pass() {
    for fast in [false, true] {
        // 37 tokens; 300, more than the backend takes in one run of its
        // layers (it splits a long step itself).
        chunked_prefill(fast, &[(0, 5), (5, 21), (21, 37)]);
        chunked_prefill(fast, &[(0, 1), (1, 150), (150, 299), (299, 300)]);
    }
}

fn chunked_prefill(fast: bool, chunks: &[(usize, usize)]) {
    let dir = common::tiny_model();
    let (files, mut backend) = common::backend_with(dir.path(), 64, fast);
    let len = chunks[chunks.len() - 1].1;
    let p = prompt(len, 4, files.config.vocab_size as u32);
    let whole = prompt_logits(&mut backend, &p).expect("whole");
    let vocab = files.config.vocab_size;
    // Scattered blocks, as many as the prompt needs.
    let table: Vec<u32> = (0..len.div_ceil(16) as u32)
        .map(|b| (b * 37 + 9) % 64)
        .collect();
    let mut got = Vec::new();
    let mut logits = Vec::new();
    for &(start, end) in chunks {
        let positions: Vec<u32> = (start as u32..end as u32).collect();
        let rows: Vec<u32> = (0..(end - start) as u32).collect();
        backend
            .forward(
                &ForwardBatch {
                    tokens: &p[start..end],
                    positions: &positions,
                    seqs: &[SeqSlice {
                        token_start: 0,
                        num_tokens: end - start,
                        block_table: &table,
                    }],
                    logit_rows: &rows,
                },
                &mut logits,
            )
            .expect("chunk");
        got.extend_from_slice(&logits);
    }
    assert_eq!(got.len(), len * vocab);
    assert!(
        got == whole,
        "chunked prefill gave different logits (fast: {fast}, {len} tokens)"
    );
}

#[test]
fn invalid_batches_are_errors_not_panics() {
    let dir = common::tiny_model();
    let (files, mut backend) = common::backend(dir.path(), 4);
    let vocab = files.config.vocab_size as u32;
    let table = [0u32, 1];
    let mut logits = Vec::new();
    // (tokens, positions, block table, logit rows, expected message)
    type Case = (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec![vocab],
            vec![0],
            table.to_vec(),
            vec![0],
            "outside the vocabulary",
        ),
        (
            vec![1, 2],
            vec![0],
            table.to_vec(),
            vec![0],
            "positions for",
        ),
        (
            vec![1],
            vec![40],
            table.to_vec(),
            vec![0],
            "has no KV block",
        ),
        (vec![1], vec![0], vec![9], vec![0], "outside the pool"),
        (vec![1], vec![0], table.to_vec(), vec![3], "logit row"),
        (
            vec![1],
            vec![100_000],
            vec![0; 7000],
            vec![0],
            "max_position_embeddings",
        ),
    ];
    for (tokens, positions, table, rows, expect) in cases {
        let seqs = [SeqSlice {
            token_start: 0,
            num_tokens: tokens.len(),
            block_table: &table,
        }];
        let err = backend
            .forward(
                &ForwardBatch {
                    tokens: &tokens,
                    positions: &positions,
                    seqs: &seqs,
                    logit_rows: &rows,
                },
                &mut logits,
            )
            .expect_err(expect);
        assert!(
            err.to_string().contains(expect),
            "{err} should mention {expect:?}"
        );
    }
}
