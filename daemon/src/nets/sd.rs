//! What the Stable Diffusion networks (`unet`, `controlnet`, `vae`) share: how they are
//! compiled (weights placed, graphs built) and how a session of theirs is run.
//!
//! Every SD graph has f32 inputs and outputs with the diffusers/Optimum names (see
//! `docs/models.md`); `WeightType::F16` graphs keep that interface and compute in f16.

use std::borrow::Cow;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD};
use ort::session::SessionInputValue;

use super::ModelError;
pub use super::Precision;
use crate::engine::binding;
use crate::engine::{CompiledModel, CpuMemory, EngineError, SharedSession};
use crate::onnx::Graph;
use crate::weights::sd::{DiffusersConfig, NetWeights};
use crate::weights::{self, Patch, Target, Weights};

/// How to compile an SD network.
#[derive(Clone, Copy, Default)]
pub struct SdOptions<'a> {
    /// f32 for the CPU; f16 for GPU execution providers.
    pub precision: Precision,
    /// What shapes cannot tell (heads, GroupNorm groups), declared as a diffusers
    /// `config.json` would (tiny test models); each declared field wins over the `config.json`
    /// beside the weights, and what neither declares is SD 1.5's.
    pub config: Option<DiffusersConfig>,
    /// Applied while the weights are converted (fused LoRAs).
    pub patch: Option<&'a dyn Patch>,
}

impl SdOptions<'_> {
    /// What is declared about `net` beyond its shapes: these options' fields, else its
    /// `config.json`'s.
    pub fn declared(&self, net: &NetWeights) -> DiffusersConfig {
        net.declared(self.config)
    }
}

/// Places `net`'s weights for ONNX Runtime (in place, or converted/patched into `cache_dir`).
pub fn prepare(
    net: &NetWeights,
    network: &str,
    cache_dir: &Path,
    options: &SdOptions<'_>,
) -> Result<Weights, ModelError> {
    let cache_name = format!("{network}{}", options.precision.suffix());
    let weights = weights::materialize_as(
        &net.source,
        &net.tensors,
        cache_dir,
        Target {
            network: &cache_name,
            weight_type: options.precision.weight_type(),
            patch: options.patch,
        },
    )?;
    Ok(weights)
}

/// A built graph with its weights as the engine takes it; an fp16 graph's name says so.
pub fn compiled(name: String, graph: Graph, weights: &Weights) -> CompiledModel {
    let precision = match weights.weight_type() {
        weights::WeightType::F16 => Precision::F16,
        weights::WeightType::F32 => Precision::F32,
    };
    CompiledModel {
        name: format!("{name}{}", precision.label_suffix()),
        onnx: graph.to_bytes(),
        weights_folder: weights.folder().to_owned(),
        weight_files: vec![weights.file().to_owned()],
        cpu_memory: CpuMemory::Heap,
    }
}

/// Runs `session` on named f32 inputs and returns the named f32 outputs.
pub fn run(
    session: &SharedSession,
    model: &str,
    inputs: &[(&str, ArrayViewD<'_, f32>)],
    outputs: &[&str],
) -> Result<Vec<ArrayD<f32>>, EngineError> {
    let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, array) in inputs {
        let tensor = ort::value::TensorRef::from_array_view(array.view())
            .map_err(|e| EngineError::ort(model, e))?;
        values.push((Cow::Borrowed(*name), tensor.into()));
    }
    let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
    let result = session
        .run(values)
        .map_err(|e| EngineError::ort(model, e))?;
    let arrays = outputs
        .iter()
        .map(|name| {
            let value = result.get(*name).ok_or_else(|| {
                EngineError::ort(model, format!("the graph has no output `{name}`"))
            })?;
            Ok(value
                .try_extract_array::<f32>()
                .map_err(|e| EngineError::ort(model, e))?
                .to_owned())
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    binding::note_host_call(
        4 * inputs.iter().map(|(_, a)| a.len()).sum::<usize>(),
        4 * arrays.iter().map(|a| a.len()).sum::<usize>(),
    );
    Ok(arrays)
}
