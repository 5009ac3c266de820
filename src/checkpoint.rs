//! Checkpoints in safetensors with PyTorch's `state_dict` names and shapes, so a file saved
//! here loads with `Net().load_state_dict(safetensors.torch.load_file(path))` and one saved
//! by `safetensors.torch.save_file(net.state_dict(), path)` loads here.
//!
//! Training state (parameters, momentum, where training stands) is one separate file, so that
//! resuming never mixes parameters and momentum from different steps.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::atomic::write_atomic;
use crate::model::{Arch, Layout, Net};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },

    #[error("{}: not a valid safetensors file (truncated or corrupted?): {source}", path.display())]
    Format { path: PathBuf, source: SafeTensorError },

    #[error("{}: missing tensor {name}; is this a checkpoint of this network?", path.display())]
    Missing { path: PathBuf, name: String },

    #[error("{}: unexpected tensors {}; is this a checkpoint of this network?", path.display(), names.join(", "))]
    Unexpected { path: PathBuf, names: Vec<String> },

    #[error("{}: tensor {name} has shape {found:?}, expected {expected:?}", path.display())]
    WrongShape { path: PathBuf, name: String, found: Vec<usize>, expected: Vec<usize> },

    #[error("{}: tensor {name} is {found:?}, expected F32", path.display())]
    WrongDtype { path: PathBuf, name: String, found: Dtype },

    #[error("{}: metadata {key}: {problem}", path.display())]
    Metadata { path: PathBuf, key: String, problem: String },

    #[error(
        "{}: tensor {name} holds {count} NaN or infinite values (the first at index {first}); the run that saved it diverged",
        path.display()
    )]
    NonFinite { path: PathBuf, name: String, count: usize, first: usize },
}

/// Flat buffers in [`Layout`] order (one, or one per prefix back to back) with the file's
/// string metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub params: Vec<f32>,
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// A metadata value parsed as `T`; `None` when absent (e.g. a file saved by PyTorch).
    pub fn meta<T: FromStr>(&self, path: &Path, key: &str) -> Result<Option<T>, CheckpointError>
    where
        T::Err: Display,
    {
        parse_meta(path, &self.metadata, key)
    }
}

fn parse_meta<T: FromStr>(
    path: &Path,
    metadata: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, CheckpointError>
where
    T::Err: Display,
{
    let Some(value) = metadata.get(key) else { return Ok(None) };
    value.parse().map(Some).map_err(|e: T::Err| CheckpointError::Metadata {
        path: path.into(),
        key: key.into(),
        problem: format!("{value:?}: {e}"),
    })
}

/// A checkpoint read into memory, its metadata parsed, its tensors not yet: the metadata says
/// which network the tensors belong to.
pub struct CheckpointFile {
    path: PathBuf,
    bytes: Vec<u8>,
    pub metadata: HashMap<String, String>,
}

impl CheckpointFile {
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.into(), source })?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|source| CheckpointError::Format { path: path.into(), source })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(CheckpointFile { path: path.into(), bytes, metadata })
    }

    pub fn meta<T: FromStr>(&self, key: &str) -> Result<Option<T>, CheckpointError>
    where
        T::Err: Display,
    {
        parse_meta(&self.path, &self.metadata, key)
    }

    /// The network the file records (`block`, `depth`); the reference's where it records none,
    /// as in a `state_dict` saved by PyTorch.
    pub fn arch(&self) -> Result<Arch, CheckpointError> {
        let default = Arch::default();
        let block = self.meta(ARCH_BLOCK)?.unwrap_or(default.block);
        let depth = self.meta(ARCH_DEPTH)?.unwrap_or(default.depth);
        if !(1..=Arch::MAX_DEPTH).contains(&depth) {
            let problem = format!("{depth} is outside 1..={}", Arch::MAX_DEPTH);
            return Err(CheckpointError::Metadata { path: self.path.clone(), key: ARCH_DEPTH.into(), problem });
        }
        Ok(Arch { block, depth })
    }

    /// One flat buffer per prefix, strictly, concatenated in `prefixes` order.
    pub fn read(&self, layout: &Layout, prefixes: &[&str]) -> Result<Vec<f32>, CheckpointError> {
        let path = self.path.as_path();
        let file = SafeTensors::deserialize(&self.bytes)
            .map_err(|source| CheckpointError::Format { path: path.into(), source })?;
        let mut params = Vec::with_capacity(prefixes.len() * layout.total);
        for prefix in prefixes {
            params.extend(read_group(path, &file, layout, prefix)?);
        }
        let expected: Vec<String> =
            prefixes.iter().flat_map(|p| layout.tensors.iter().map(move |t| format!("{p}{}", t.name))).collect();
        let mut unexpected: Vec<String> =
            file.names().into_iter().filter(|n| !expected.iter().any(|e| e == n)).map(String::from).collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(CheckpointError::Unexpected { path: path.into(), names: unexpected });
        }
        Ok(params)
    }
}

/// Metadata keys of the network a checkpoint holds.
const ARCH_BLOCK: &str = "block";
const ARCH_DEPTH: &str = "depth";

/// The metadata that lets [`CheckpointFile::arch`] rebuild `arch`.
pub fn arch_metadata(arch: Arch) -> [(String, String); 2] {
    [(ARCH_BLOCK.into(), arch.block.to_string()), (ARCH_DEPTH.into(), arch.depth.to_string())]
}

/// Atomically writes `groups` — (name prefix, flat buffer in `layout` order) — and `metadata`.
pub fn save(
    path: &Path,
    layout: &Layout,
    groups: &[(&str, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = groups
        .iter()
        .flat_map(|&(prefix, values)| {
            layout.tensors.iter().map(move |t| {
                let data = values[t.range()].iter().flat_map(|v| v.to_le_bytes()).collect();
                (format!("{prefix}{}", t.name), t.shape.clone(), data)
            })
        })
        .collect();
    let views = bytes.iter().map(|(name, shape, data)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches the data length");
        (name.as_str(), view)
    });
    let mut metadata = metadata;
    // Hugging Face tools read this to know the tensors came from PyTorch.
    metadata.insert("format".into(), "pt".into());
    let serialized = safetensors::serialize(views, Some(metadata))
        .map_err(|source| CheckpointError::Format { path: path.into(), source })?;
    write_atomic(path, &serialized).map_err(|source| CheckpointError::Write { path: path.into(), source })
}

/// Writes a model checkpoint: exactly the network's `state_dict`.
pub fn save_params(
    path: &Path,
    layout: &Layout,
    params: &[f32],
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    save(path, layout, &[("", params)], metadata)
}

/// Reads a model checkpoint strictly: every tensor of `layout`, F32 with its shape, nothing else.
pub fn load_params(path: &Path, layout: &Layout) -> Result<Checkpoint, CheckpointError> {
    load(path, layout, &[""])
}

/// Reads one flat buffer per prefix, strictly, concatenated in `prefixes` order, and the
/// metadata.
pub fn load(path: &Path, layout: &Layout, prefixes: &[&str]) -> Result<Checkpoint, CheckpointError> {
    let file = CheckpointFile::open(path)?;
    Ok(Checkpoint { params: file.read(layout, prefixes)?, metadata: file.metadata })
}

/// The network a model checkpoint records, with its parameters.
pub fn load_net(path: &Path) -> Result<(Net, Checkpoint), CheckpointError> {
    let file = CheckpointFile::open(path)?;
    let net = Net::build(file.arch()?);
    let params = file.read(&net.layout, &[""])?;
    Ok((net, Checkpoint { params, metadata: file.metadata }))
}

fn read_group(path: &Path, file: &SafeTensors, layout: &Layout, prefix: &str) -> Result<Vec<f32>, CheckpointError> {
    let mut flat = vec![0.0; layout.total];
    for spec in &layout.tensors {
        let name = format!("{prefix}{}", spec.name);
        let tensor =
            file.tensor(&name).map_err(|_| CheckpointError::Missing { path: path.into(), name: name.clone() })?;
        if tensor.dtype() != Dtype::F32 {
            return Err(CheckpointError::WrongDtype { path: path.into(), name, found: tensor.dtype() });
        }
        if tensor.shape() != spec.shape.as_slice() {
            let (found, expected) = (tensor.shape().to_vec(), spec.shape.clone());
            return Err(CheckpointError::WrongShape { path: path.into(), name, found, expected });
        }
        let values = &mut flat[spec.range()];
        for (v, b) in values.iter_mut().zip(tensor.data().chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if let Some(first) = values.iter().position(|v| !v.is_finite()) {
            let count = values.iter().filter(|v| !v.is_finite()).count();
            return Err(CheckpointError::NonFinite { path: path.into(), name, count, first });
        }
    }
    Ok(flat)
}
