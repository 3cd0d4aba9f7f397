//! Reading model files into one canonical naming per network, without trusting them.
//!
//! - [`SourceFile::open`] reads a `.safetensors` header or a PyTorch zip checkpoint's pickle
//!   (through a restricted unpickler that refuses every foreign global) and lists the tensors
//!   with their dtype, shape and where their bytes are. No tensor data is read at this point.
//! - A per-network module (e.g. [`esrgan`]) recognises the file's key layout and translates it,
//!   once, into that network's canonical names, returning a [`TensorMap`]. Network code reaches
//!   tensors through scopes: `w.scope("body").scope(0).get("rdb1.conv1.weight")`.
//! - [`materialize`] turns the canonical map into [`Weights`]: ONNX external-data references
//!   into ONE f32 `.safetensors` file in ONE folder (ONNX Runtime resolves external data
//!   relative to a single folder). An f32 `.safetensors` source is referenced in place; anything
//!   else (pickles, f16/bf16, strided views) is converted once into a cache file.

mod map;
mod pickle;
mod safetensors;
mod source;
mod store;
mod torch;

pub mod clip_keys;
pub mod embedding;
pub mod esrgan;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod lora;
pub mod sd;

use std::path::PathBuf;

pub use map::{Scope, TensorMap};
pub use source::{Format, SourceFile, SourceTensor};
pub use store::{
    Patch, STALE_CONVERSION_AGE, Target, WeightType, Weights, materialize, materialize_as,
    remove_stale_conversions,
};

/// Element types found in weight files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The name the safetensors format uses.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    fn from_safetensors_name(name: &str) -> Option<DType> {
        [
            DType::F64,
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U8,
            DType::Bool,
        ]
        .into_iter()
        .find(|d| d.safetensors_name() == name)
    }

    /// Whether the type converts to f32 for use as a network weight.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

/// Everything that can go wrong between a model file and its weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file is missing or cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not form a valid file of the format they claim.
    #[error("{} is corrupt or truncated: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// A pickle names a Python global outside the allowlist (it could run code).
    #[error(
        "{} is refused: its pickle refers to the Python global `{global}`, and only tensors and plain containers are loaded (convert it to .safetensors if you trust it)",
        path.display()
    )]
    ForeignGlobal { path: PathBuf, global: String },
    /// The file is valid but its tensors are not a layout this network understands.
    #[error("{} is not a {network} model this version understands: {found}", path.display())]
    UnknownLayout {
        path: PathBuf,
        network: &'static str,
        found: String,
    },
    /// The file uses a feature we deliberately do not read.
    #[error("{} is not supported: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    /// The file is a valid model of another kind than the one asked for (an SDXL checkpoint
    /// given as SD 1.5, a LoRA given as a checkpoint, …).
    #[error("{} is {found}, not {expected}", path.display())]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
        found: sd::ModelKind,
    },
    /// A LoRA names a layer the network does not have.
    #[error("{}: the LoRA key `{key}` matches no layer of the {network}", path.display())]
    LoraMismatch {
        path: PathBuf,
        key: String,
        network: &'static str,
    },
    /// A canonical tensor the network needs is absent.
    #[error("the weights have no tensor `{name}`")]
    Missing { name: String },
    /// A tensor's shape does not fit the network.
    #[error("tensor `{name}` has shape {shape:?}: {reason}")]
    BadShape {
        name: String,
        shape: Vec<i64>,
        reason: String,
    },
    /// The converted copy could not be written to the cache folder.
    #[error("cannot write converted weights to {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WeightsError {
    /// True when the model file itself could not be read (as opposed to being invalid).
    pub fn is_io(&self) -> bool {
        matches!(self, WeightsError::Io { .. } | WeightsError::Cache { .. })
    }

    fn io(path: &std::path::Path, source: std::io::Error) -> WeightsError {
        WeightsError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn corrupt(path: &std::path::Path, reason: impl Into<String>) -> WeightsError {
        WeightsError::Corrupt {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}
