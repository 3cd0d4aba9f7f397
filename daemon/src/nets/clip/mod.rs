//! CLIP ViT-L/14 text encoder (Radford et al., 2021), the text side of Stable Diffusion 1.x.
//!
//! A pre-norm transformer over 77 token positions:
//!
//! ```text
//! h = token_embedding[input_ids] + position_embedding[0..77]
//! for each layer:  h += out_proj(causal_self_attention(layer_norm1(h)))
//!                  h += fc2(quick_gelu(fc1(layer_norm2(h))))        quick_gelu(x) = x·σ(1.702x)
//! last_hidden_state = final_layer_norm(h)
//! ```
//!
//! [`ClipConfig::vit_l14`] (also its `Default`) is SD 1.x's text encoder;
//! [`ClipConfig::from_weights`] reads a file's from the canonical tensors' shapes once (see
//! `crate::weights::clip_keys`): width and vocabulary from the token embedding, sequence length
//! from the position embedding, depth from `encoder.layers.N`, MLP width from `fc1`. The head
//! count is the one number shapes cannot tell: a folder's `config.json` gives it, otherwise
//! CLIP's head width of 64 is assumed (12 heads for SD 1.x's 768).
//!
//! **CLIP skip** k (A1111's "Clip skip", default 1) stops after layer n−k+1 of n and applies the
//! final layer norm to that layer's output, exactly as A1111 does for SD 1.x
//! (`hidden_states[-k]` then `final_layer_norm`); k = 1 is the full model. diffusers' `clip_skip`
//! counts one less (its 1 is A1111's 2).
//!
//! **Textual inversion**: embedding vectors become extra rows of the token-embedding table,
//! called by ids `vocab, vocab+1, …` (49408… for SD 1.x) in the order the embeddings are given.
//! The rows are small and are embedded in the model itself.
//!
//! Graph interface: `input_ids` int64 `[batch, 77]` → `last_hidden_state` f32
//! `[batch, 77, C]` and `pooler_output` f32 `[batch, C]` (the `last_hidden_state` row at the first
//! end-of-text token, which is transformers' pooler for SD's tokenizer). The fp16 variant keeps
//! this f32 interface: weights and every op inside are fp16, with a Cast at the output.
//! Attention is one `com.microsoft.MultiHeadAttention` per layer with `unidirectional = 1` (the
//! causal mask); the linear layers run on the flattened `[batch·77, C]` rows as `Gemm` with the
//! weights used as stored (`transB`), so nothing is transposed at load.
//!
//! Files: this one (hyper-parameters and options), `graph.rs` (the ONNX graph), `encoder.rs`
//! (compiling from a model file, textual-inversion slots, running).

mod encoder;
mod graph;

pub use encoder::{
    CompiledTextEncoder, EmbeddingSlot, TextEncoder, compile, compile_patched, compile_weights,
    embedding_rows, open,
};
pub use graph::build_graph;

use super::Precision;
use crate::weights::clip_keys::{self, FolderConfig, Layout};
use crate::weights::{SourceTensor, TensorMap, WeightsError};

/// Head width of every CLIP text tower (ViT-B/L/H/bigG), used when no config gives the heads.
const CLIP_HEAD_WIDTH: usize = 64;

/// The MLP's non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x·σ(1.702x)`: OpenAI CLIP, hence SD 1.x.
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP models converted to transformers.
    Gelu,
}

/// The text encoder's configuration, the fields of a transformers `CLIPTextConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub layout: Layout,
    /// Rows of the token embedding in the file (49408 for SD 1.x); textual-inversion ids start
    /// here.
    pub vocab_size: usize,
    /// Model width C (768).
    pub hidden: usize,
    /// Sequence length (77), the rows of the position embedding.
    pub positions: usize,
    /// Transformer layers (12).
    pub layers: usize,
    /// MLP width (3072).
    pub intermediate: usize,
    /// Attention heads (12).
    pub heads: usize,
    pub activation: Activation,
    pub layer_norm_eps: f32,
}

impl Default for ClipConfig {
    fn default() -> ClipConfig {
        ClipConfig::vit_l14()
    }
}

impl ClipConfig {
    /// OpenAI CLIP ViT-L/14's text tower, SD 1.x's text encoder (diffusers `text_encoder/`).
    pub fn vit_l14() -> ClipConfig {
        ClipConfig {
            layout: Layout::Transformers,
            vocab_size: 49408,
            hidden: 768,
            positions: 77,
            layers: 12,
            intermediate: 3072,
            heads: 12,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// `<|startoftext|>`: the second-to-last id of a CLIP vocabulary.
    pub fn bos_id(&self) -> i64 {
        self.vocab_size as i64 - 2
    }

    /// `<|endoftext|>`, also SD 1.x's padding: the last id of a CLIP vocabulary.
    pub fn eos_id(&self) -> i64 {
        self.vocab_size as i64 - 1
    }

    /// Reads every hyper-parameter from the canonical tensors' shapes (and `folder` for what
    /// shapes cannot tell), then checks every tensor's shape and that none is left over.
    pub fn from_weights(
        w: &TensorMap<SourceTensor>,
        layout: Layout,
        folder: Option<&FolderConfig>,
    ) -> Result<ClipConfig, WeightsError> {
        let root = w.scope("text_model");
        let token = &root.get("embeddings.token_embedding.weight")?.shape;
        let [vocab_size, hidden] = token[..] else {
            return Err(bad(
                w,
                "text_model.embeddings.token_embedding.weight",
                "expected [vocab, width]",
            ));
        };
        let position = &root.get("embeddings.position_embedding.weight")?.shape;
        let positions = position.first().copied().unwrap_or(0);
        let layers = root.scope("encoder").scope("layers").count_indexed();
        if layers == 0 {
            return Err(WeightsError::Missing {
                name: "text_model.encoder.layers.0".into(),
            });
        }
        let intermediate = root
            .get("encoder.layers.0.mlp.fc1.weight")?
            .shape
            .first()
            .copied()
            .unwrap_or(0);
        let folder = folder.cloned().unwrap_or_default();
        let heads = match folder.num_attention_heads {
            Some(h) => h,
            None if hidden % CLIP_HEAD_WIDTH == 0 => hidden / CLIP_HEAD_WIDTH,
            None => {
                return Err(bad(
                    w,
                    "text_model.embeddings.token_embedding.weight",
                    &format!(
                        "width {hidden} is no multiple of CLIP's head width {CLIP_HEAD_WIDTH}, and no config.json gives the head count"
                    ),
                ));
            }
        };
        if heads == 0 || hidden % heads != 0 {
            return Err(bad(
                w,
                "text_model.embeddings.token_embedding.weight",
                &format!("width {hidden} does not split into {heads} heads"),
            ));
        }
        let activation = match folder.hidden_act.as_deref() {
            None | Some("quick_gelu") => Activation::QuickGelu,
            Some("gelu") => Activation::Gelu,
            Some(other) => {
                return Err(WeightsError::Unsupported {
                    path: "config.json".into(),
                    reason: format!("text-encoder activation `{other}`"),
                });
            }
        };
        if vocab_size < 3 || hidden == 0 || positions == 0 || intermediate == 0 {
            return Err(bad(
                w,
                "text_model.embeddings.token_embedding.weight",
                "empty dimensions",
            ));
        }
        let config = ClipConfig {
            layout,
            vocab_size,
            hidden,
            positions,
            layers,
            intermediate,
            heads,
            activation,
            layer_norm_eps: folder.layer_norm_eps.unwrap_or(1e-5) as f32,
        };
        config.check_shapes(w)?;
        Ok(config)
    }

    fn check_shapes(&self, w: &TensorMap<SourceTensor>) -> Result<(), WeightsError> {
        let (c, i) = (self.hidden, self.intermediate);
        let mut expected: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.token_embedding.weight".into(),
                vec![self.vocab_size, c],
            ),
            (
                "embeddings.position_embedding.weight".into(),
                vec![self.positions, c],
            ),
            ("final_layer_norm.weight".into(), vec![c]),
            ("final_layer_norm.bias".into(), vec![c]),
        ];
        for l in 0..self.layers {
            let p = format!("encoder.layers.{l}.");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                expected.push((format!("{p}self_attn.{proj}.weight"), vec![c, c]));
                expected.push((format!("{p}self_attn.{proj}.bias"), vec![c]));
            }
            for norm in ["layer_norm1", "layer_norm2"] {
                expected.push((format!("{p}{norm}.weight"), vec![c]));
                expected.push((format!("{p}{norm}.bias"), vec![c]));
            }
            expected.push((format!("{p}mlp.fc1.weight"), vec![i, c]));
            expected.push((format!("{p}mlp.fc1.bias"), vec![i]));
            expected.push((format!("{p}mlp.fc2.weight"), vec![c, i]));
            expected.push((format!("{p}mlp.fc2.bias"), vec![c]));
        }
        for (name, shape) in &expected {
            let full = format!("{}{name}", clip_keys::CANONICAL_PREFIX);
            let t = w.root().get(&full)?;
            if t.shape != *shape {
                return Err(bad(w, &full, &format!("expected {shape:?}")));
            }
            if !t.dtype.is_float() {
                return Err(bad(w, &full, "integer weights"));
            }
        }
        if w.len() != expected.len() {
            let known: std::collections::HashSet<String> = expected
                .iter()
                .map(|(n, _)| format!("{}{n}", clip_keys::CANONICAL_PREFIX))
                .collect();
            let extra = w.keys().find(|k| !known.contains(*k)).unwrap_or_default();
            return Err(bad(
                w,
                extra,
                "not part of a CLIP text encoder with these dimensions",
            ));
        }
        Ok(())
    }
}

fn bad(w: &TensorMap<SourceTensor>, name: &str, reason: &str) -> WeightsError {
    WeightsError::BadShape {
        name: name.to_owned(),
        shape: w
            .get(name)
            .map(|t| t.shape.iter().map(|&d| d as i64).collect())
            .unwrap_or_default(),
        reason: reason.to_owned(),
    }
}

/// Graph-building choices that are not properties of the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClipOptions {
    /// A1111's "Clip skip": 1 uses the last layer, 2 the one before it, … (≥ 1).
    pub clip_skip: usize,
    pub precision: Precision,
}

impl Default for ClipOptions {
    fn default() -> ClipOptions {
        ClipOptions {
            clip_skip: 1,
            precision: Precision::F32,
        }
    }
}
