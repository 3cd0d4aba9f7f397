//! The upscaler job: ESRGAN passes (tiled) until the image is at least as
//! large as asked, then Lanczos to the exact size; alpha is resized apart
//! with Lanczos and re-attached; the result goes back in the input's format.

use super::pixels::{self, PixelFormat, Planar};
use super::resize;
use crate::Cancelled;
use crate::config::Config;
use crate::engine::{Engine, MaybeOutOfMemory, Recovery, Shrink, Shrinkable, retry_out_of_memory};
use crate::job::{JobChecker, JobOutput, JobRunner, ProgressSink, Step};
use crate::nets::ModelError;
use crate::nets::Precision;
use crate::nets::esrgan::{ChannelOrder, Esrgan, EsrganError, Tiling};
use crate::store::{DataDir, FileStamp, ModelFile};
use ndarray::{Array3, ArrayView3};
use std::path::PathBuf;
use std::time::Instant;
use tessera_protocol::{
    ErrorInfo, ErrorKind, Image, ImageError, JobParams, ModelKind, StageTiming,
};

pub const MIN_SCALE: f32 = *tessera_protocol::params::limits::SCALE.start();
pub const MAX_SCALE: f32 = *tessera_protocol::params::limits::SCALE.end();

/// The reference pipeline never runs more than three ESRGAN passes.
const MAX_PASSES: u32 = 3;

/// Output size for an input size and a scale factor.
pub fn output_size(width: u32, height: u32, scale: f32) -> (u64, u64) {
    let side = |v: u32| ((f64::from(v) * f64::from(scale)).round() as u64).max(1);
    (side(width), side(height))
}

/// Vets submissions against the limits and the model store.
pub struct Checker {
    data_dir: DataDir,
    config: Config,
}

impl Checker {
    pub fn new(data_dir: DataDir, config: Config) -> Checker {
        Checker { data_dir, config }
    }

    fn model(&self, params: &JobParams) -> Result<ModelFile, ErrorInfo> {
        resolve_model(&self.data_dir, &self.config, params)
    }
}

pub(crate) fn resolve_model(
    dir: &DataDir,
    config: &Config,
    params: &JobParams,
) -> Result<ModelFile, ErrorInfo> {
    // A missing default (or known opt-in) upscaler says how to get it, as the SD models do.
    super::clarity::params::resolve(
        dir,
        ModelKind::Upscaler,
        params.upscaler.as_deref(),
        &config.upscale.default_upscaler,
    )
}

pub fn check_job(config: &Config, image: &Image, params: &JobParams) -> Result<(), ErrorInfo> {
    let limits = &config.limits;
    image
        .validate(limits.max_input_pixels)
        .map_err(|e| match e {
            ImageError::TooLarge { .. } => ErrorInfo::new(
                ErrorKind::ImageTooLarge,
                format!("{e} (limits.max_input_pixels)"),
            ),
            _ => ErrorInfo::new(ErrorKind::InvalidImage, e.to_string()),
        })?;
    if !(MIN_SCALE..=MAX_SCALE).contains(&params.scale) {
        return Err(ErrorInfo::new(
            ErrorKind::InvalidParams,
            format!(
                "scale must be between {MIN_SCALE} and {MAX_SCALE} (got {})",
                params.scale
            ),
        ));
    }
    crate::pipeline::clarity::params::validate(params)?;
    let (width, height) = output_size(image.width, image.height, params.scale);
    if let Some(region) = &params.preview {
        crate::pipeline::clarity::preview::check(region, (width, height))?;
    }
    let pixels = width * height;
    let bytes = pixels * image.pixel_bytes() as u64;
    // The result travels in one frame, whose length is a u32.
    let frame_room = u64::from(u32::MAX) - 1024;
    if pixels > limits.max_output_pixels || bytes > frame_room {
        return Err(ErrorInfo::new(
            ErrorKind::ImageTooLarge,
            format!(
                "the result would be {width}×{height} pixels, more than this daemon's limit \
                 ({} pixels in limits.max_output_pixels, {} bytes per frame); upscale a smaller \
                 area or use a smaller scale",
                limits.max_output_pixels, frame_room
            ),
        ));
    }
    Ok(())
}

impl JobChecker for Checker {
    fn check(&self, image: &Image, params: &JobParams) -> Result<(), ErrorInfo> {
        check_job(&self.config, image, params)?;
        if params.diffuses() {
            crate::pipeline::clarity::params::resolve_sd(&self.data_dir, &self.config, params)?;
            crate::pipeline::clarity::params::lora_files(&self.data_dir, params)?;
        }
        self.model(params).map(|_| ())
    }
}

/// A loaded network and the file state it was loaded from, so that a model
/// replaced on disk is reloaded.
struct Loaded {
    path: PathBuf,
    stamp: FileStamp,
    precision: Precision,
    net: Esrgan,
}

/// Runs upscaler jobs on the engine thread, keeping the last network warm.
pub struct Upscaler {
    engine: std::sync::Arc<Engine>,
    data_dir: DataDir,
    config: Config,
    loaded: Option<Loaded>,
}

impl Upscaler {
    pub fn new(engine: std::sync::Arc<Engine>, data_dir: DataDir, config: Config) -> Upscaler {
        Upscaler {
            engine,
            data_dir,
            config,
            loaded: None,
        }
    }

    /// Keeps `net`, loaded elsewhere from `path` as it was at `stamp` in `precision` (the
    /// warm-up's).
    pub(crate) fn adopt(
        &mut self,
        path: PathBuf,
        stamp: FileStamp,
        precision: Precision,
        net: Esrgan,
    ) {
        self.loaded = Some(Loaded {
            path,
            stamp,
            precision,
            net,
        });
    }

    /// The ESRGAN of `model`, loaded once and kept until another one is asked for.
    pub(crate) fn network(&mut self, model: &ModelFile) -> Result<&mut Esrgan, ErrorInfo> {
        let stamp = FileStamp::read(&model.path).map_err(|e| {
            ErrorInfo::new(
                ErrorKind::ModelNotFound,
                format!("{}: {e}", model.path.display()),
            )
        })?;
        let precision = self
            .config
            .engine
            .precisions(self.engine.execution_providers())
            .upscaler;
        let fresh = self
            .loaded
            .as_ref()
            .is_some_and(|l| l.path == model.path && l.stamp == stamp && l.precision == precision);
        if !fresh {
            self.loaded = None;
            tracing::info!("loading upscaler {} ({precision})", model.path.display());
            let cache = self.data_dir.cache();
            let net =
                Esrgan::load_as(&self.engine, &model.path, &cache, precision).map_err(|e| {
                    let kind = match e {
                        ModelError::Io(_) => ErrorKind::Io,
                        ModelError::Invalid(_) => ErrorKind::ModelInvalid,
                        ModelError::Runtime(_) => ErrorKind::Runtime,
                    };
                    ErrorInfo::new(kind, format!("{}: {e}", model.path.display()))
                })?;
            self.loaded = Some(Loaded {
                path: model.path.clone(),
                stamp,
                precision,
                net,
            });
        }
        Ok(&mut self.loaded.as_mut().expect("loaded just above").net)
    }
}

fn esrgan_error(error: EsrganError) -> ErrorInfo {
    match error {
        EsrganError::Cancelled => ErrorInfo::new(ErrorKind::Cancelled, "the job was cancelled"),
        other => ErrorInfo::new(ErrorKind::Runtime, other.to_string()),
    }
}

impl JobRunner for Upscaler {
    fn run(
        &mut self,
        image: Image,
        params: &JobParams,
        progress: &mut dyn ProgressSink,
    ) -> Result<JobOutput, ErrorInfo> {
        check_job(&self.config, &image, params)?;
        let model = resolve_model(&self.data_dir, &self.config, params)?;
        let mut timings = Vec::new();
        let mut clock = Instant::now();
        let mut lap = |name: &str, timings: &mut Vec<StageTiming>| {
            timings.push(StageTiming {
                name: name.to_owned(),
                seconds: clock.elapsed().as_secs_f64(),
            });
            clock = Instant::now();
        };
        let tiling = self.config.upscale.tiling();
        let format = PixelFormat::of(&image);
        let (target_w, target_h) = output_size(image.width, image.height, params.scale);
        let (target_w, target_h) = (target_w as usize, target_h as usize);
        let input = pixels::to_planar(&image);
        drop(image);
        let engine = self.engine.clone();
        let net = self.network(&model)?;
        lap("load", &mut timings);

        let passes = passes_needed(net.scale(), params.scale);
        let mut shrink = Shrink::default();
        let mut rgb = input.rgb.clone();
        for pass in 0..passes {
            // Later passes start from an upscaled image: shrinking it first so
            // the last pass lands near the target costs nothing in detail and
            // saves most of the work.
            if pass > 0 {
                let remaining = net.scale().pow(passes - pass) as f64;
                let w = (target_w as f64 / remaining).ceil() as usize;
                let h = (target_h as f64 / remaining).ceil() as usize;
                if w < rgb.shape()[2] && h < rgb.shape()[1] {
                    rgb = resize::lanczos(rgb.view(), w, h);
                }
            }
            let mut on_tile = |done: usize, total: usize| {
                progress.report(Step {
                    stage: 0,
                    stages: 1,
                    phase: "upscale",
                    step: pass + 1,
                    steps: passes,
                    tile: done as u32,
                    tiles: total as u32,
                    fraction: 0.95 * (pass as f32 + done as f32 / total.max(1) as f32)
                        / passes as f32,
                })
            };
            rgb = upscale_retrying(
                net,
                rgb.view(),
                &tiling,
                // The upscaler alone feeds each model what it was trained on.
                ChannelOrder::Rgb,
                &*engine,
                &mut shrink,
                &mut on_tile,
            )
            .map_err(esrgan_error)?;
        }
        lap("upscale", &mut timings);

        let output = Planar {
            rgb: resize::lanczos(rgb.view(), target_w, target_h),
            alpha: input
                .alpha
                .as_ref()
                .map(|a| resize::lanczos_plane(a.view(), target_w, target_h)),
        };
        let result = pixels::from_planar(&output, format);
        lap("resize", &mut timings);
        progress
            .report(Step {
                stage: 0,
                stages: 1,
                phase: "finish",
                step: 1,
                steps: 1,
                tile: 1,
                tiles: 1,
                fraction: 1.0,
            })
            .map_err(|_| ErrorInfo::new(ErrorKind::Cancelled, "the job was cancelled"))?;
        Ok(JobOutput {
            image: result,
            timings,
        })
    }
}

/// The smallest ESRGAN tile an out-of-memory retry goes down to, in input pixels.
const MIN_RETRY_TILE: usize = 32;

/// `tiling` with its tile halved `level` times.
fn halved(tiling: &Tiling, level: u32) -> Tiling {
    Tiling {
        tile: tiling.tile >> level,
        ..*tiling
    }
}

/// How many times `tiling`'s tile can be halved and stay at least 32 pixels and more than
/// twice its overlap.
fn halvings(tiling: &Tiling) -> u32 {
    (1..16)
        .take_while(|&k| {
            let t = halved(tiling, k);
            t.tile >= MIN_RETRY_TILE && t.tile > 2 * t.overlap
        })
        .count() as u32
}

/// ESRGAN over `rgb` with `tiling`; when its accelerator runs out of memory, the same pass
/// again with the tile halved (down to 32 pixels), then on the CPU at the configured tile
/// (`engine::retry_out_of_memory`). `shrink` keeps the tile that worked for the passes after.
pub fn upscale_retrying(
    net: &mut Esrgan,
    rgb: ArrayView3<f32>,
    tiling: &Tiling,
    order: ChannelOrder,
    recovery: &dyn Recovery,
    shrink: &mut Shrink,
    on_tile: &mut dyn FnMut(usize, usize) -> Result<(), Cancelled>,
) -> Result<Array3<f32>, EsrganError> {
    let describe = |level| format!("{}-pixel tiles", halved(tiling, level).tile);
    let size = Shrinkable {
        levels: halvings(tiling),
        describe: &describe,
    };
    retry_out_of_memory(recovery, shrink, &size, |level| {
        net.upscale(rgb, &halved(tiling, level), order, on_tile)
    })
}

impl MaybeOutOfMemory for EsrganError {
    fn out_of_memory(&self) -> Option<&str> {
        match self {
            EsrganError::Runtime(e) => e.out_of_memory(),
            _ => None,
        }
    }
}

/// ESRGAN passes needed for `scale` with a network of scale `net_scale`.
pub fn passes_needed(net_scale: u32, scale: f32) -> u32 {
    let mut passes = 0;
    let mut reached = 1.0f64;
    while reached < f64::from(scale) - 1e-6 && passes < MAX_PASSES && net_scale > 1 {
        reached *= f64::from(net_scale);
        passes += 1;
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_follow_the_scale() {
        assert_eq!(passes_needed(4, 1.0), 0);
        assert_eq!(passes_needed(4, 1.5), 1);
        assert_eq!(passes_needed(4, 4.0), 1);
        assert_eq!(passes_needed(4, 4.5), 2);
        assert_eq!(passes_needed(2, 8.0), 3);
        assert_eq!(passes_needed(2, 16.0), 3, "never more than three passes");
        assert_eq!(passes_needed(1, 4.0), 0);
    }

    #[test]
    fn output_sizes_round() {
        assert_eq!(output_size(3, 5, 1.5), (5, 8));
        assert_eq!(output_size(1, 1, 4.0), (4, 4));
    }

    #[test]
    fn bad_jobs_are_refused_with_typed_errors() {
        let config = Config::default();
        let image = |w: u32, h: u32, len: usize| Image {
            width: w,
            height: h,
            channels: tessera_protocol::Channels::Rgb,
            sample: tessera_protocol::SampleFormat::U8,
            transfer: tessera_protocol::Transfer::Srgb,
            data: vec![0; len],
        };
        let params = |scale| JobParams::upscaler_only(scale, None);
        assert_eq!(
            check_job(&config, &image(2, 2, 11), &params(4.0))
                .unwrap_err()
                .kind,
            ErrorKind::InvalidImage
        );
        assert_eq!(
            check_job(&config, &image(0, 2, 0), &params(4.0))
                .unwrap_err()
                .kind,
            ErrorKind::InvalidImage
        );
        assert_eq!(
            check_job(&config, &image(2, 2, 12), &params(0.5))
                .unwrap_err()
                .kind,
            ErrorKind::InvalidParams
        );
        assert_eq!(
            check_job(&config, &image(2, 2, 12), &params(f32::NAN))
                .unwrap_err()
                .kind,
            ErrorKind::InvalidParams
        );
        assert_eq!(
            check_job(&config, &image(8192, 8192, 8192 * 8192 * 3), &params(4.0))
                .unwrap_err()
                .kind,
            ErrorKind::ImageTooLarge
        );
        assert!(check_job(&config, &image(2, 2, 12), &params(16.0)).is_ok());
    }
}
