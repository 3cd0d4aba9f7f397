//! The neural networks, one file each, written as ONNX graphs over canonical weights.
//!
//! Each network infers its hyper-parameters from tensor shapes, builds its graph with
//! `crate::onnx`, and runs it through `crate::engine`. Foreign key layouts never reach this
//! code: `crate::weights` translates them first.

pub mod bench;
pub mod clip;
pub mod controlnet;
pub mod esrgan;
pub mod export;
pub mod sd;
pub mod sd_blocks;
pub mod tiling;
pub mod unet;
pub mod vae;

use crate::engine::EngineError;
use crate::weights::{WeightType, WeightsError};

/// The precision of a compiled graph's weights and arithmetic: f32 for the CPU execution
/// provider (f16 is no faster there, `shared/reference/ort-notes.md` §4), f16 for GPU
/// execution providers. Graphs keep f32 inputs and outputs either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    /// How the weights are stored (and so the element type the graph computes in).
    pub fn weight_type(self) -> WeightType {
        match self {
            Precision::F32 => WeightType::F32,
            Precision::F16 => WeightType::F16,
        }
    }

    /// `""` or `"-fp16"`, for file and cache names.
    pub fn suffix(self) -> &'static str {
        match self {
            Precision::F32 => "",
            Precision::F16 => "-fp16",
        }
    }
}

/// Why a model could not be loaded. The caller can tell apart a file it could not read, a file
/// that is not a usable model (corrupt, unsupported, refused pickle), and a runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file (or the conversion cache) could not be read or written.
    #[error(transparent)]
    Io(WeightsError),
    /// The file is corrupt, of an unsupported layout, or a refused pickle.
    #[error(transparent)]
    Invalid(WeightsError),
    /// ONNX Runtime could not create a session for it.
    #[error(transparent)]
    Runtime(#[from] EngineError),
}

impl From<WeightsError> for ModelError {
    fn from(e: WeightsError) -> ModelError {
        if e.is_io() {
            ModelError::Io(e)
        } else {
            ModelError::Invalid(e)
        }
    }
}
