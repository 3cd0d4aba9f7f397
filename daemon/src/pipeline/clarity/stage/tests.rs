//! A stage end to end on the exact stand-ins: what is called in which order, which noise is
//! drawn, that progress accounts for all the planned work, and that the batch size and the
//! order of the work leave the result unchanged.

use super::*;
use crate::engine::NoRecovery;
use crate::pipeline::clarity::stage_plan;
use crate::pipeline::clarity::testing::{NearestUpscaler, Pointwise, TinyVae};
use crate::pipeline::clarity::vae_passes::VaeTiling;
use crate::pipeline::sampling::noise::SeededNoise;
use crate::pipeline::sampling::schedule::Training;
use ndarray::{Array2, ArrayD, ArrayView4};
use tessera_protocol::Sampler;

/// Records which noise was asked for, and gives seeded noise.
struct Recorder {
    inner: SeededNoise,
    asked: Vec<(usize, NoisePurpose)>,
}

impl NoiseSource for Recorder {
    fn noise(&mut self, stage: usize, purpose: NoisePurpose, dims: &[usize]) -> ArrayD<f32> {
        self.asked.push((stage, purpose));
        self.inner.noise(stage, purpose, dims)
    }
}

fn input(w: usize, h: usize) -> Array3<f32> {
    Array3::from_shape_fn((3, h, w), |(c, y, x)| {
        (0.5 + 0.4 * ((x as f32 * 0.3 + y as f32 * 0.2 + c as f32).sin())).clamp(0.0, 1.0)
    })
}

struct Outcome {
    image: Array3<f32>,
    events: Vec<Event>,
    asked: Vec<(usize, NoisePurpose)>,
    unet_calls: usize,
    planned: f64,
}

fn run(sampler: Sampler, rules: Rules, batch: usize, strength: f32) -> Outcome {
    let image = input(40, 24);
    let plan = stage_plan::plan((40, 24), (80, 48), 2.0, strength, 0.8, 7, false);
    let schedule = schedule::full(sampler, 18, &Training::sd15());
    let cond = Array2::from_elem((4, 3), 0.2f32);
    let uncond = Array2::from_elem((4, 3), -0.1f32);
    let setup = StageSetup {
        stage: &plan[0],
        index: 0,
        stages: 1,
        rules,
        schedule: &schedule,
        update: Update::of(sampler),
        tile: (8, 8),
        batch,
        cond: cond.view(),
        uncond: uncond.view(),
        cfg: 6.0,
        resemblance: 0.6,
        decay: 0.825,
        vae: VaePolicy::bounded(VaeTiling {
            encoder_tile: 32,
            encoder_pad: 8,
            decoder_tile: 4,
            decoder_pad: 1,
        }),
    };
    let mut upscaler = NearestUpscaler { scale: 4, calls: 0 };
    let mut vae = TinyVae::default();
    let mut unet = Pointwise::default();
    let mut noise = Recorder {
        inner: SeededNoise { seed: 7 },
        asked: Vec::new(),
    };
    let planned = planned_work(&setup, (40, 24), 4);
    let mut events = Vec::new();
    let image = run_stage(
        &mut StageNets {
            reuse: None,
            upscaler: &mut upscaler,
            vae: &mut vae,
            unet: &mut unet,
            recovery: &NoRecovery,
        },
        image.view(),
        &setup,
        &mut noise,
        &mut |e| {
            events.push(e);
            Ok(())
        },
        &mut |_| {},
    )
    .unwrap();
    Outcome {
        image,
        events,
        asked: noise.asked,
        unet_calls: unet.calls,
        planned,
    }
}

#[test]
fn a_clarity_stage_runs_in_order_and_accounts_for_all_its_work() {
    let out = run(Sampler::DpmPp3mSdeKarras, Rules::CLARITY, 8, 0.35);
    assert_eq!(out.image.dim(), (3, 48, 80));
    assert!(out.image.iter().all(|v| (0.0..=1.0).contains(v)));
    let phases: Vec<&str> = out.events.iter().map(|e| e.phase).collect();
    let mut order = phases.clone();
    order.dedup();
    assert_eq!(
        order,
        ["upscale", "encode", "condition", "denoise", "decode"]
    );
    // 7 evaluations at 0.35, each one ControlNet + UNet call per batch.
    let denoise: Vec<&Event> = out.events.iter().filter(|e| e.phase == "denoise").collect();
    assert_eq!(denoise.last().unwrap().steps, 7);
    assert_eq!(denoise.len(), out.unet_calls);
    assert_eq!(
        denoise.last().map(|e| (e.step, e.tile)),
        Some((7, e_tiles(&out)))
    );
    let total: f64 = out.events.iter().map(|e| e.work).sum();
    assert!(
        (total - out.planned).abs() < 1e-6 * out.planned,
        "{total} vs {}",
        out.planned
    );
    // A1111 samples the posterior, noises once, and the SDE draws noise for every step but
    // the last (to σ = 0).
    let mut expected = vec![(0, NoisePurpose::Posterior), (0, NoisePurpose::Initial)];
    expected.extend((0..6).map(|i| (0, NoisePurpose::Step(i))));
    assert_eq!(out.asked, expected);
}

fn e_tiles(out: &Outcome) -> usize {
    out.events
        .iter()
        .find(|e| e.phase == "denoise")
        .unwrap()
        .tiles
}

#[test]
fn refiners_rules_take_the_posterior_mean_and_draw_no_step_noise() {
    let out = run(Sampler::DpmPp2m, Rules::REFINERS, 8, 0.35);
    assert_eq!(out.asked, [(0, NoisePurpose::Initial)]);
    // Latent 10×6 is lower than the 8-high tile: Refiners runs one whole tile, so each of the
    // 7 evaluations is one ControlNet + UNet call (Clarity's grid would tile it).
    let denoise = out.events.iter().filter(|e| e.phase == "denoise").count();
    assert_eq!(denoise, 7);
    assert_eq!(out.image.dim(), (3, 48, 80));
}

#[test]
fn the_batch_size_does_not_change_the_result() {
    let one = run(Sampler::DpmPp3mSdeKarras, Rules::CLARITY, 1, 0.35);
    for batch in [2, 5, 16] {
        let other = run(Sampler::DpmPp3mSdeKarras, Rules::CLARITY, batch, 0.35);
        assert_eq!(other.image, one.image, "batch {batch}");
        assert!(other.unet_calls <= one.unet_calls);
    }
}

#[test]
fn the_strength_sets_how_far_the_result_moves() {
    let weak = run(Sampler::DpmPp2mKarras, Rules::CLARITY, 8, 0.1);
    let strong = run(Sampler::DpmPp2mKarras, Rules::CLARITY, 8, 0.9);
    let steps = |o: &Outcome| {
        o.events
            .iter()
            .filter(|e| e.phase == "denoise")
            .map(|e| e.step)
            .max()
    };
    assert_eq!((steps(&weak), steps(&strong)), (Some(2), Some(17)));
    assert_ne!(weak.image, strong.image);
}

#[test]
fn a_cancel_stops_the_stage_at_the_next_network_call() {
    let image = input(40, 24);
    let plan = stage_plan::plan((40, 24), (80, 48), 2.0, 0.35, 0.8, 7, false);
    let schedule = schedule::full(Sampler::Ddim, 18, &Training::sd15());
    let ctx = Array2::from_elem((4, 3), 0.1f32);
    let setup = StageSetup {
        stage: &plan[0],
        index: 0,
        stages: 1,
        rules: Rules::REFINERS,
        schedule: &schedule,
        update: Update::Euler,
        tile: (8, 8),
        batch: 2,
        cond: ctx.view(),
        uncond: ctx.view(),
        cfg: 6.0,
        resemblance: 0.6,
        decay: 1.0,
        vae: VaePolicy::bounded(VaeTiling::new(1024, 128)),
    };
    let mut unet = Pointwise::default();
    let mut seen = 0;
    let result = run_stage(
        &mut StageNets {
            reuse: None,
            upscaler: &mut NearestUpscaler { scale: 4, calls: 0 },
            vae: &mut TinyVae::default(),
            unet: &mut unet,
            recovery: &NoRecovery,
        },
        image.view(),
        &setup,
        &mut SeededNoise { seed: 1 },
        &mut |e| {
            seen += 1;
            if e.phase == "denoise" {
                Err(Cancelled)
            } else {
                Ok(())
            }
        },
        &mut |_| {},
    );
    assert!(matches!(result, Err(StageError::Cancelled)));
    assert_eq!(
        unet.calls, 1,
        "stopped after the first ControlNet + UNet call"
    );
}

/// A stand-in accelerator for the UNet: calls of more than `fits` tiles (cond and uncond make
/// two samples a tile) run out of memory while the UNet is on it.
struct Cramped {
    inner: Pointwise,
    fits: usize,
    on_gpu: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Cramped {
    fn check(&self, samples: usize) -> NetResult<()> {
        if self.on_gpu.get() && samples > 2 * self.fits {
            Err(StageError::Runtime(crate::engine::EngineError::ort(
                "UNet+ControlNet tiny",
                "BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer of size 1",
            )))
        } else {
            Ok(())
        }
    }
}

impl ControlledUnet for Cramped {
    fn begin_stage(&mut self, conditioning: &StageConditioning<'_>) -> NetResult<()> {
        self.inner.begin_stage(conditioning)
    }
    fn embed_hints(&mut self, batch: usize, hints: ArrayView4<f32>) -> NetResult<()> {
        self.inner.embed_hints(batch, hints)
    }
    fn predict(
        &mut self,
        batch: usize,
        sample: ArrayView4<f32>,
        timestep: f32,
        prompts: crate::pipeline::clarity::network_traits::Prompts,
    ) -> NetResult<Array4<f32>> {
        self.check(sample.dim().0)?;
        self.inner.predict(batch, sample, timestep, prompts)
    }
    fn end_stage(&mut self) {
        self.inner.end_stage()
    }
}

/// The engine's side of a retry, for the stand-in: the UNet is on the "GPU" until moved.
struct StandInEngine {
    on_gpu: std::rc::Rc<std::cell::Cell<bool>>,
    warnings: std::cell::RefCell<Vec<String>>,
}

impl Recovery for StandInEngine {
    fn on_accelerator(&self, model: &str) -> bool {
        model.starts_with("UNet") && self.on_gpu.get()
    }
    fn move_to_cpu(&self, _model: &str) -> Result<(), crate::engine::EngineError> {
        self.on_gpu.set(false);
        Ok(())
    }
    fn warn(&self, text: String) {
        self.warnings.borrow_mut().push(text);
    }
}

/// The stage of [`run`] with a UNet that holds `fits` tiles per call on its "GPU".
fn run_cramped(batch: usize, fits: usize) -> (Array3<f32>, Vec<String>, bool, f64, f64) {
    let image = input(40, 24);
    let plan = stage_plan::plan((40, 24), (80, 48), 2.0, 0.35, 0.8, 7, false);
    let schedule = schedule::full(Sampler::DpmPp3mSdeKarras, 18, &Training::sd15());
    let cond = Array2::from_elem((4, 3), 0.2f32);
    let uncond = Array2::from_elem((4, 3), -0.1f32);
    let setup = StageSetup {
        stage: &plan[0],
        index: 0,
        stages: 1,
        rules: Rules::CLARITY,
        schedule: &schedule,
        update: Update::DpmPp3mSde,
        tile: (8, 8),
        batch,
        cond: cond.view(),
        uncond: uncond.view(),
        cfg: 6.0,
        resemblance: 0.6,
        decay: 0.825,
        vae: VaePolicy::bounded(VaeTiling {
            encoder_tile: 32,
            encoder_pad: 8,
            decoder_tile: 4,
            decoder_pad: 1,
        }),
    };
    let on_gpu = std::rc::Rc::new(std::cell::Cell::new(true));
    let engine = StandInEngine {
        on_gpu: on_gpu.clone(),
        warnings: Default::default(),
    };
    let mut unet = Cramped {
        inner: Pointwise::default(),
        fits,
        on_gpu,
    };
    let mut work = 0.0;
    let planned = planned_work(&setup, (40, 24), 4);
    let out = run_stage(
        &mut StageNets {
            reuse: None,
            upscaler: &mut NearestUpscaler { scale: 4, calls: 0 },
            vae: &mut TinyVae::default(),
            unet: &mut unet,
            recovery: &engine,
        },
        image.view(),
        &setup,
        &mut SeededNoise { seed: 7 },
        &mut |e| {
            work += e.work;
            Ok(())
        },
        &mut |_| {},
    )
    .unwrap();
    let still_on_gpu = engine.on_gpu.get();
    (
        out,
        engine.warnings.into_inner(),
        still_on_gpu,
        work,
        planned,
    )
}

#[test]
fn out_of_gpu_memory_the_denoise_retries_with_fewer_tiles_per_call_and_the_same_result() {
    let clean = run(Sampler::DpmPp3mSdeKarras, Rules::CLARITY, 1, 0.35);
    let (image, warnings, on_gpu, work, planned) = run_cramped(4, 1);
    assert_eq!(image, clean.image);
    assert!(on_gpu, "one tile per call fits: the UNet stays on the GPU");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("2 tiles per call"), "{}", warnings[0]);
    assert!(warnings[1].contains("1 tile per call"), "{}", warnings[1]);
    assert!(
        (work - planned).abs() < 1e-6 * planned,
        "a retried evaluation counts its work once: {work} vs {planned}"
    );
}

#[test]
fn when_even_one_tile_does_not_fit_the_unet_moves_to_the_cpu_with_the_same_result() {
    let clean = run(Sampler::DpmPp3mSdeKarras, Rules::CLARITY, 2, 0.35);
    let (image, warnings, on_gpu, _, _) = run_cramped(2, 0);
    assert_eq!(image, clean.image);
    assert!(!on_gpu);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].contains("runs on the CPU"), "{}", warnings[1]);
}

#[test]
fn vae_tiles_halve_down_to_their_floor() {
    let t = VaeTiling::new(512, 54);
    assert_eq!(
        (t.halved(1).encoder_tile, t.halved(1).decoder_tile),
        (256, 27)
    );
    assert_eq!(
        (t.halved(3).encoder_tile, t.halved(3).decoder_tile),
        (64, 8)
    );
    assert_eq!(t.halvings(), 3);
    assert_eq!(t.halved(0), t);
    assert_eq!(VaeTiling::new(64, 8).halvings(), 0);
}

#[test]
fn a_vae_pass_out_of_memory_goes_to_the_bounded_tiles_then_halves_them() {
    use crate::pipeline::clarity::vae_passes::{VaePass, VaeRule};
    let policy = VaePolicy {
        rule: VaeRule::Clarity,
        accelerator: true,
        budget: 0,
        bounded: VaeTiling::new(512, 54),
    };
    // On an accelerator Clarity's rule decodes a 128² latent whole.
    assert_eq!(policy.shrunk(0).decoder(128, 128), VaePass::Whole);
    let tile = |level| match policy.shrunk(level).decoder(128, 128) {
        VaePass::Tiled(pass) => pass.tile,
        VaePass::Whole => 0,
    };
    assert_eq!((tile(1), tile(2), tile(3)), (54, 27, 13));
    assert_eq!(
        policy.shrink_levels(),
        1 + VaeTiling::new(512, 54).halvings()
    );
}
