//! Compiling the text encoder from a model file (with textual-inversion embeddings) and
//! running it.

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView2};

use super::{ClipConfig, ClipOptions, build_graph};
use crate::engine::{CompiledModel, CpuMemory, Engine, EngineError, SharedSession};
use crate::nets::ModelError;
use crate::weights::clip_keys;
use crate::weights::embedding::TextualInversion;
use crate::weights::{self, Patch, SourceFile, SourceTensor, TensorMap, WeightsError};

/// A textual-inversion embedding's place in the compiled graph's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingSlot {
    /// The word that calls it (the file name without extension).
    pub name: String,
    /// Id of its first vector; the others follow.
    pub first_id: i64,
    /// Number of vectors (ids).
    pub len: usize,
}

/// Assigns ids `vocab_size, …` to the embeddings in order and stacks their vectors into the
/// rows appended to the token-embedding table. Every embedding must be `hidden` wide.
pub fn embedding_rows(
    config: &ClipConfig,
    embeddings: &[TextualInversion],
) -> Result<(Vec<EmbeddingSlot>, Option<Array2<f32>>), WeightsError> {
    let mut slots = Vec::with_capacity(embeddings.len());
    let mut next = config.vocab_size as i64;
    for e in embeddings {
        if e.width() != config.hidden {
            return Err(WeightsError::BadShape {
                name: e.name.clone(),
                shape: vec![e.len() as i64, e.width() as i64],
                reason: format!(
                    "this embedding's vectors are {} wide, the text encoder's {}",
                    e.width(),
                    config.hidden
                ),
            });
        }
        slots.push(EmbeddingSlot {
            name: e.name.clone(),
            first_id: next,
            len: e.len(),
        });
        next += e.len() as i64;
    }
    if embeddings.is_empty() {
        return Ok((slots, None));
    }
    let views: Vec<_> = embeddings.iter().map(|e| e.vectors.view()).collect();
    let rows = ndarray::concatenate(ndarray::Axis(0), &views).expect("same width checked above");
    Ok((slots, Some(rows)))
}

/// A text encoder compiled for a session: the graph, its weights, and where the
/// textual-inversion embeddings went.
#[derive(Clone, Debug)]
pub struct CompiledTextEncoder {
    pub config: ClipConfig,
    pub options: ClipOptions,
    pub model: CompiledModel,
    pub embeddings: Vec<EmbeddingSlot>,
}

/// Reads the text encoder of `model` (an SD 1.x single-file checkpoint, a diffusers pipeline
/// or `text_encoder/` folder, or a standalone transformers file) with its canonical tensors,
/// configuration and source file. The first step of [`compile`]; a LoRA fusion starts here,
/// rewrites the tensors and goes on with [`compile_weights`].
pub fn open(
    model: &Path,
) -> Result<(SourceFile, TensorMap<SourceTensor>, ClipConfig), WeightsError> {
    let located = clip_keys::locate(model)?;
    let source = SourceFile::open(&located.file)?;
    let (canonical, layout) = clip_keys::canonicalize(&source)?;
    let config = ClipConfig::from_weights(&canonical, layout, located.config.as_ref())?;
    Ok((source, canonical, config))
}

/// Everything short of a session: reads `model` (see [`open`]), places its weights (in place,
/// or converted into `cache_dir`), appends `embeddings` to the vocabulary, builds the graph.
pub fn compile(
    model: &Path,
    embeddings: &[TextualInversion],
    options: &ClipOptions,
    cache_dir: &Path,
) -> Result<CompiledTextEncoder, ModelError> {
    compile_patched(model, embeddings, options, cache_dir, None)
}

/// [`compile`] with `patch` (the fused `lora_te_*` LoRAs) applied to the canonical
/// `text_model.*` tensors while they are written into `cache_dir`; the cache entry is keyed by
/// the patch's fingerprint, so the same LoRAs and multipliers reuse it.
pub fn compile_patched(
    model: &Path,
    embeddings: &[TextualInversion],
    options: &ClipOptions,
    cache_dir: &Path,
    patch: Option<&dyn Patch>,
) -> Result<CompiledTextEncoder, ModelError> {
    let (source, canonical, config) = open(model)?;
    let target = weights::Target {
        network: "clip",
        weight_type: options.precision.weight_type(),
        patch,
    };
    let weights = weights::materialize_as(&source, &canonical, cache_dir, target)?;
    let name = model
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    compile_weights(&config, &weights, embeddings, options, &name)
}

/// Builds the graph over weights that are already placed (e.g. LoRA-fused ones, in the dtype
/// of `options.precision`); `name` is for logs and errors.
pub fn compile_weights(
    config: &ClipConfig,
    weights: &weights::Weights,
    embeddings: &[TextualInversion],
    options: &ClipOptions,
    name: &str,
) -> Result<CompiledTextEncoder, ModelError> {
    let (slots, rows) = embedding_rows(config, embeddings)?;
    let graph = build_graph(config, weights, options, rows.as_ref())?;
    tracing::debug!(
        ?config,
        ?options,
        nodes = graph.node_count(),
        embeddings = slots.len(),
        "CLIP text encoder graph built"
    );
    Ok(CompiledTextEncoder {
        config: config.clone(),
        options: *options,
        model: CompiledModel {
            name: format!(
                "CLIP text encoder {name}{}",
                options.precision.label_suffix()
            ),
            onnx: graph.to_bytes(),
            weights_folder: weights.folder().to_owned(),
            weight_files: vec![weights.file().to_owned()],
            cpu_memory: CpuMemory::Heap,
        },
        embeddings: slots,
    })
}

/// A loaded text encoder with its warm session (unless set aside, see
/// [`TextEncoder::set_aside`]).
pub struct TextEncoder {
    compiled: CompiledTextEncoder,
    session: Option<SharedSession>,
}

impl TextEncoder {
    /// [`compile`] plus a session from `engine`.
    pub fn load(
        engine: &Engine,
        model: &Path,
        embeddings: &[TextualInversion],
        options: &ClipOptions,
        cache_dir: &Path,
    ) -> Result<TextEncoder, ModelError> {
        TextEncoder::from_compiled(engine, compile(model, embeddings, options, cache_dir)?)
    }

    /// A session for an already compiled encoder (e.g. one built by [`compile_weights`]).
    pub fn from_compiled(
        engine: &Engine,
        compiled: CompiledTextEncoder,
    ) -> Result<TextEncoder, ModelError> {
        let session = engine.session(&compiled.model)?;
        Ok(TextEncoder {
            compiled,
            session: Some(session),
        })
    }

    /// Lets the session go, out of `engine`'s cache too: a large job that has its prompts'
    /// conditionings needs the memory (half a gigabyte for SD 1.5's encoder in f32) more than
    /// it needs the encoder. [`TextEncoder::warm`] brings it back.
    pub fn set_aside(&mut self, engine: &Engine) {
        if self.session.take().is_some() {
            engine.forget(&self.compiled.model);
        }
    }

    /// Creates the session again if it was set aside (from the cache when it is still there).
    pub fn warm(&mut self, engine: &Engine) -> Result<(), EngineError> {
        if self.session.is_none() {
            self.session = Some(engine.session(&self.compiled.model)?);
        }
        Ok(())
    }

    /// Whether the session is held (not set aside).
    pub fn is_warm(&self) -> bool {
        self.session.is_some()
    }

    pub fn config(&self) -> &ClipConfig {
        &self.compiled.config
    }

    pub fn compiled(&self) -> &CompiledTextEncoder {
        &self.compiled
    }

    /// Where each textual-inversion embedding sits in the vocabulary (for the prompt parser).
    pub fn embeddings(&self) -> &[EmbeddingSlot] {
        &self.compiled.embeddings
    }

    /// Encodes `[batch, 77]` token ids into `last_hidden_state` `[batch, 77, C]`. Ids must be
    /// below the vocabulary size plus the embeddings' vectors.
    pub fn encode(&mut self, ids: ArrayView2<i64>) -> Result<Array3<f32>, EngineError> {
        Ok(self.run(ids)?.0)
    }

    /// [`TextEncoder::encode`] plus `pooler_output` `[batch, C]`.
    pub fn run(&mut self, ids: ArrayView2<i64>) -> Result<(Array3<f32>, Array2<f32>), EngineError> {
        let name = &self.compiled.model.name;
        let config = &self.compiled.config;
        let limit = config.vocab_size as i64
            + self
                .compiled
                .embeddings
                .iter()
                .map(|e| e.len as i64)
                .sum::<i64>();
        let (batch, len) = ids.dim();
        if len != config.positions || batch == 0 {
            return Err(EngineError::ort(
                name,
                format!(
                    "input_ids must be [batch ≥ 1, {}], got [{batch}, {len}]",
                    config.positions
                ),
            ));
        }
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= limit) {
            return Err(EngineError::ort(
                name,
                format!("token id {bad} is outside the vocabulary (0..{limit})"),
            ));
        }
        let input = ids.as_standard_layout();
        let tensor = ort::value::TensorRef::from_array_view(input.view())
            .map_err(|e| EngineError::ort(name, e))?;
        let session = self.session.as_ref().ok_or_else(|| {
            EngineError::ort(name, "the session was set aside and not warmed again")
        })?;
        let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs!["input_ids" => tensor])
            .map_err(|e| EngineError::ort(name, e))?;
        let c = config.hidden;
        let last = outputs["last_hidden_state"]
            .try_extract_array::<f32>()
            .map_err(|e| EngineError::ort(name, e))?
            .to_owned()
            .into_shape_with_order((batch, len, c))
            .map_err(|e| EngineError::ort(name, e))?;
        let pooled = outputs["pooler_output"]
            .try_extract_array::<f32>()
            .map_err(|e| EngineError::ort(name, e))?
            .to_owned()
            .into_shape_with_order((batch, c))
            .map_err(|e| EngineError::ort(name, e))?;
        crate::engine::binding::note_host_call(8 * ids.len(), 4 * (last.len() + pooled.len()));
        Ok((last, pooled))
    }
}
