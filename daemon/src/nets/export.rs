//! `tessera models export-onnx`: the compiled SD graphs written out as standard `.onnx` files
//! with their weights beside them, for Netron, onnxruntime in Python, or Triton.
//!
//! The graphs are exactly the ones the engine runs: each network is compiled as for a session
//! (layout translated, LoRAs fused, converted to the precision), its weights are copied into
//! `<network>.safetensors` in the output folder, and its graphs are rebuilt over that copy so
//! every external-data `location` is the file beside them.
//!
//! | file | graph |
//! |---|---|
//! | `unet.onnx`, `unet_controlnet.onnx` + `unet.safetensors` | UNet without / with the 13 residual inputs |
//! | `vae_encoder.onnx`, `vae_decoder.onnx` + `vae.safetensors` | VAE |
//! | `controlnet.onnx`, `controlnet_cond_encoder.onnx`, `controlnet_body.onnx` + `controlnet.safetensors` | ControlNet (when given) |
//! | `text_encoder.onnx` + `text_encoder.safetensors` | CLIP text encoder (`nets::clip`), LoRAs fused, embeddings appended to its vocabulary |

use std::path::{Path, PathBuf};

use super::ModelError;
use super::clip::{self, ClipOptions};
use super::controlnet::CompiledControlNet;
use super::sd::{Precision, SdOptions};
use super::unet::CompiledUnet;
use super::vae::CompiledVae;
use crate::engine::CompiledModel;
use crate::weights::embedding::TextualInversion;
use crate::weights::lora::{Lora, LoraPatch, LoraTarget};
use crate::weights::sd::{self, DiffusersConfig};
use crate::weights::{Patch, WeightsError};

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Single-file checkpoint or diffusers folder.
    pub checkpoint: PathBuf,
    /// A VAE to use instead of the checkpoint's.
    pub vae: Option<PathBuf>,
    pub controlnet: Option<PathBuf>,
    /// LoRA files with their multiplier (applied to UNet and text encoder alike).
    pub loras: Vec<(PathBuf, f32)>,
    /// Textual-inversion embeddings (text encoder only).
    pub embeddings: Vec<PathBuf>,
    pub precision: Precision,
    /// Heads and GroupNorm groups when not SD 1.5's (tiny test models), as a diffusers
    /// `config.json` would declare them.
    pub config: Option<DiffusersConfig>,
    /// Leave the text encoder out.
    pub skip_text_encoder: bool,
    pub out_dir: PathBuf,
    /// Where converted and LoRA-fused weights are cached on the way.
    pub cache_dir: PathBuf,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Embeddings only make sense with the text encoder.
    #[error("--embedding needs the text encoder; drop --no-text-encoder")]
    EmbeddingsWithoutTextEncoder,
}

impl From<WeightsError> for ExportError {
    fn from(e: WeightsError) -> ExportError {
        ExportError::Model(e.into())
    }
}

/// Writes the graphs; returns the files written.
pub fn export(options: &ExportOptions) -> Result<Vec<PathBuf>, ExportError> {
    let out = &options.out_dir;
    if options.skip_text_encoder && !options.embeddings.is_empty() {
        return Err(ExportError::EmbeddingsWithoutTextEncoder);
    }
    std::fs::create_dir_all(out).map_err(|source| ExportError::Write {
        path: out.clone(),
        source,
    })?;
    let loras = options
        .loras
        .iter()
        .map(|(path, m)| Ok((Lora::open(path)?, *m)))
        .collect::<Result<Vec<_>, WeightsError>>()?;
    let lora_refs: Vec<(&Lora, f32)> = loras.iter().map(|(l, m)| (l, *m)).collect();
    let mut written = Vec::new();
    let plain = SdOptions {
        precision: options.precision,
        config: options.config,
        patch: None,
    };

    let unet_net = sd::unet(&options.checkpoint)?;
    let patch = LoraPatch::resolve(&lora_refs, LoraTarget::Unet, &unet_net.tensors)?;
    let patch = (!lora_refs.is_empty()).then_some(&patch as &dyn Patch);
    let unet = CompiledUnet::compile(&unet_net, &options.cache_dir, &SdOptions { patch, ..plain })?;
    let weights = copy_weights(&unet.weights, out, "unet")?;
    let unet = CompiledUnet::build(
        unet.config,
        weights,
        options.precision.weight_type(),
        &unet_net,
    )?;
    written.push(unet.weights.file().to_owned());
    written.push(write_onnx(out, "unet", &unet.plain)?);
    written.push(write_onnx(out, "unet_controlnet", &unet.controlled)?);

    let vae_net = sd::vae(options.vae.as_deref().unwrap_or(&options.checkpoint))?;
    let vae = CompiledVae::compile(&vae_net, &options.cache_dir, &plain)?;
    let weights = copy_weights(&vae.weights, out, "vae")?;
    let vae = CompiledVae::build(
        vae.config,
        weights,
        options.precision.weight_type(),
        &vae_net,
    )?;
    written.push(vae.weights.file().to_owned());
    written.push(write_onnx(out, "vae_encoder", &vae.encoder)?);
    written.push(write_onnx(out, "vae_decoder", &vae.decoder)?);

    if let Some(path) = &options.controlnet {
        let net = sd::controlnet(path)?;
        let cn = CompiledControlNet::compile(&net, &options.cache_dir, &plain)?;
        let weights = copy_weights(&cn.weights, out, "controlnet")?;
        let cn =
            CompiledControlNet::build(cn.config, weights, options.precision.weight_type(), &net)?;
        written.push(cn.weights.file().to_owned());
        written.push(write_onnx(out, "controlnet", &cn.full)?);
        written.push(write_onnx(
            out,
            "controlnet_cond_encoder",
            &cn.cond_encoder,
        )?);
        written.push(write_onnx(out, "controlnet_body", &cn.body)?);
    }

    if options.skip_text_encoder {
        return Ok(written);
    }
    let embeddings = options
        .embeddings
        .iter()
        .map(|p| TextualInversion::load(p))
        .collect::<Result<Vec<_>, WeightsError>>()?;
    let (source, canonical, config) = clip::open(&options.checkpoint)?;
    let patch = LoraPatch::resolve(&lora_refs, LoraTarget::TextEncoder, &canonical)?;
    let patch = (!lora_refs.is_empty()).then_some(&patch as &dyn Patch);
    let placed = crate::weights::materialize_as(
        &source,
        &canonical,
        &options.cache_dir,
        crate::weights::Target {
            network: &format!("clip{}", options.precision.suffix()),
            weight_type: options.precision.weight_type(),
            patch,
        },
    )?;
    let weights = copy_weights(&placed, out, "text_encoder")?;
    let clip_options = ClipOptions {
        precision: options.precision,
        ..ClipOptions::default()
    };
    let name = options
        .checkpoint
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let te = clip::compile_weights(&config, &weights, &embeddings, &clip_options, &name)?;
    written.push(weights.file().to_owned());
    written.push(write_onnx(out, "text_encoder", &te.model)?);
    Ok(written)
}

fn copy_weights(
    weights: &crate::weights::Weights,
    out: &Path,
    name: &str,
) -> Result<crate::weights::Weights, ExportError> {
    Ok(weights.copy_to(&out.join(format!("{name}.safetensors")))?)
}

fn write_onnx(out: &Path, name: &str, model: &CompiledModel) -> Result<PathBuf, ExportError> {
    let path = out.join(format!("{name}.onnx"));
    std::fs::write(&path, &model.onnx).map_err(|source| ExportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
