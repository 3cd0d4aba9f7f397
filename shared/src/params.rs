//! What a job asks for: the scale, the models and, for the diffusion pipeline, Clarity's
//! parameters under Clarity's names and with Clarity's defaults (see the Clarity upscaler's
//! `predict.py`, summarised in `docs/pipeline.md`). Field order is wire order.
//!
//! One struct serves the three pipelines a job can pick with [`Preset`]: Clarity (the
//! default), the Refiners library's `MultiUpscaler` and the upscaler alone. The preset picks
//! the *rules* (tile grid, strength rounding, stage plan, prompt emphasis, ControlNet
//! condition image); the numbers are always explicit fields, and [`JobParams::refiners`]
//! gives the Refiners library's numbers.

use serde::{Deserialize, Serialize};

pub mod python;

/// Clarity's default prompt: its three quality words and its two LoRAs.
pub const CLARITY_PROMPT: &str =
    "masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>";
/// Clarity's default negative prompt: weighted quality words and its negative embedding.
pub const CLARITY_NEGATIVE_PROMPT: &str =
    "(worst quality, low quality, normal quality:2) JuggernautNegative-neg";
/// The Refiners library's default prompt (`MultiUpscaler.upscale`).
pub const REFINERS_PROMPT: &str = "masterpiece, best quality, highres";
/// The Refiners library's default negative prompt.
pub const REFINERS_NEGATIVE_PROMPT: &str = "worst quality, low quality, normal quality";

/// The accepted values of each numeric parameter, inclusive: the daemon refuses a job outside
/// them (`InvalidParams`, naming the field), and the clients offer no more. The Python client
/// reads them, with the defaults, from the file [`python::table`] writes.
pub mod limits {
    use std::ops::RangeInclusive;

    pub const SCALE: RangeInclusive<f32> = 1.0..=16.0;
    pub const CREATIVITY: RangeInclusive<f32> = 0.0..=1.0;
    pub const RESEMBLANCE: RangeInclusive<f32> = 0.0..=3.0;
    pub const DYNAMIC: RangeInclusive<f32> = 1.0..=50.0;
    /// Both tile sides, in latents (8 pixels); also a multiple of [`TILE_MULTIPLE`].
    pub const TILE: RangeInclusive<u32> = 16..=256;
    pub const TILE_MULTIPLE: u32 = 8;
    pub const STEPS: RangeInclusive<u32> = 1..=100;
    pub const DECAY: RangeInclusive<f32> = 0.0..=1.0;
    pub const MULTISTEP_FACTOR: RangeInclusive<f32> = 0.0..=2.0;
    pub const SHARPEN: RangeInclusive<f32> = 0.0..=10.0;
    /// The weight of each of a job's `loras`.
    pub const LORA_WEIGHT: RangeInclusive<f32> = -10.0..=10.0;
}

/// Which pipeline runs, and by whose rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Preset {
    /// The Clarity upscaler: ×2 stages, its tile grid, A1111 prompt emphasis, the stage input
    /// as the ControlNet condition image, A1111's strength rounding.
    Clarity,
    /// The Refiners library's `MultiUpscaler`: one pass, its tile grid, no prompt emphasis,
    /// the pre-upscaled image as the ControlNet condition, its strength rounding.
    Refiners,
    /// The upscaler alone (ESRGAN passes, then Lanczos): no diffusion, no SD models needed.
    Upscaler,
}

/// The diffusion sampler (and its noise schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sampler {
    /// A1111 "DPM++ 3M SDE Karras": k-diffusion's third-order SDE solver, Karras σ with the
    /// next-to-last σ discarded; Clarity's default.
    DpmPp3mSdeKarras,
    /// A1111 "DPM++ 2M Karras": k-diffusion's second-order multistep solver on Karras σ.
    DpmPp2mKarras,
    /// DPM-Solver++ 2M on linearly spaced timesteps, ending at σ_min: the Refiners library's
    /// default `DPMSolver`.
    DpmPp2m,
    /// DDIM (η = 0) on "leading" timesteps: the Refiners Space's default.
    Ddim,
}

/// A LoRA applied besides those the prompt's `<lora:name:weight>` tags name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraWeight {
    /// A model in `models/loras/`, with or without its extension.
    pub name: String,
    /// Multiplier of the LoRA's weight change (A1111's tag weight).
    pub weight: f32,
}

/// What to do with the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    /// Output size ÷ input size, per axis; 1 to 16.
    pub scale: f32,
    /// Name of a model in the data directory's `models/upscalers/` (with or without its
    /// extension); `None` takes the daemon's default.
    pub upscaler: Option<String>,
    /// Which pipeline runs.
    pub preset: Preset,
    /// Denoising strength of the first stage, 0 to 1. At 0 the Clarity preset still runs the
    /// VAE round trip and one evaluation at the last σ (as A1111 does); the Refiners preset
    /// runs the upscaler alone.
    pub creativity: f32,
    /// ControlNet tile weight, 0 to 3.
    pub resemblance: f32,
    /// Classifier-free guidance scale, 1 to 50.
    pub dynamic: f32,
    /// MultiDiffusion tile width in latent units (8 pixels), 16 to 256, a multiple of 8
    /// ("fractality").
    pub tile_width: u32,
    /// MultiDiffusion tile height in latent units, 16 to 256, a multiple of 8.
    pub tile_height: u32,
    /// Sampler steps of a full denoise, 1 to 100 (about creativity × steps are run).
    pub steps: u32,
    /// Noise seed of the first stage (each further stage adds 1).
    pub seed: u64,
    /// A1111 prompt syntax: `(word:1.2)`, `<lora:name:weight>`, embedding names.
    pub prompt: String,
    pub negative_prompt: String,
    pub sampler: Sampler,
    /// ControlNet residual i is scaled by resemblance · decay^(12 − i); 0 to 1.
    pub decay: f32,
    /// Creativity multiplier for each stage after the first, 0 to 2.
    pub multistep_factor: f32,
    /// Models by name in `models/checkpoints/`, `models/vae/`, `models/controlnet/`;
    /// `None` takes the daemon's default.
    pub checkpoint: Option<String>,
    pub vae: Option<String>,
    pub controlnet: Option<String>,
    /// LoRAs besides the prompt's tags.
    pub loras: Vec<LoraWeight>,
    /// Strength of a 3×3 sharpening of the result, 0 (off) to 10.
    pub sharpen: f32,
    /// Only this rectangle of the result, computed from the part of the input around it: a
    /// quick look at a region before the whole job. `None`: the whole result.
    pub preview: Option<Region>,
}

/// A rectangle in pixels of the result: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Default for JobParams {
    /// Clarity's defaults.
    fn default() -> Self {
        Self {
            scale: 2.0,
            upscaler: None,
            preset: Preset::Clarity,
            creativity: 0.35,
            resemblance: 0.6,
            dynamic: 6.0,
            tile_width: 112,
            tile_height: 144,
            steps: 18,
            seed: 1337,
            prompt: CLARITY_PROMPT.to_owned(),
            negative_prompt: CLARITY_NEGATIVE_PROMPT.to_owned(),
            sampler: Sampler::DpmPp3mSdeKarras,
            decay: 0.825,
            multistep_factor: 0.8,
            checkpoint: None,
            vae: None,
            controlnet: None,
            loras: Vec::new(),
            sharpen: 0.0,
            preview: None,
        }
    }
}

impl JobParams {
    /// The Refiners library's `MultiUpscaler.upscale()` defaults (and the seed of its Space).
    pub fn refiners() -> Self {
        Self {
            preset: Preset::Refiners,
            seed: 42,
            prompt: REFINERS_PROMPT.to_owned(),
            negative_prompt: REFINERS_NEGATIVE_PROMPT.to_owned(),
            sampler: Sampler::DpmPp2m,
            ..Self::default()
        }
    }

    /// The upscaler alone at `scale`.
    pub fn upscaler_only(scale: f32, upscaler: Option<String>) -> Self {
        Self {
            scale,
            upscaler,
            preset: Preset::Upscaler,
            ..Self::default()
        }
    }

    /// Whether this job runs diffusion (and so needs the SD models): Clarity always (A1111's
    /// img2img at strength 0 still encodes, evaluates once at the last σ and decodes), the
    /// Refiners preset above creativity 0, the upscaler preset never.
    pub fn diffuses(&self) -> bool {
        match self.preset {
            Preset::Clarity => true,
            Preset::Refiners => self.creativity > 0.0,
            Preset::Upscaler => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_jobs_diffuse() {
        let at = |preset, creativity| JobParams {
            preset,
            creativity,
            ..JobParams::default()
        };
        assert!(at(Preset::Clarity, 0.35).diffuses());
        assert!(at(Preset::Clarity, 0.0).diffuses(), "A1111 at strength 0");
        assert!(at(Preset::Refiners, 0.35).diffuses());
        assert!(!at(Preset::Refiners, 0.0).diffuses());
        assert!(!at(Preset::Upscaler, 0.35).diffuses());
    }
}
