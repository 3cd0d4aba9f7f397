//! The engine's errors, each one line (the CLI prints them as they are); an ONNX Runtime error
//! that says memory ran out is told apart, for the retry in `fallback.rs`.

use std::path::PathBuf;

use super::fallback::is_out_of_memory;
use super::runtime::one_line;

/// Engine failures. Every `Display` is one line (the CLI prints it as is).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The message is the store's (`store::ort_library::NotFound`), which the installer prints.
    #[error("{}", crate::store::ort_library::NotFound { searched: searched.clone() })]
    RuntimeNotFound { searched: String },
    #[error(
        "cannot use {} as ONNX Runtime: {reason}; run `tessera runtime install` or set TESSERA_ORT_LIB",
        path.display()
    )]
    RuntimeUnusable { path: PathBuf, reason: String },
    #[error(
        "ONNX Runtime {found} at {} is too old (1.{required} or newer is needed); run `tessera runtime install` or set TESSERA_ORT_LIB",
        path.display()
    )]
    RuntimeTooOld {
        path: PathBuf,
        found: String,
        required: u32,
    },
    #[error(
        "ONNX Runtime is already loaded from {} in this process; restart to use {}",
        loaded.display(),
        requested.display()
    )]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },
    /// Session creation or inference failed inside ONNX Runtime.
    #[error("ONNX Runtime failed on {model}: {message}")]
    Ort { model: String, message: String },
    /// A call ran out of memory (on an accelerator the job retries it, see `fallback.rs`).
    #[error(
        "{model} ran out of memory ({message}); lower diffusion.tile_batch or the tile sizes in config.toml"
    )]
    OutOfMemory { model: String, message: String },
}

impl EngineError {
    /// An error of ONNX Runtime about `model`; one that says memory ran out becomes
    /// [`EngineError::OutOfMemory`].
    pub(crate) fn ort(model: &str, e: impl std::fmt::Display) -> EngineError {
        let message = one_line(&e.to_string());
        if is_out_of_memory(&message) {
            EngineError::OutOfMemory {
                model: model.to_owned(),
                message,
            }
        } else {
            EngineError::Ort {
                model: model.to_owned(),
                message,
            }
        }
    }
}
