//! CLIP text-encoder key layouts, translated once into the canonical naming used by
//! `nets::clip`.
//!
//! Canonical names are Hugging Face transformers' `CLIPTextModel` names as they are stored on
//! disk by every SD 1.x release (with the `text_model.` prefix):
//!
//! - `text_model.embeddings.token_embedding.weight` `[vocab, C]`,
//!   `text_model.embeddings.position_embedding.weight` `[positions, C]`;
//! - per layer `text_model.encoder.layers.{i}.` + `layer_norm1`, `self_attn.{q,k,v,out}_proj`,
//!   `layer_norm2`, `mlp.fc1`, `mlp.fc2` (each `.weight` and `.bias`);
//! - `text_model.final_layer_norm.{weight,bias}`.
//!
//! | layout | where it is met | keys | translation |
//! |---|---|---|---|
//! | LDM single file | Civitai / A1111 checkpoints (`juggernaut_reborn.safetensors`) | `cond_stage_model.transformer.text_model.*` beside `model.diffusion_model.*` and `first_stage_model.*` | prefix removed, everything else ignored |
//! | transformers | diffusers `text_encoder/` folders, standalone text-encoder files, whole `CLIPModel`s | `text_model.*` (`vision_model.*`, projections and `logit_scale` of a full CLIP are ignored) | none |
//! | transformers ≥ 5.6 | files saved by a current `CLIPTextModel.save_pretrained`, which flattened the module | `embeddings.*`, `encoder.*`, `final_layer_norm.*` | `text_model.` added |
//!
//! The `position_ids` buffer that older files carry (sometimes as floats that merges have
//! smeared to non-integers) is dropped: positions are always `0..77`, as diffusers does.
//! Text encoders of other model families are recognised and refused with a message naming
//! them: SD 2.x (OpenCLIP under `cond_stage_model.model.`), SDXL (`conditioner.embedders.`),
//! SD 3 (`text_encoders.`), and LoRA files given as a checkpoint.

use std::path::{Path, PathBuf};

use super::{SourceFile, SourceTensor, TensorMap, WeightsError};

/// The prefix of the text encoder inside an LDM single-file checkpoint.
pub const LDM_PREFIX: &str = "cond_stage_model.transformer.";
/// The prefix of every canonical name.
pub const CANONICAL_PREFIX: &str = "text_model.";

/// Which key layout a file used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `cond_stage_model.transformer.text_model.*` inside a whole SD checkpoint.
    LdmSingleFile,
    /// `text_model.*`: diffusers `text_encoder/`, transformers before 5.6.
    Transformers,
    /// `embeddings.*`, `encoder.*`, `final_layer_norm.*`: transformers 5.6 and later.
    TransformersFlat,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::LdmSingleFile => "LDM single-file checkpoint (cond_stage_model.transformer)",
            Layout::Transformers => "transformers CLIPTextModel (text_model.*)",
            Layout::TransformersFlat => "transformers CLIPTextModel, flattened (embeddings.*)",
        }
    }
}

/// Settings of a diffusers/transformers `config.json` that shapes cannot tell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FolderConfig {
    pub num_attention_heads: Option<usize>,
    pub hidden_act: Option<String>,
    pub layer_norm_eps: Option<f64>,
}

/// Where a text encoder's weights are, and the folder config beside them (if any).
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub file: PathBuf,
    pub config: Option<FolderConfig>,
}

/// Weight files of a transformers model folder, in order of preference (full precision first,
/// safetensors before pickles).
const FOLDER_FILES: [&str; 4] = [
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
    "pytorch_model.fp16.bin",
];

/// Finds the text encoder of `path`: a weight file (single-file checkpoint or standalone text
/// encoder) is used as is; a diffusers pipeline folder is searched in `text_encoder/`; a
/// `text_encoder/` folder itself works too. `config.json` beside the weights is read when
/// present.
pub fn locate(path: &Path) -> Result<Located, WeightsError> {
    if !path.is_dir() {
        return Ok(Located {
            file: path.to_owned(),
            config: None,
        });
    }
    let folder = if path.join("text_encoder").is_dir() {
        path.join("text_encoder")
    } else {
        path.to_owned()
    };
    let Some(file) = FOLDER_FILES
        .iter()
        .map(|f| folder.join(f))
        .find(|f| f.is_file())
    else {
        return Err(WeightsError::UnknownLayout {
            path: path.to_owned(),
            network: "CLIP text encoder",
            found: format!(
                "a folder without text-encoder weights (looked for {} in {})",
                FOLDER_FILES.join(", "),
                folder.display()
            ),
        });
    };
    let config_path = folder.join("config.json");
    let config = if config_path.is_file() {
        Some(read_config(&config_path)?)
    } else {
        None
    };
    Ok(Located { file, config })
}

fn read_config(path: &Path) -> Result<FolderConfig, WeightsError> {
    let bytes = std::fs::read(path).map_err(|e| WeightsError::io(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| WeightsError::corrupt(path, format!("not valid JSON: {e}")))?;
    // A full CLIPModel config keeps the text settings under `text_config`.
    let text = json.get("text_config").unwrap_or(&json);
    Ok(FolderConfig {
        num_attention_heads: text
            .get("num_attention_heads")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize),
        hidden_act: text
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        layer_norm_eps: text.get("layer_norm_eps").and_then(|v| v.as_f64()),
    })
}

/// Recognises the layout of `source` and renames its text-encoder tensors to the canonical
/// names; tensors of other networks in the same file are left out.
pub fn canonicalize(
    source: &SourceFile,
) -> Result<(TensorMap<SourceTensor>, Layout), WeightsError> {
    let tensors = source.tensors();
    let unknown = |found: String| WeightsError::UnknownLayout {
        path: source.path().to_owned(),
        network: "SD 1.x CLIP text encoder",
        found,
    };
    let has_prefix = |p: &str| tensors.keys().any(|k| k.starts_with(p));

    let (layout, selected): (Layout, Vec<(String, &SourceTensor)>) = if has_prefix(LDM_PREFIX) {
        let picked = tensors
            .iter()
            .filter_map(|(k, t)| {
                let rest = k.strip_prefix(LDM_PREFIX)?;
                let name = if rest.starts_with(CANONICAL_PREFIX) {
                    rest.to_owned()
                } else {
                    format!("{CANONICAL_PREFIX}{rest}")
                };
                Some((name, t))
            })
            .collect();
        (Layout::LdmSingleFile, picked)
    } else if tensors.contains("text_model.embeddings.token_embedding.weight") {
        let picked = tensors
            .iter()
            .filter(|(k, _)| k.starts_with(CANONICAL_PREFIX))
            .map(|(k, t)| (k.to_owned(), t))
            .collect();
        (Layout::Transformers, picked)
    } else if tensors.contains("embeddings.token_embedding.weight") {
        let picked = tensors
            .iter()
            .map(|(k, t)| (format!("{CANONICAL_PREFIX}{k}"), t))
            .collect();
        (Layout::TransformersFlat, picked)
    } else {
        return Err(unknown(identify_other(tensors)));
    };

    let mut out = TensorMap::new();
    for (name, t) in selected {
        if name.ends_with(".position_ids") {
            continue;
        }
        if !is_canonical(&name) {
            return Err(unknown(format!(
                "unexpected tensor `{name}` in the {} layout",
                layout.describe()
            )));
        }
        if out.insert(name.clone(), t.clone()).is_some() {
            return Err(unknown(format!("two tensors map to `{name}`")));
        }
    }
    Ok((out, layout))
}

/// A one-line description of a file that holds no SD 1.x text encoder.
fn identify_other(tensors: &TensorMap<SourceTensor>) -> String {
    let has = |p: &str| tensors.keys().any(|k| k.starts_with(p));
    if has("cond_stage_model.model.") {
        "this is an SD 2.x checkpoint (OpenCLIP ViT-H text encoder), not SD 1.x".into()
    } else if has("conditioner.embedders.") {
        "this is an SDXL checkpoint, not SD 1.x".into()
    } else if has("text_encoders.") {
        "this is an SD 3 checkpoint, not SD 1.x".into()
    } else if has("lora_te") || has("lora_unet") || tensors.keys().any(|k| k.contains(".lora_")) {
        "this is a LoRA, not a checkpoint".into()
    } else if has("model.diffusion_model.") {
        "the checkpoint has a UNet but no text encoder (cond_stage_model.transformer.*)".into()
    } else {
        format!("no CLIP text-encoder keys ({})", tensors.describe())
    }
}

/// Whether `name` is a canonical `CLIPTextModel` parameter name.
pub fn is_canonical(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(CANONICAL_PREFIX) else {
        return false;
    };
    let Some((module, kind)) = rest.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = module.split('.').collect();
    match parts.as_slice() {
        ["embeddings", "token_embedding" | "position_embedding"] => kind == "weight",
        ["final_layer_norm"] => matches!(kind, "weight" | "bias"),
        ["encoder", "layers", i, rest @ ..] => {
            is_number(i)
                && matches!(kind, "weight" | "bias")
                && matches!(
                    rest,
                    ["layer_norm1" | "layer_norm2"]
                        | ["self_attn", "q_proj" | "k_proj" | "v_proj" | "out_proj"]
                        | ["mlp", "fc1" | "fc2"]
                )
        }
        _ => false,
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() < 6 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        for ok in [
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.position_embedding.weight",
            "text_model.encoder.layers.11.self_attn.out_proj.bias",
            "text_model.encoder.layers.0.layer_norm1.weight",
            "text_model.encoder.layers.3.mlp.fc2.weight",
            "text_model.final_layer_norm.bias",
        ] {
            assert!(is_canonical(ok), "{ok}");
        }
        for bad in [
            "text_model.embeddings.position_ids",
            "text_model.embeddings.token_embedding.bias",
            "text_model.encoder.layers.x.mlp.fc1.weight",
            "text_model.encoder.layers.0.mlp.fc3.weight",
            "text_model.encoder.layers.0.self_attn.qkv_proj.weight",
            "encoder.layers.0.mlp.fc1.weight",
            "text_projection.weight",
        ] {
            assert!(!is_canonical(bad), "{bad}");
        }
    }
}
