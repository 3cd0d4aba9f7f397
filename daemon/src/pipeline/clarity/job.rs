//! A diffusion job from the wire to the result: parameters checked and models resolved, the
//! model set loaded (or reused, warm), prompts encoded (or taken from the cache), the stages
//! run with progress and cancel, alpha upscaled apart and re-attached, the result sharpened
//! and returned in the input's pixel format. Jobs that do not diffuse (preset `Upscaler`, or
//! the Refiners preset at creativity 0) go to the upscaler alone; Clarity at creativity 0
//! still runs its VAE round trip and one evaluation, as A1111 does.

use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array2, Array3};
use tessera_protocol::{ErrorInfo, ErrorKind, Image, JobParams, ModelKind, Preset, StageTiming};

use super::model_set::{EsrganUpscaler, LoraChoice, ModelSet, SetKey, StampedFile};
use super::network_traits::StageError;
use super::params;
use super::preview::{self, LatentWindow, WindowNoise};
use super::stage::{Event, PreUpscaler, StageNets};
use super::stage_plan;
use super::text::TextError;
use super::tile_batch;
use super::vae_passes::{VaePolicy, VaeRule, VaeTiling};
use super::warmup::{WarmUpHandle, WarmUpPlan};
use crate::Cancelled;
use crate::config::Config;
use crate::engine::{
    Engine, EngineError, MaybeOutOfMemory, Shrink, Shrinkable, retry_out_of_memory,
};
use crate::job::{JobOutput, JobRunner, ProgressSink, Step};
use crate::nets::ModelError;
use crate::nets::esrgan::ChannelOrder;
use crate::pipeline::cache::{JobReuse, Makers, ReuseCache};
use crate::pipeline::eta::{self, Estimator, Rates};
use crate::pipeline::filters;
use crate::pipeline::pixels::{self, PixelFormat, Planar};
use crate::pipeline::resize;
use crate::pipeline::sampling::Update;
use crate::pipeline::sampling::noise::{NoiseSource, SeededNoise};
use crate::pipeline::sampling::schedule;
use crate::pipeline::upscale::{self, Upscaler};
use crate::store::{DataDir, ModelFile, registry};

pub use super::job_setup::{JobSetup, rules, run_stages, training};

/// Runs every job on the engine thread: diffusion jobs here, the others by the upscaler.
pub struct ClarityRunner {
    engine: Arc<Engine>,
    data_dir: DataDir,
    config: Config,
    upscaler: Upscaler,
    models: Option<ModelSet>,
    warm_up: Option<WarmUpHandle>,
    reuse: ReuseCache,
}

fn stage_error(e: StageError) -> ErrorInfo {
    match e {
        StageError::Cancelled => ErrorInfo::new(ErrorKind::Cancelled, "the job was cancelled"),
        StageError::Runtime(e) => ErrorInfo::new(ErrorKind::Runtime, e.to_string()),
        StageError::Unexpected(m) => ErrorInfo::new(ErrorKind::Internal, m),
    }
}

impl MaybeOutOfMemory for TextError {
    fn out_of_memory(&self) -> Option<&str> {
        match self {
            TextError::Net(e) => e.out_of_memory(),
            TextError::Syntax(_) => None,
        }
    }
}

impl From<EngineError> for TextError {
    fn from(e: EngineError) -> TextError {
        TextError::Net(StageError::Runtime(e))
    }
}

fn load_error(e: ModelError) -> ErrorInfo {
    let kind = match e {
        ModelError::Io(_) => ErrorKind::Io,
        ModelError::Invalid(_) => ErrorKind::ModelInvalid,
        ModelError::Runtime(_) => ErrorKind::Runtime,
    };
    ErrorInfo::new(kind, e.to_string())
}

/// Job time spent per phase, in the order phases first appear.
struct Timings {
    laps: Vec<StageTiming>,
    clock: Instant,
}

impl Timings {
    fn new() -> Timings {
        Timings {
            laps: Vec::new(),
            clock: Instant::now(),
        }
    }

    fn lap(&mut self, name: &str) {
        let seconds = self.clock.elapsed().as_secs_f64();
        self.clock = Instant::now();
        match self.laps.iter_mut().find(|t| t.name == name) {
            Some(t) => t.seconds += seconds,
            None => self.laps.push(StageTiming {
                name: name.to_owned(),
                seconds,
            }),
        }
    }
}

impl ClarityRunner {
    pub fn new(engine: Arc<Engine>, data_dir: DataDir, config: Config) -> ClarityRunner {
        let budget = usize::try_from(config.cache.budget()).unwrap_or(usize::MAX);
        ClarityRunner {
            upscaler: Upscaler::new(engine.clone(), data_dir.clone(), config.clone()),
            engine,
            data_dir,
            config,
            models: None,
            warm_up: None,
            reuse: ReuseCache::new(budget),
        }
    }

    /// Starts loading the default upscaler and model set in the background (see
    /// `warmup.rs`); jobs take what it has loaded. The set is Clarity's default job's; where
    /// its LoRAs or embeddings are not installed, the default models without them (the set
    /// of a job whose prompt names no LoRA, such as the Refiners preset's).
    pub fn start_warm_up(&mut self) -> WarmUpHandle {
        let clarity = JobParams::default();
        let (defaults, set) = match self.set_key(&clarity) {
            Ok(key) => (clarity, Ok(key)),
            Err(e) => {
                let plain = JobParams::refiners();
                match self.set_key(&plain) {
                    Ok(key) => {
                        tracing::info!(
                            "warm-up: {}; warming the default models without it",
                            e.message
                        );
                        (plain, Ok(key))
                    }
                    Err(_) => (clarity, Err(e.message)),
                }
            }
        };
        let plan = WarmUpPlan {
            upscaler_precision: self
                .config
                .engine
                .precisions(self.engine.execution_providers())
                .upscaler,
            engine: self.engine.clone(),
            data_dir: self.data_dir.clone(),
            upscaler: upscale::resolve_model(&self.data_dir, &self.config, &defaults)
                .map(|m| m.path)
                .map_err(|e| e.message),
            set,
            prompts: defaults,
        };
        let handle = WarmUpHandle::start(plan);
        self.warm_up = Some(handle.clone());
        handle
    }

    /// What crossed between host and device for the UNet + ControlNet of the loaded model
    /// set (zero when none is loaded).
    pub fn unet_traffic(&self) -> crate::engine::binding::Traffic {
        self.models
            .as_ref()
            .map_or_else(Default::default, |m| m.unet.traffic())
    }

    /// VAE passes of the loaded model set redone in fp32 after an fp16 overflow.
    pub fn vae_redos(&self) -> usize {
        self.models.as_ref().map_or(0, |m| m.vae.redos())
    }

    /// The model set a job asks for (files resolved, LoRAs from the prompt's tags and the
    /// job's list, every embedding of the data directory).
    pub fn set_key(&self, params: &JobParams) -> Result<SetKey, ErrorInfo> {
        let sd = params::resolve_sd(&self.data_dir, &self.config, params)?;
        let loras = params::lora_files(&self.data_dir, params)?
            .into_iter()
            .map(|(file, te, unet)| LoraChoice::new(&file.path, te, unet))
            .collect();
        let embeddings = registry::list(&self.data_dir, ModelKind::Embedding)
            .map_err(|e| ErrorInfo::new(ErrorKind::Io, e.to_string()))?
            .into_iter()
            .filter(|m| !m.is_folder)
            .map(|m| StampedFile::of(&m.path))
            .collect();
        Ok(SetKey {
            checkpoint: StampedFile::of(&sd.checkpoint.path),
            vae: StampedFile::of(&sd.vae.path),
            controlnet: StampedFile::of(&sd.controlnet.path),
            loras,
            embeddings,
            precisions: self
                .config
                .engine
                .precisions(self.engine.execution_providers()),
        })
    }

    /// The warm model set for `key`, loading it (and freeing the previous one) if needed.
    fn model_set(&mut self, key: SetKey) -> Result<&mut ModelSet, ErrorInfo> {
        if self.models.as_ref().is_none_or(|m| m.key != key)
            && let Some(warm_up) = &self.warm_up
        {
            // The warm-up's set if it is this one; else the warm-up stops and lets go.
            self.models = warm_up.take_set(&key);
            let freed = self.engine.release_unused();
            if freed > 0 {
                tracing::info!("another model set was chosen; {freed} sessions freed");
            }
        }
        if self.models.as_ref().is_some_and(|m| m.key != key) {
            self.models = None;
            let freed = self.engine.release_unused();
            tracing::info!("another model set was chosen; {freed} sessions freed");
        }
        if self.models.is_none() {
            let started = Instant::now();
            let set =
                ModelSet::load(&self.engine, key, &self.data_dir.cache()).map_err(load_error)?;
            tracing::info!(
                "model set loaded in {:.1} s: {} sessions held",
                started.elapsed().as_secs_f64(),
                self.engine.held_sessions().len()
            );
            self.models = Some(set);
        }
        Ok(self.models.as_mut().expect("set above"))
    }

    /// A preview of `region`: the job on the part of the input around it, cropped to it.
    fn preview(
        &mut self,
        image: Image,
        params: &JobParams,
        region: tessera_protocol::Region,
        progress: &mut dyn ProgressSink,
    ) -> Result<JobOutput, ErrorInfo> {
        let plan = preview::plan(
            (image.width, image.height),
            params,
            region,
            self.config.preview.context,
        );
        let c = plan.crop;
        let part = preview::crop_image(&image, (c.x0, c.y0, c.x1, c.y1));
        drop(image);
        let whole = JobParams {
            preview: None,
            ..params.clone()
        };
        let mut output = if whole.diffuses() {
            self.diffuse(part, &whole, progress, Some(&plan.windows))?
        } else {
            self.upscaler.run(part, &whole, progress)?
        };
        let r = plan.region;
        output.image =
            preview::crop_image(&output.image, (r.x, r.y, r.x + r.width, r.y + r.height));
        Ok(output)
    }

    /// A diffusion job: 1. the models loaded (or found warm), 2. the prompts encoded, 3. the
    /// stage plan and what its stages share, 4. the stages run with progress and time left,
    /// 5. the result composed (sharpened, alpha re-attached, the input's pixel format).
    fn diffuse(
        &mut self,
        image: Image,
        params: &JobParams,
        progress: &mut dyn ProgressSink,
        windows: Option<&[LatentWindow]>,
    ) -> Result<JobOutput, ErrorInfo> {
        let mut timings = Timings::new();
        progress
            .report(Step {
                stage: 0,
                stages: 1,
                phase: "load",
                step: 0,
                steps: 1,
                tile: 0,
                tiles: 1,
                fraction: 0.0,
            })
            .map_err(cancelled)?;
        let format = PixelFormat::of(&image);
        let (tw, th) = upscale::output_size(image.width, image.height, params.scale);
        let (tw, th) = (tw as usize, th as usize);
        let input = pixels::to_planar(&image);
        drop(image);
        let (iw, ih) = (input.width(), input.height());

        // 1. Models.
        let upscaler_file = self.load_models(params)?;
        timings.lap("load");
        // 2. Prompts.
        let (cond, uncond) = self.encode_prompts(params)?;
        timings.lap("text");
        // 3. The plan and what its stages share.
        let plan = stage_plan::plan(
            (iw, ih),
            (tw, th),
            params.scale,
            params.creativity,
            params.multistep_factor,
            params.seed,
            params.preset == Preset::Refiners,
        );
        let engine = self.engine.clone();
        let vae = self.vae_policy(params.preset);
        let models = self.models.as_mut().expect("loaded above");
        // A job whose VAE goes in tiles is large: its memory peak is in the tiles, so the
        // text encoder, done with once the prompts are encoded, gives its memory back until
        // the job is over (the VAE's tiled passes do the same with the plain VAE graphs).
        if plan
            .last()
            .is_some_and(|s| vae.tiles(s.canvas.0, s.canvas.1))
        {
            models.text.set_aside(&engine);
        }
        let setup = self.job_setup(params, &cond, &uncond, vae);

        // 4. The stages, with progress and the time left.
        let tiling = self.config.upscale.tiling();
        let models = self.models.as_mut().expect("loaded above");
        let makers = Makers {
            upscaler: format!("{:?} {tiling:?}", StampedFile::of(&upscaler_file.path)),
            vae: format!(
                "{:?} {:?} {:?}",
                models.key.vae, models.key.precisions.vae, setup.vae
            ),
        };
        let esrgan = self.upscaler.network(&upscaler_file)?;
        let mut pre = EsrganUpscaler {
            net: esrgan,
            tiling,
            recovery: &*engine,
            shrink: Shrink::default(),
            // Clarity and the Refiners Space run A1111's ESRGAN code, which feeds BGR.
            order: ChannelOrder::Bgr,
        };
        let total = setup.planned_work(&plan, (iw, ih), pre.scale()).max(1e-9);
        let rates_path = eta::rates_file(&self.data_dir.cache());
        let mut estimator = Estimator::new(
            &setup.planned_by_phase(&plan, (iw, ih), pre.scale()),
            Rates::load(&rates_path),
            &engine.device_description(),
            plan.last().map_or((0, 0), |s| s.canvas),
        );
        progress.time_left(estimator.seconds_left().map(|s| s as f32));
        let stages_count = plan.len() as u32;
        let mut done = 0.0;
        let mut phase = "";
        // Every event reports the network call that just finished, so the time since the last
        // event belongs to the event's own phase.
        let rgb = run_stages(
            &mut StageNets {
                reuse: Some(&mut JobReuse::new(&mut self.reuse, makers)),
                upscaler: &mut pre,
                vae: &mut models.vae,
                unet: &mut models.unet,
                recovery: &*engine,
            },
            input.rgb,
            &plan,
            &setup,
            &mut *match windows {
                Some(windows) => Box::new(WindowNoise {
                    seed: params.seed,
                    windows: windows.to_vec(),
                }) as Box<dyn NoiseSource>,
                None => Box::new(SeededNoise { seed: params.seed }),
            },
            &mut |index, e: Event| {
                timings.lap(e.phase);
                phase = e.phase;
                done += e.work;
                estimator.record(e.phase, e.work);
                progress.time_left(estimator.seconds_left().map(|s| s as f32));
                progress.report(Step {
                    stage: index as u32,
                    stages: stages_count,
                    phase: e.phase,
                    step: e.step as u32,
                    steps: e.steps as u32,
                    tile: e.tile as u32,
                    tiles: e.tiles as u32,
                    fraction: (0.99 * done / total).min(0.99) as f32,
                })
            },
            &mut |_, _| {},
        )
        .map_err(stage_error)?;
        timings.lap(phase);
        keep_rates(&estimator, &rates_path);
        // The next job starts warm (a no-op unless this job set sessions aside); this one has
        // its result whatever happens here.
        if let Err(e) = models.warm(&engine) {
            tracing::warn!("the sessions a large job set aside could not be created again: {e}");
        }

        // 5. The result.
        let result = compose_result(rgb, input.alpha, params.sharpen, (tw, th), format);
        timings.lap("finish");
        progress
            .report(Step {
                stage: stages_count.saturating_sub(1),
                stages: stages_count,
                phase: "finish",
                step: 1,
                steps: 1,
                tile: 1,
                tiles: 1,
                fraction: 1.0,
            })
            .map_err(cancelled)?;
        timings.laps.retain(|t| !t.name.is_empty());
        Ok(JobOutput {
            image: result,
            timings: timings.laps,
        })
    }

    /// Step 1 of a job: the upscaler and the model set, loaded or found warm (what an earlier
    /// large job set aside and could not warm again, because it failed, comes back).
    fn load_models(&mut self, params: &JobParams) -> Result<ModelFile, ErrorInfo> {
        let upscaler_file = upscale::resolve_model(&self.data_dir, &self.config, params)?;
        let key = self.set_key(params)?;
        self.upscaler.network(&upscaler_file)?;
        let engine = self.engine.clone();
        self.model_set(key)?
            .warm(&engine)
            .map_err(|e| load_error(ModelError::Runtime(e)))?;
        Ok(upscaler_file)
    }

    /// Step 2: the prompt and the negative prompt as conditionings (cached by the text side).
    /// Out of accelerator memory, the text encoder moves to the CPU (it has no tiles).
    fn encode_prompts(
        &mut self,
        params: &JobParams,
    ) -> Result<(Array2<f32>, Array2<f32>), ErrorInfo> {
        let emphasis = params.preset != Preset::Refiners;
        let engine = self.engine.clone();
        let models = self.models.as_mut().expect("loaded before the prompts");
        let mut encode = |prompt: &str| {
            retry_out_of_memory(&*engine, &mut Shrink::default(), &Shrinkable::FIXED, |_| {
                models.text.conditioning(prompt, emphasis)
            })
            .map_err(|e| stage_error(e.into()))
        };
        Ok((encode(&params.prompt)?, encode(&params.negative_prompt)?))
    }

    /// How the job's VAE passes run: the preset's rule, within the configured budget.
    fn vae_policy(&self, preset: Preset) -> VaePolicy {
        let d = &self.config.diffusion;
        VaePolicy {
            rule: match preset {
                Preset::Refiners => VaeRule::Bounded,
                _ => VaeRule::Clarity,
            },
            // Clarity's VAE passes need no memory estimate on an accelerator.
            accelerator: crate::nets::precision::accelerated(self.engine.execution_providers()),
            budget: d.vae_memory_budget,
            bounded: VaeTiling::new(d.vae_encoder_tile, d.vae_decoder_tile),
        }
    }

    /// Step 3: what every stage of the job shares.
    fn job_setup<'a>(
        &self,
        params: &JobParams,
        cond: &'a Array2<f32>,
        uncond: &'a Array2<f32>,
        vae: VaePolicy,
    ) -> JobSetup<'a> {
        let tile = (params.tile_width as usize, params.tile_height as usize);
        let precision = self
            .models
            .as_ref()
            .expect("loaded before the setup")
            .key
            .precisions
            .unet;
        JobSetup {
            rules: rules(params.preset),
            schedule: schedule::full(
                params.sampler,
                params.steps as usize,
                &training(params.preset),
            ),
            update: Update::of(params.sampler),
            tile,
            batch: tile_batch::resolve(
                self.config.diffusion.tile_batch,
                self.engine.execution_providers(),
                precision,
                tile,
            ),
            cond: cond.view(),
            uncond: uncond.view(),
            cfg: params.dynamic,
            resemblance: params.resemblance,
            decay: params.decay,
            vae,
        }
    }
}

fn cancelled(_: Cancelled) -> ErrorInfo {
    ErrorInfo::new(ErrorKind::Cancelled, "the job was cancelled")
}

/// Keeps what the job taught the time-left estimate for the next job; a failure costs only
/// the next job's estimate.
fn keep_rates(estimator: &Estimator, path: &std::path::Path) {
    let mut rates = estimator.history().clone();
    estimator.teach(&mut rates);
    if let Err(e) = rates.save(path) {
        tracing::warn!("cannot keep the job's rates in {}: {e}", path.display());
    }
}

/// Step 5: the stages' output sharpened, the alpha (upscaled apart, Lanczos) re-attached, in
/// the input's pixel format.
fn compose_result(
    mut rgb: Array3<f32>,
    alpha: Option<Array2<f32>>,
    sharpen: f32,
    (tw, th): (usize, usize),
    format: PixelFormat,
) -> Image {
    filters::sharpen(&mut rgb, sharpen);
    let alpha = alpha.map(|a| resize::lanczos_plane(a.view(), tw, th));
    pixels::from_planar(&Planar { rgb, alpha }, format)
}

impl JobRunner for ClarityRunner {
    fn run(
        &mut self,
        image: Image,
        params: &JobParams,
        progress: &mut dyn ProgressSink,
    ) -> Result<JobOutput, ErrorInfo> {
        upscale::check_job(&self.config, &image, params)?;
        if let Some(warm_up) = &self.warm_up
            && let Ok(model) = upscale::resolve_model(&self.data_dir, &self.config, params)
            && let Some((path, stamp, precision, net)) = warm_up.take_upscaler(&model.path)
        {
            self.upscaler.adopt(path, stamp, precision, net);
        }
        if let Some(region) = params.preview {
            return self.preview(image, params, region, progress);
        }
        if !params.diffuses() {
            return self.upscaler.run(image, params, progress);
        }
        self.diffuse(image, params, progress, None)
    }
}
