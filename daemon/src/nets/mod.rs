//! The neural networks, one file each, written as ONNX graphs over canonical weights.
//!
//! Each network is written the same way: a config struct (`UnetConfig`, `VaeConfig`,
//! `ControlNetConfig`, `ClipConfig`, `EsrganConfig`) with its reference model's values as a named
//! constructor and a `from_weights` that reads a checkpoint's from its tensor shapes once; then a
//! `build_graph` that walks the config with a [`builder::NetBuilder`] (the one place where
//! values cross between f32 and the compute type) and hands each layer its module's weights as
//! a scope. The graphs run through `crate::engine`. Foreign key layouts never reach this code:
//! `crate::weights` translates them first.

#[cfg(feature = "dev")]
pub mod bench;
pub mod builder;
pub mod clip;
#[cfg(test)]
mod config_tests;
pub mod controlnet;
pub mod esrgan;
pub mod export;
pub mod precision;
pub mod sd;
pub mod sd_blocks;
pub mod tiling;
pub mod unet;
pub mod vae;

pub use precision::{Precision, PrecisionSetting, Precisions};

use crate::engine::EngineError;
use crate::weights::WeightsError;

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
