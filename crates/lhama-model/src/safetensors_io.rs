//! Reading safetensors checkpoints, one file or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped and validated
//! (header, offsets, length) when opened; tensors are copied out on request
//! with their dtype and shape checked against what the caller expects.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result, read_json};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct TensorEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the file's mapping.
    start: usize,
    end: usize,
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    tensors: HashMap<String, TensorEntry>,
}

/// A float tensor converted to the caller's precision, or raw integers.
#[derive(Debug, Clone)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// All safetensors files of a checkpoint, with a name → file map.
pub struct SafetensorsSet {
    dir: PathBuf,
    files: Vec<MappedFile>,
    by_name: HashMap<String, usize>,
}

impl SafetensorsSet {
    /// Opens `model.safetensors`, or the shards named by the index file.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let paths: Vec<PathBuf> = if index_path.exists() {
            shard_paths(dir, &index_path)?
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ModelError::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no {SINGLE_FILE} and no {INDEX_FILE} in the model directory"),
                ),
            ));
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut by_name = HashMap::new();
        for path in paths {
            let file = map_file(&path)?;
            for name in file.tensors.keys() {
                if by_name.insert(name.clone(), files.len()).is_some() {
                    return Err(ModelError::tensor(
                        &path,
                        name,
                        "appears in more than one shard",
                    ));
                }
            }
            files.push(file);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            by_name,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn entry(&self, name: &str) -> Result<(&MappedFile, &TensorEntry)> {
        let idx = *self
            .by_name
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.to_string(),
                searched: self.describe_files(),
            })?;
        let file = &self.files[idx];
        let entry = file
            .tensors
            .get(name)
            .expect("by_name only lists tensors that the file's own table holds");
        Ok((file, entry))
    }

    fn describe_files(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| {
                f.path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            })
            .collect();
        format!("{} ({})", self.dir.display(), names.join(", "))
    }

    fn check_shape(
        file: &MappedFile,
        name: &str,
        entry: &TensorEntry,
        shape: &[usize],
    ) -> Result<()> {
        if entry.shape != shape {
            return Err(ModelError::tensor(
                &file.path,
                name,
                format!("shape is {:?}, expected {:?}", entry.shape, shape),
            ));
        }
        Ok(())
    }

    /// A float tensor (F16, BF16 or F32 in the file) as f32.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Tensor<f32>> {
        let (file, entry) = self.entry(name)?;
        Self::check_shape(file, name, entry, shape)?;
        let bytes = &file.mmap[entry.start..entry.end];
        let data = match entry.dtype {
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            other => {
                return Err(ModelError::tensor(
                    &file.path,
                    name,
                    format!("dtype is {other:?}, expected a float type (F16, BF16 or F32)"),
                ));
            }
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// A float tensor as f16 (converting BF16/F32 in the file).
    pub fn f16(&self, name: &str, shape: &[usize]) -> Result<Tensor<f16>> {
        let (file, entry) = self.entry(name)?;
        if entry.dtype == Dtype::F16 {
            Self::check_shape(file, name, entry, shape)?;
            let bytes = &file.mmap[entry.start..entry.end];
            let data = bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            return Ok(Tensor {
                shape: shape.to_vec(),
                data,
            });
        }
        let t = self.f32(name, shape)?;
        Ok(Tensor {
            shape: t.shape,
            data: t.data.into_iter().map(f16::from_f32).collect(),
        })
    }

    /// An I32 tensor, reinterpreted bit for bit as u32 (packed nibbles).
    pub fn packed_u32(&self, name: &str, shape: &[usize]) -> Result<Tensor<u32>> {
        let (file, entry) = self.entry(name)?;
        if entry.dtype != Dtype::I32 && entry.dtype != Dtype::U32 {
            return Err(ModelError::tensor(
                &file.path,
                name,
                format!(
                    "dtype is {:?}, expected I32 (packed 4-bit values)",
                    entry.dtype
                ),
            ));
        }
        Self::check_shape(file, name, entry, shape)?;
        let bytes = &file.mmap[entry.start..entry.end];
        let data = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }
}

fn shard_paths(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>> {
    let index = read_json(index_path)?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::config(index_path, "weight_map", "missing or not an object"))?;
    let mut shards = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            ModelError::config(
                index_path,
                format!("weight_map.{tensor}"),
                "not a file name",
            )
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(ModelError::config(
                index_path,
                format!("weight_map.{tensor}"),
                format!("{file:?} is not a plain file name in the model directory"),
            ));
        }
        shards.insert(file.to_string(), ());
    }
    if shards.is_empty() {
        return Err(ModelError::config(index_path, "weight_map", "is empty"));
    }
    Ok(shards.into_keys().map(|f| dir.join(f)).collect())
}

fn map_file(path: &Path) -> Result<MappedFile> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the mapping is read-only and private to this process; a checkpoint
    // file modified on disk while the server loads it is outside what we defend
    // against (as with every mmap-based loader).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let (header_len, _) =
        SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let data_start = 8 + header_len;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        // Offset of this tensor's bytes inside the mapping.
        let start = data.as_ptr() as usize - mmap.as_ptr() as usize;
        debug_assert!(start >= data_start);
        tensors.insert(
            name,
            TensorEntry {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                start,
                end: start + data.len(),
            },
        );
    }
    Ok(MappedFile {
        path: path.to_path_buf(),
        mmap,
        tensors,
    })
}
