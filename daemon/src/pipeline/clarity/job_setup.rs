//! What every stage of a diffusion job shares ([`JobSetup`]: the preset's rules, the sampler's
//! schedule, tiles, conditionings, guidance, the VAE policy), the work it plans, and the
//! stages run in turn, each on the previous one's output.

use ndarray::{Array3, Array4, ArrayView2};
use tessera_protocol::Preset;

use super::network_traits::NetResult;
use super::stage::{self, Event, Rules, StageNets, StageSetup};
use super::stage_plan::Stage;
use super::vae_passes::VaePolicy;
use crate::Cancelled;
use crate::pipeline::sampling::Update;
use crate::pipeline::sampling::noise::NoiseSource;
use crate::pipeline::sampling::schedule::{Schedule, Training};

/// What every stage of a job shares.
pub struct JobSetup<'a> {
    pub rules: Rules,
    pub schedule: Schedule,
    pub update: Update,
    pub tile: (usize, usize),
    pub batch: usize,
    pub cond: ArrayView2<'a, f32>,
    pub uncond: ArrayView2<'a, f32>,
    pub cfg: f32,
    pub resemblance: f32,
    pub decay: f32,
    pub vae: VaePolicy,
}

impl JobSetup<'_> {
    fn stage<'s>(&'s self, plan: &'s [Stage], index: usize) -> StageSetup<'s> {
        StageSetup {
            stage: &plan[index],
            index,
            stages: plan.len(),
            rules: self.rules,
            schedule: &self.schedule,
            update: self.update,
            tile: self.tile,
            batch: self.batch,
            cond: self.cond,
            uncond: self.uncond,
            cfg: self.cfg,
            resemblance: self.resemblance,
            decay: self.decay,
            vae: self.vae,
        }
    }

    /// [`JobSetup::planned_work`] by phase.
    pub fn planned_by_phase(
        &self,
        plan: &[Stage],
        input: (usize, usize),
        upscaler_scale: usize,
    ) -> Vec<(&'static str, f64)> {
        let mut size = input;
        let mut phases = Vec::new();
        for index in 0..plan.len() {
            phases.extend(stage::planned_by_phase(
                &self.stage(plan, index),
                size,
                upscaler_scale,
            ));
            size = plan[index].output;
        }
        phases
    }

    /// The estimated work of all stages from an input of `input` pixels.
    pub fn planned_work(
        &self,
        plan: &[Stage],
        input: (usize, usize),
        upscaler_scale: usize,
    ) -> f64 {
        let mut size = input;
        let mut total = 0.0;
        for index in 0..plan.len() {
            total += stage::planned_work(&self.stage(plan, index), size, upscaler_scale);
            size = plan[index].output;
        }
        total
    }
}

/// Runs every stage of `plan` on `input` (`[3, H, W]`, 0..1); `report(stage, event)` follows
/// every network call, `on_latent(stage, latent)` sees each stage's final latent.
pub fn run_stages(
    nets: &mut StageNets<'_>,
    input: Array3<f32>,
    plan: &[Stage],
    setup: &JobSetup<'_>,
    noise: &mut dyn NoiseSource,
    report: &mut dyn FnMut(usize, Event) -> Result<(), Cancelled>,
    on_latent: &mut dyn FnMut(usize, &Array4<f32>),
) -> NetResult<Array3<f32>> {
    let mut image = input;
    for index in 0..plan.len() {
        let stage_setup = setup.stage(plan, index);
        image = stage::run_stage(
            nets,
            image.view(),
            &stage_setup,
            noise,
            &mut |e| report(index, e),
            &mut |l| on_latent(index, l),
        )?;
    }
    Ok(image)
}

/// The rules of a preset.
pub fn rules(preset: Preset) -> Rules {
    match preset {
        Preset::Refiners => Rules::REFINERS,
        _ => Rules::CLARITY,
    }
}

/// The training σ table a preset samples with: A1111 1.7's fp16 one for Clarity (its fork
/// halves the whole model), the float64 one for the Refiners library.
pub fn training(preset: Preset) -> Training {
    match preset {
        Preset::Refiners => Training::sd15(),
        _ => Training::sd15_half(),
    }
}
