//! Helpers shared by the model layer's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lhama_cpu::CpuBackend;
use lhama_model::synth::{Preset, write_model};
use lhama_model::{KvGeometry, ModelFiles};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

pub const BLOCK: usize = 16;

/// A fresh tiny synthetic model (seed 0, the goldens' model) in a temp dir.
pub fn tiny_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_model(Preset::Tiny, 0, dir.path()).expect("synth tiny");
    dir
}

pub fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/goldens/tiny.json")
}

/// Loads `dir` into a CPU backend with `blocks` KV blocks.
pub fn backend(dir: &Path, blocks: usize) -> (ModelFiles, CpuBackend) {
    backend_with(dir, blocks, false)
}

/// As `backend`, on the fast path (`fast`) or the exact one.
pub fn backend_with(dir: &Path, blocks: usize, fast: bool) -> (ModelFiles, CpuBackend) {
    let files = ModelFiles::load(dir).expect("load model");
    let backend = CpuBackend::with_precision(
        &files.config,
        files.weights.clone(),
        KvGeometry {
            num_blocks: blocks,
            block_size: BLOCK,
        },
        fast,
    );
    (files, backend)
}

/// An owned tensor as read from or written to a safetensors file.
#[derive(Clone)]
pub struct Raw {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn read_tensors(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("parse safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                Raw {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, Raw>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// Rewrites a model's config.json through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    edit_json(&dir.join("config.json"), edit);
}

pub fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read json"))
            .expect("parse json");
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).expect("json")).expect("write json");
}

pub fn f16_to_f32(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}
