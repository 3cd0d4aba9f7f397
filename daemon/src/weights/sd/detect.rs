//! What a weight file is, told from its keys and a few shapes, so that a file given in the
//! wrong place gets an error that names what it is (an SDXL checkpoint, a LoRA, a VAE, …)
//! instead of "tensor missing".

use std::fmt;

use super::super::{SourceTensor, TensorMap};

/// The kinds of model files users have, as far as the keys tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A Stable Diffusion 1.x-shaped UNet (or a checkpoint holding one).
    Sd15,
    /// SDXL (base or refiner): added conditioning, two text encoders.
    Sdxl,
    /// Stable Diffusion 2.x: OpenCLIP text encoder, 1024-wide cross-attention.
    Sd2,
    /// A UNet whose first convolution takes other than 4 channels: 9 is an inpainting model,
    /// 8 an InstructPix2Pix one.
    OtherInput { channels: usize },
    /// Stable Diffusion 3 (MMDiT).
    Sd3,
    /// Flux (double/single-stream transformer).
    Flux,
    /// A LoRA / LyCORIS file.
    Lora,
    /// A textual-inversion embedding.
    Embedding,
    /// A VAE on its own.
    Vae,
    /// A ControlNet.
    ControlNet,
    /// A text encoder on its own.
    TextEncoder,
    /// An ESRGAN-family upscaler.
    Upscaler,
    /// None of the above.
    Unknown,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelKind::Sd15 => write!(f, "a Stable Diffusion 1.5 model"),
            ModelKind::Sdxl => write!(f, "an SDXL model"),
            ModelKind::Sd2 => write!(f, "a Stable Diffusion 2.x model"),
            ModelKind::OtherInput { channels: 9 } => {
                write!(f, "an inpainting UNet (9 input channels)")
            }
            ModelKind::OtherInput { channels: 8 } => {
                write!(f, "an InstructPix2Pix-style UNet (8 input channels)")
            }
            ModelKind::OtherInput { channels } => {
                write!(f, "a UNet with {channels} input channels")
            }
            ModelKind::Sd3 => write!(f, "a Stable Diffusion 3 model"),
            ModelKind::Flux => write!(f, "a Flux model"),
            ModelKind::Lora => write!(f, "a LoRA"),
            ModelKind::Embedding => write!(f, "a textual-inversion embedding"),
            ModelKind::Vae => write!(f, "a VAE on its own"),
            ModelKind::ControlNet => write!(f, "a ControlNet"),
            ModelKind::TextEncoder => write!(f, "a text encoder on its own"),
            ModelKind::Upscaler => write!(f, "an ESRGAN upscaler"),
            ModelKind::Unknown => write!(f, "not a model this version recognises"),
        }
    }
}

/// Classifies a whole file by its keys.
pub fn classify(tensors: &TensorMap<SourceTensor>) -> ModelKind {
    let any = |pred: &dyn Fn(&str) -> bool| tensors.keys().any(pred);
    if any(&|k| {
        k.contains("lora_down")
            || k.contains("lora_up")
            || k.contains(".lora_A.")
            || k.contains(".lora_B.")
            || k.contains(".hada_w")
            || k.contains(".lokr_w")
    }) {
        return ModelKind::Lora;
    }
    if any(&|k| k.starts_with("string_to_param") || k == "emb_params" || k.starts_with("clip_l")) {
        return ModelKind::Embedding;
    }
    if any(&|k| k.contains("joint_blocks.")) {
        return ModelKind::Sd3;
    }
    if any(&|k| k.contains("double_blocks.")) {
        return ModelKind::Flux;
    }
    if any(&|k| {
        k.starts_with("conditioner.embedders.")
            || k.contains("label_emb.")
            || k.starts_with("add_embedding.")
    }) {
        return ModelKind::Sdxl;
    }
    if any(&|k| {
        k.starts_with("control_model.")
            || k.starts_with("input_hint_block.")
            || k.starts_with("controlnet_cond_embedding.")
    }) {
        return ModelKind::ControlNet;
    }
    if any(&|k| k.starts_with("cond_stage_model.model.")) {
        return ModelKind::Sd2;
    }
    for prefix in ["model.diffusion_model.", ""] {
        if let Some(kind) = unet_kind(tensors, prefix) {
            return kind;
        }
    }
    if any(&|k| k.starts_with("encoder.") || k.starts_with("decoder.conv_in"))
        && any(&|k| k.starts_with("decoder."))
    {
        return ModelKind::Vae;
    }
    if any(&|k| k.contains("text_model.") || k.starts_with("cond_stage_model.")) {
        return ModelKind::TextEncoder;
    }
    if any(&|k| k == "model.0.weight" || k == "conv_first.weight") {
        return ModelKind::Upscaler;
    }
    ModelKind::Unknown
}

/// The kind of the UNet under `prefix` (LDM or diffusers names), if there is one.
pub fn unet_kind(tensors: &TensorMap<SourceTensor>, prefix: &str) -> Option<ModelKind> {
    let conv_in = [
        format!("{prefix}input_blocks.0.0.weight"),
        format!("{prefix}conv_in.weight"),
    ]
    .into_iter()
    .find_map(|k| tensors.get(&k))?;
    if !tensors
        .keys()
        .any(|k| k.starts_with(prefix) && k.contains("attn2.to_k"))
    {
        // conv_in alone (a VAE's) is not a UNet.
        return None;
    }
    if conv_in.shape.len() == 4 && conv_in.shape[1] != 4 {
        return Some(ModelKind::OtherInput {
            channels: conv_in.shape[1],
        });
    }
    // Cross-attention 1024 wide is SD 2 (OpenCLIP ViT-H); 2048 is SDXL.
    let context = tensors
        .iter()
        .find(|(k, _)| k.starts_with(prefix) && k.ends_with("attn2.to_k.weight"))
        .and_then(|(_, t)| t.shape.get(1).copied());
    match context {
        Some(1024) => Some(ModelKind::Sd2),
        Some(2048) => Some(ModelKind::Sdxl),
        _ => Some(ModelKind::Sd15),
    }
}
