//! The Clarity pipeline: an image through ×2 stages of upscale → VAE encode → MultiDiffusion
//! with ControlNet tile → VAE decode, by Clarity's rules or (preset) Refiners'.

#[cfg(feature = "dev")]
pub mod bench;
pub mod checked_vae;
pub mod control;
pub mod controlled_unet;
pub mod denoise;
pub mod job;
pub mod job_setup;
pub mod model_set;
pub mod network_traits;
pub mod params;
pub mod preview;
mod sd_vae;
pub mod stage;
pub mod stage_plan;
#[cfg(feature = "dev")]
pub mod step_bench;
pub mod text;
pub mod tile_batch;
pub mod tiles;
pub mod vae_passes;
pub mod warmup;

#[cfg(test)]
mod testing;
