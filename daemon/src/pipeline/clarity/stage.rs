//! One stage of the Clarity pipeline (`docs/pipeline.md`, "A stage"): ESRGAN and Lanczos
//! to the canvas, VAE encode, noise to the start σ, the sampler's steps over MultiDiffusion
//! evaluations with the ControlNet tile, VAE decode. Everything a stage touches comes in
//! through traits (`network_traits.rs`), its rules through [`Rules`], its noise through a
//! [`NoiseSource`]; it reports after every network call.

use ndarray::{Array3, Array4, ArrayView2, ArrayView3, Axis, s};

use super::control;
use super::denoise::Guidance;
use super::network_traits::{ControlledUnet, NetResult, StageConditioning, StageError, Vae};
use super::stage_plan::Stage;
use super::tiles::{self, LatentTile};
use super::vae_passes::{self, VaePolicy};
use crate::Cancelled;
use crate::engine::{MaybeOutOfMemory, Recovery, Shrink, Shrinkable, retry_out_of_memory};
use crate::pipeline::resize;
use crate::pipeline::sampling::Update;
use crate::pipeline::sampling::noise::{NoisePurpose, NoiseSource};
use crate::pipeline::sampling::schedule::{self, Run, Schedule, StrengthRule};

/// SD 1.x's latent scale factor.
pub const LATENT_SCALE: f32 = 0.18215;

/// The upscaler in front of the diffusion (ESRGAN in the product).
pub trait PreUpscaler {
    /// Its scale factor (4 for the default models).
    fn scale(&self) -> usize;
    /// `[3, H, W]` in 0..1 → `[3, H·s, W·s]`, tile by tile, `on_tile(done, total)` after each.
    fn upscale(
        &mut self,
        rgb: ArrayView3<f32>,
        on_tile: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
    ) -> NetResult<Array3<f32>>;
}

/// Which MultiDiffusion grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    Clarity,
    Refiners,
}

/// What the ControlNet tile sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The stage input enlarged bicubically with crop-to-fill (Clarity: sd-webui-controlnet's
    /// "Crop and Resize").
    StageInput,
    /// The pre-upscaled image that is also encoded (Refiners).
    PreUpscaled,
}

/// How the encoded latent is taken from the VAE's posterior.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posterior {
    /// z = mean + std·ε (A1111/LDM).
    Sample,
    /// z = mean (Refiners).
    Mean,
}

/// The rules a preset picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub grid: Grid,
    pub strength: StrengthRule,
    pub condition: Condition,
    pub posterior: Posterior,
}

impl Rules {
    pub const CLARITY: Rules = Rules {
        grid: Grid::Clarity,
        strength: StrengthRule::A1111,
        condition: Condition::StageInput,
        posterior: Posterior::Sample,
    };
    pub const REFINERS: Rules = Rules {
        grid: Grid::Refiners,
        strength: StrengthRule::Refiners,
        condition: Condition::PreUpscaled,
        posterior: Posterior::Mean,
    };
}

/// What a stage needs besides its input.
pub struct StageSetup<'a> {
    pub stage: &'a Stage,
    /// Index of this stage and the number of stages.
    pub index: usize,
    pub stages: usize,
    pub rules: Rules,
    /// The sampler's full schedule and update rule.
    pub schedule: &'a Schedule,
    pub update: Update,
    /// MultiDiffusion tile size (latents) and tiles per network call.
    pub tile: (usize, usize),
    pub batch: usize,
    pub cond: ArrayView2<'a, f32>,
    pub uncond: ArrayView2<'a, f32>,
    pub cfg: f32,
    pub resemblance: f32,
    pub decay: f32,
    /// How the VAE passes run at this stage's canvas.
    pub vae: VaePolicy,
}

impl StageSetup<'_> {
    pub fn latent_size(&self) -> (usize, usize) {
        (self.stage.canvas.0 / 8, self.stage.canvas.1 / 8)
    }

    pub fn grid(&self) -> Vec<LatentTile> {
        let (w, h) = self.latent_size();
        match self.rules.grid {
            Grid::Clarity => tiles::clarity_grid(w, h, self.tile.0, self.tile.1),
            Grid::Refiners => tiles::refiners_grid(w, h, self.tile.0, self.tile.1),
        }
    }

    pub fn run(&self) -> Run {
        let steps = self.schedule.timesteps.len();
        schedule::run(
            self.schedule,
            schedule::evaluations(self.rules.strength, self.stage.strength, steps),
        )
    }
}

/// The networks a stage runs.
pub struct StageNets<'a> {
    pub upscaler: &'a mut dyn PreUpscaler,
    pub vae: &'a mut dyn Vae,
    pub unet: &'a mut dyn ControlledUnet,
    /// What a call that runs out of accelerator memory can do: the engine, or
    /// [`crate::engine::NoRecovery`] where nothing runs on one.
    pub recovery: &'a dyn Recovery,
    /// What earlier jobs left that this stage may take instead of computing it again.
    pub reuse: Option<&'a mut dyn Reuse>,
}

impl MaybeOutOfMemory for StageError {
    fn out_of_memory(&self) -> Option<&str> {
        match self {
            StageError::Runtime(e) => e.out_of_memory(),
            _ => None,
        }
    }
}

/// The results of a stage's first steps kept from earlier jobs (the daemon's cache,
/// `pipeline/cache.rs`), by the stage's input and canvas: the pre-upscaled canvas and its
/// encoded posterior. They do not depend on the seed, creativity, resemblance or prompts.
pub trait Reuse {
    /// The stage about to run: its input (`[3, H, W]`) and canvas.
    fn begin(&mut self, input: ArrayView3<f32>, canvas: (usize, usize));
    fn image(&mut self) -> Option<Array3<f32>>;
    fn keep_image(&mut self, image: &Array3<f32>);
    /// The posterior's mean and log-variance.
    fn latents(&mut self) -> Option<(Array4<f32>, Array4<f32>)>;
    fn keep_latents(&mut self, mean: &Array4<f32>, logvar: &Array4<f32>);
}

/// Runs one stage on `input` (`[3, H, W]`, 0..1) and returns its output (`[3, h, w]` with
/// (w, h) = `setup.stage.output`).
pub fn run_stage(
    nets: &mut StageNets<'_>,
    input: ArrayView3<f32>,
    setup: &StageSetup<'_>,
    noise: &mut dyn NoiseSource,
    report: &mut dyn FnMut(Event) -> Result<(), Cancelled>,
    on_latent: &mut dyn FnMut(&Array4<f32>),
) -> NetResult<Array3<f32>> {
    // 1.–3. The canvas, the ControlNet's condition image and the encoded posterior.
    let Encoded {
        condition,
        mean,
        logvar,
    } = encode_canvas(nets, input, setup, report)?;
    // 4. The starting latent: from the posterior, with noise to the start σ.
    let run = setup.run();
    let x = starting_latent(mean, logvar, setup, &run, noise)?;
    // 5. and 6. The stage's conditioning, handed to the networks once, then the sampler.
    let x = denoise_canvas(nets, condition, x, setup, &run, noise, report)?;
    // 7. Decode.
    decode_canvas(nets, x, setup, &run, report, on_latent)
}

/// What the first steps of a stage give: the condition image and the posterior.
struct Encoded {
    condition: Array3<f32>,
    mean: Array4<f32>,
    logvar: Array4<f32>,
}

/// Steps 1–3: pre-upscale (ESRGAN while smaller than the canvas, then Lanczos to it), the
/// ControlNet's condition image, and the VAE encode, or what an earlier job on the same input
/// left of them.
fn encode_canvas(
    nets: &mut StageNets<'_>,
    input: ArrayView3<f32>,
    setup: &StageSetup<'_>,
    report: &mut dyn FnMut(Event) -> Result<(), Cancelled>,
) -> NetResult<Encoded> {
    let (cw, ch) = setup.stage.canvas;
    let (lw, lh) = setup.latent_size();
    let pixels = (cw * ch) as f64;
    let mut reuse = nets.reuse.as_deref_mut();
    if let Some(r) = reuse.as_deref_mut() {
        r.begin(input, (cw, ch));
    }
    let kept_latents = reuse.as_deref_mut().and_then(|r| r.latents());
    let needs_image = kept_latents.is_none() || setup.rules.condition == Condition::PreUpscaled;
    let kept_image = needs_image
        .then(|| reuse.as_deref_mut().and_then(|r| r.image()))
        .flatten();
    let mut skipped = 0.0;
    let image = match (needs_image, kept_image) {
        (true, None) => {
            let image = pre_upscale(&mut *nets.upscaler, input, (cw, ch), report)?;
            if let Some(r) = reuse.as_deref_mut() {
                r.keep_image(&image);
            }
            Some(image)
        }
        (_, kept) => {
            skipped += planned_pre_upscale(input.dim(), (cw, ch), nets.upscaler.scale());
            kept
        }
    };
    if kept_latents.is_some() {
        skipped += pixels * Work::ENCODE_PER_PIXEL;
    }
    if skipped > 0.0 {
        // The work this stage skips, so that progress still adds up to the plan.
        report(Event {
            phase: "reuse",
            step: 1,
            steps: 1,
            tile: 1,
            tiles: 1,
            work: skipped,
        })?;
    }

    let condition = match setup.rules.condition {
        Condition::StageInput => control::condition_image(input, (cw, ch)),
        Condition::PreUpscaled => image.clone().expect("kept for the condition"),
    };

    let (mean, logvar) = match kept_latents {
        Some(latents) => latents,
        None => {
            let image = image.expect("computed when the latents are not kept");
            let latents = encode(&mut *nets.vae, image, setup, nets.recovery, report)?;
            if let Some(r) = reuse {
                r.keep_latents(&latents.0, &latents.1);
            }
            latents
        }
    };
    if mean.shape() != [1, 4, lh, lw] {
        return Err(StageError::Unexpected(format!(
            "the VAE encoded a {cw}×{ch} image to {:?}",
            mean.shape()
        )));
    }
    Ok(Encoded {
        condition,
        mean,
        logvar,
    })
}

/// Step 4: the latent taken from the posterior by the preset's rule, scaled, with noise added
/// to the start σ.
fn starting_latent(
    mean: Array4<f32>,
    logvar: Array4<f32>,
    setup: &StageSetup<'_>,
    run: &Run,
    noise: &mut dyn NoiseSource,
) -> NetResult<ndarray::ArrayD<f32>> {
    let dims: [usize; 4] = mean.dim().into();
    let mut z = match setup.rules.posterior {
        Posterior::Mean => mean,
        Posterior::Sample => {
            let eps = noise.noise(setup.index, NoisePurpose::Posterior, &dims);
            let eps = eps.view().into_shape_with_order(dims).map_err(shape)?;
            ndarray::Zip::from(&mean)
                .and(&logvar)
                .and(&eps)
                .map_collect(|&m, &l, &e| m + (0.5 * l).exp() * e)
        }
    };
    z.mapv_inplace(|v| v * LATENT_SCALE);
    let mut x = z.into_dyn();
    if run.evaluations() > 0 {
        let eps = noise.noise(setup.index, NoisePurpose::Initial, &dims);
        let sigma = run.start_sigma() as f32;
        ndarray::Zip::from(&mut x)
            .and(&eps)
            .for_each(|x, &e| *x += sigma * e);
    }
    Ok(x)
}

/// Steps 5 and 6: the stage's conditioning (text, residual scales, the hint embedding of every
/// batch of tiles) handed to the networks once, then the sampler's steps.
fn denoise_canvas(
    nets: &mut StageNets<'_>,
    condition: Array3<f32>,
    x: ndarray::ArrayD<f32>,
    setup: &StageSetup<'_>,
    run: &Run,
    noise: &mut dyn NoiseSource,
    report: &mut dyn FnMut(Event) -> Result<(), Cancelled>,
) -> NetResult<ndarray::ArrayD<f32>> {
    let (lw, lh) = setup.latent_size();
    let grid = setup.grid();
    let guidance = Guidance {
        tiles: &grid,
        batch: setup.batch,
        cfg: setup.cfg,
        paired: setup.cond.nrows() == setup.uncond.nrows(),
    };
    let conditioning = StageConditioning {
        cond: setup.cond,
        uncond: setup.uncond,
        scales: control::residual_scales(setup.resemblance, setup.decay),
    };
    let unet = &mut *nets.unet;
    unet.begin_stage(&conditioning)?;
    // What the networks keep for the stage goes at its end, whatever the end.
    let sampled = sample(
        unet,
        condition,
        &guidance,
        run,
        x,
        [1, 4, lh, lw],
        setup,
        noise,
        nets.recovery,
        report,
    );
    unet.end_stage();
    sampled
}

/// Step 7: the final latent decoded (shown to `on_latent` first: the reference-parity test
/// compares it), in the VAE policy's pass, smaller ones when memory runs out.
fn decode_canvas(
    nets: &mut StageNets<'_>,
    x: ndarray::ArrayD<f32>,
    setup: &StageSetup<'_>,
    run: &Run,
    report: &mut dyn FnMut(Event) -> Result<(), Cancelled>,
    on_latent: &mut dyn FnMut(&Array4<f32>),
) -> NetResult<Array3<f32>> {
    let (cw, ch) = setup.stage.canvas;
    let (lw, lh) = setup.latent_size();
    let mut latent = x.into_dimensionality::<ndarray::Ix4>().map_err(shape)?;
    let out_scale = run.output_scale as f32;
    latent.mapv_inplace(|v| v * out_scale);
    on_latent(&latent);
    let k = 1.0 / LATENT_SCALE;
    latent.mapv_inplace(|v| v * k);
    let policy = &setup.vae;
    let describe = |level: u32| vae_level(policy, level);
    let vae_size = Shrinkable {
        levels: policy.shrink_levels(),
        describe: &describe,
    };
    let mut vae_shrink = Shrink::default();
    let pixels = (cw * ch) as f64;
    let mut progress = vae_progress("decode", pixels * Work::DECODE_PER_PIXEL, report);
    let vae_net = &mut *nets.vae;
    let mut decoded: Array4<f32> =
        retry_out_of_memory(nets.recovery, &mut vae_shrink, &vae_size, |level| {
            vae_passes::decode(
                vae_net,
                latent.view(),
                &policy.shrunk(level).decoder(lw, lh),
                &mut progress,
            )
        })?;
    drop(progress);
    drop(latent);
    decoded.mapv_inplace(|v| ((v + 1.0) * 0.5).clamp(0.0, 1.0));
    let (ow, oh) = setup.stage.output;
    let image = decoded.index_axis_move(Axis(0), 0);
    if image.shape()[1..] == [oh, ow] {
        Ok(image)
    } else {
        Ok(image.slice(s![.., ..oh, ..ow]).to_owned())
    }
}

/// ESRGAN while the image is smaller than the canvas (at most three passes), then Lanczos to
/// the canvas.
fn pre_upscale(
    upscaler: &mut dyn PreUpscaler,
    input: ArrayView3<f32>,
    (cw, ch): (usize, usize),
    report: &mut dyn FnMut(Event) -> Result<(), Cancelled>,
) -> NetResult<Array3<f32>> {
    let (_, ih, iw) = input.dim();
    let scale = upscaler.scale();
    let count = passes((iw, ih), (cw, ch), scale);
    let mut image = input.to_owned();
    for pass in 0..count {
        let pixels = (image.shape()[1] * image.shape()[2]) as f64;
        // A pass retried after an out-of-memory reports again from its start: only what goes
        // past the furthest point reached counts as work.
        let mut reached = 0.0;
        image = upscaler.upscale(image.view(), &mut |done, total| {
            let fraction = done as f64 / total as f64;
            let work = pixels * Work::ESRGAN_PER_PIXEL * (fraction - reached).max(0.0);
            reached = fraction.max(reached);
            report(Event {
                phase: "upscale",
                step: pass + 1,
                steps: count,
                tile: done,
                tiles: total,
                work,
            })
        })?;
    }
    if (image.shape()[2], image.shape()[1]) != (cw, ch) {
        image = resize::lanczos(image.view(), cw, ch);
    }
    Ok(image)
}

/// The VAE posterior (mean, log-variance) of the canvas image (`[3, H, W]`, 0..1).
/// An encode that runs out of accelerator memory is retried with halved VAE tiles.
fn encode(
    vae_net: &mut dyn Vae,
    image: Array3<f32>,
    setup: &StageSetup<'_>,
    recovery: &dyn Recovery,
    report: &mut dyn FnMut(Event) -> Result<(), Cancelled>,
) -> NetResult<(Array4<f32>, Array4<f32>)> {
    let (cw, ch) = setup.stage.canvas;
    let signed = image.mapv(|v| 2.0 * v - 1.0).insert_axis(Axis(0));
    drop(image);
    let pixels = (cw * ch) as f64;
    let policy = &setup.vae;
    let describe = |level: u32| vae_level(policy, level);
    let vae_size = Shrinkable {
        levels: policy.shrink_levels(),
        describe: &describe,
    };
    let mut vae_shrink = Shrink::default();
    let mut progress = vae_progress("encode", pixels * Work::ENCODE_PER_PIXEL, report);
    retry_out_of_memory(recovery, &mut vae_shrink, &vae_size, |level| {
        vae_passes::encode(
            vae_net,
            signed.view(),
            &policy.shrunk(level).encoder(cw, ch),
            &mut progress,
        )
    })
}

/// What a VAE pass runs with after `level` out-of-memory retries, for the warnings.
fn vae_level(policy: &VaePolicy, level: u32) -> String {
    let t = policy.bounded.halved(level.saturating_sub(1));
    format!(
        "VAE tiles of {} pixels and {} latents",
        t.encoder_tile, t.decoder_tile
    )
}

/// The report after each VAE call of `phase`: call `done` of `total` carries its share of the
/// phase's `work` (a pass retried with smaller tiles counts only what goes past the furthest
/// point reached).
fn vae_progress<'a>(
    phase: &'static str,
    work: f64,
    report: &'a mut dyn FnMut(Event) -> Result<(), Cancelled>,
) -> impl FnMut(usize, usize) -> Result<(), Cancelled> + 'a {
    let mut reached = 0.0;
    move |done, total| {
        let fraction = done as f64 / total as f64;
        let share = work * (fraction - reached).max(0.0);
        reached = fraction.max(reached);
        report(Event {
            phase,
            step: 1,
            steps: 1,
            tile: done,
            tiles: total,
            work: share,
        })
    }
}

fn shape(e: ndarray::ShapeError) -> StageError {
    StageError::Unexpected(format!("latent shape: {e}"))
}

mod sample;
mod work;

use sample::sample;
pub use work::{Event, Work, planned_by_phase, planned_work};
use work::{passes, planned_pre_upscale};

#[cfg(test)]
mod tests;
