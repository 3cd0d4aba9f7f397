//! `tessera bench clarity`: a whole Clarity job on random full-size weights (SD 1.5's UNet,
//! ControlNet tile, VAE and CLIP text encoder, a 64-filter 23-block ESRGAN like
//! 4x-UltraSharp), timed phase by phase, with the peak resident memory, the UNet + ControlNet
//! evaluation's FLOP rate against ONNX Runtime's fp32 GEMM peak measured in the same run, the
//! bytes that crossed between host and device, and the same job run twice to show what a warm
//! second job costs. The job's input is float, so its float result shows any NaN or ∞ the
//! networks produced (a failure).
//!
//! The random models are written as f32 safetensors in the layouts users have (an LDM
//! single-file checkpoint with the UNet and the text encoder, a diffusers-named VAE file, an
//! original-layout ControlNet, an old-architecture ESRGAN), so the job loads them through the
//! same loaders and the same job runner as the daemon. `bench/clarity_pytorch.py` runs the same
//! workload in PyTorch eager.

use std::path::Path;
use std::time::Instant;

use tessera_protocol::{Channels, Image, JobParams, SampleFormat, Transfer};

use super::job::ClarityRunner;
use crate::Cancelled;
use crate::config::Config;
use crate::engine::Engine;
use crate::engine::binding::{self, Traffic};
use crate::job::{JobRunner, ProgressSink, Step};
use crate::nets::bench::{ModelSize, gemm_peak, peak_rss_mib, unet_tensors, write_random_as};
use crate::nets::{PrecisionSetting, Precisions};
use crate::store::DataDir;

/// CLIP's vocabulary (the tokenizer's ids).
const CLIP_VOCAB: usize = 49408;

type Tensors = Vec<(String, Vec<usize>)>;

fn conv(t: &mut Tensors, name: &str, cin: usize, cout: usize, k: usize) {
    t.push((format!("{name}.weight"), vec![cout, cin, k, k]));
    t.push((format!("{name}.bias"), vec![cout]));
}

fn linear(t: &mut Tensors, name: &str, cin: usize, cout: usize) {
    t.push((format!("{name}.weight"), vec![cout, cin]));
    t.push((format!("{name}.bias"), vec![cout]));
}

fn norm(t: &mut Tensors, name: &str, c: usize) {
    t.push((format!("{name}.weight"), vec![c]));
    t.push((format!("{name}.bias"), vec![c]));
}

fn vae_resnet(t: &mut Tensors, name: &str, cin: usize, cout: usize) {
    norm(t, &format!("{name}.norm1"), cin);
    conv(t, &format!("{name}.conv1"), cin, cout, 3);
    norm(t, &format!("{name}.norm2"), cout);
    conv(t, &format!("{name}.conv2"), cout, cout, 3);
    if cin != cout {
        conv(t, &format!("{name}.conv_shortcut"), cin, cout, 1);
    }
}

fn vae_mid(t: &mut Tensors, name: &str, c: usize) {
    vae_resnet(t, &format!("{name}.resnets.0"), c, c);
    let a = format!("{name}.attentions.0");
    norm(t, &format!("{a}.group_norm"), c);
    for p in ["to_q", "to_k", "to_v", "to_out.0"] {
        linear(t, &format!("{a}.{p}"), c, c);
    }
    vae_resnet(t, &format!("{name}.resnets.1"), c, c);
}

/// SD 1.5's VAE in diffusers names, `size`'s widths.
pub(crate) fn vae_tensors(size: &ModelSize) -> Tensors {
    let b = size.vae_base;
    let vae = [b, 2 * b, 4 * b, 4 * b];
    let mut t = Vec::new();
    conv(&mut t, "encoder.conv_in", 3, vae[0], 3);
    let mut ch = vae[0];
    for (i, &out) in vae.iter().enumerate() {
        for j in 0..2 {
            vae_resnet(
                &mut t,
                &format!("encoder.down_blocks.{i}.resnets.{j}"),
                ch,
                out,
            );
            ch = out;
        }
        if i + 1 < vae.len() {
            conv(
                &mut t,
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                ch,
                ch,
                3,
            );
        }
    }
    vae_mid(&mut t, "encoder.mid_block", ch);
    norm(&mut t, "encoder.conv_norm_out", ch);
    conv(&mut t, "encoder.conv_out", ch, 8, 3);
    conv(&mut t, "quant_conv", 8, 8, 1);
    conv(&mut t, "post_quant_conv", 4, 4, 1);
    conv(&mut t, "decoder.conv_in", 4, vae[3], 3);
    vae_mid(&mut t, "decoder.mid_block", vae[3]);
    let mut ch = vae[3];
    for (i, &out) in vae.iter().rev().enumerate() {
        for j in 0..3 {
            vae_resnet(
                &mut t,
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                ch,
                out,
            );
            ch = out;
        }
        if i + 1 < vae.len() {
            conv(
                &mut t,
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                ch,
                ch,
                3,
            );
        }
    }
    norm(&mut t, "decoder.conv_norm_out", ch);
    conv(&mut t, "decoder.conv_out", ch, 3, 3);
    t
}

/// CLIP ViT-L/14's text tower under `prefix` (transformers names), `size`'s width and depth.
fn clip_tensors(prefix: &str, size: &ModelSize) -> Tensors {
    let (width, layers) = (size.text_width, size.text_layers);
    let mut t = Vec::new();
    let p = format!("{prefix}text_model.");
    t.push((
        format!("{p}embeddings.token_embedding.weight"),
        vec![CLIP_VOCAB, width],
    ));
    t.push((
        format!("{p}embeddings.position_embedding.weight"),
        vec![77, width],
    ));
    for l in 0..layers {
        let layer = format!("{p}encoder.layers.{l}");
        for q in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(&mut t, &format!("{layer}.self_attn.{q}"), width, width);
        }
        norm(&mut t, &format!("{layer}.layer_norm1"), width);
        norm(&mut t, &format!("{layer}.layer_norm2"), width);
        linear(&mut t, &format!("{layer}.mlp.fc1"), width, 4 * width);
        linear(&mut t, &format!("{layer}.mlp.fc2"), 4 * width, width);
    }
    norm(&mut t, &format!("{p}final_layer_norm"), width);
    t
}

/// A 4x-UltraSharp-shaped ESRGAN (64 filters, 23 RRDBs, growth 32, ×4 at full size) in the
/// old layout.
fn esrgan_tensors(size: &ModelSize) -> Tensors {
    let (nf, nb) = (size.esrgan_filters, size.esrgan_blocks);
    let gc = nf / 2;
    let mut t = Vec::new();
    conv(&mut t, "model.0", 3, nf, 3);
    for b in 0..nb {
        for r in 1..=3 {
            for k in 1..=5 {
                let out = if k == 5 { nf } else { gc };
                conv(
                    &mut t,
                    &format!("model.1.sub.{b}.RDB{r}.conv{k}.0"),
                    nf + (k - 1) * gc,
                    out,
                    3,
                );
            }
        }
    }
    conv(&mut t, &format!("model.1.sub.{nb}"), nf, nf, 3);
    for name in ["model.3", "model.6", "model.8"] {
        conv(&mut t, name, nf, nf, 3);
    }
    conv(&mut t, "model.10", nf, 3, 3);
    t
}

/// The names of the random models of `size` (checkpoint, VAE, ControlNet, upscaler).
fn model_names(size: &ModelSize) -> [String; 4] {
    ["sd15", "vae", "tile", "esrgan"].map(|n| format!("{n}-{}random", size.tag))
}

/// A data directory at `dir` holding the random model set of `size` (written unless it is
/// there) and a `config.toml` that makes them the defaults; returns the seconds spent.
pub fn write_data_dir(dir: &Path, size: &ModelSize) -> anyhow::Result<f64> {
    let data = DataDir::open(dir)?;
    let [checkpoint, vae, tile, esrgan] = model_names(size);
    let present = data
        .models(tessera_protocol::ModelKind::Checkpoint)
        .join(format!("{checkpoint}.safetensors"))
        .exists();
    let seconds = if present {
        0.0
    } else {
        write_models(&data, size)?
    };
    std::fs::write(
        data.config_file(),
        format!(
            "[diffusion]\ndefault_checkpoint = \"{checkpoint}\"\ndefault_vae = \"{vae}\"\n\
             default_controlnet = \"{tile}\"\n[upscale]\ndefault_upscaler = \"{esrgan}\"\n"
        ),
    )?;
    Ok(seconds)
}

/// Writes the random model set of `size` into `dir/models/…` (about 5.8 GB of f32 at full
/// size) and returns the seconds it took.
pub fn write_models(dir: &DataDir, size: &ModelSize) -> anyhow::Result<f64> {
    use tessera_protocol::ModelKind::*;
    let started = Instant::now();
    let [checkpoint_name, vae, tile, esrgan] = model_names(size);
    let mut checkpoint = unet_tensors("model.diffusion_model.", false, size);
    checkpoint.extend(clip_tensors("cond_stage_model.transformer.", size));
    let file = |name: &str| format!("{name}.safetensors");
    write_random_as(
        &dir.models(Checkpoint).join(file(&checkpoint_name)),
        &checkpoint,
        1,
        true,
    )?;
    write_random_as(
        &dir.models(Vae).join(file(&vae)),
        &vae_tensors(size),
        2,
        true,
    )?;
    write_random_as(
        &dir.models(ControlNet).join(file(&tile)),
        &unet_tensors("control_model.", true, size),
        3,
        true,
    )?;
    write_random_as(
        &dir.models(Upscaler).join(file(&esrgan)),
        &esrgan_tensors(size),
        4,
        true,
    )?;
    Ok(started.elapsed().as_secs_f64())
}

/// A deterministic RGB test image (gradients and a checker, many colours), in 8-bit steps
/// stored as f32 (so that the result comes back as f32, NaN and ∞ included).
pub fn test_image(size: u32) -> Image {
    let mut data = Vec::with_capacity((size * size * 3 * 4) as usize);
    for y in 0..size {
        for x in 0..size {
            for v in [
                x * 255 / size,
                y * 255 / size,
                ((x / 8 + y / 8) % 2) * 160 + (x * y) % 64,
            ] {
                data.extend((v as f32 / 255.0).to_le_bytes());
            }
        }
    }
    Image {
        width: size,
        height: size,
        channels: Channels::Rgb,
        sample: SampleFormat::F32,
        transfer: Transfer::Srgb,
        data,
    }
}

/// The samples of an f32 image that are NaN or ∞.
fn non_finite(image: &Image) -> usize {
    if image.sample != SampleFormat::F32 {
        return 0;
    }
    image
        .data
        .chunks_exact(4)
        .filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
        .count()
}

/// Discards progress (the job's own timings are what the benchmark reports).
struct Quiet;

impl ProgressSink for Quiet {
    fn report(&mut self, _step: Step) -> Result<(), Cancelled> {
        Ok(())
    }
}

/// What one benchmark job measured.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Seconds per phase, as the job reports them (`load`, `text`, `upscale`, …).
    pub phases: Vec<(String, f64)>,
    pub total_s: f64,
    pub output: (u32, u32),
    /// Every network call of the job.
    pub traffic: Traffic,
    /// The UNet + ControlNet's part of it (the stages' conditioning and every evaluation).
    pub unet_traffic: Traffic,
}

/// The whole benchmark.
#[derive(Debug, Clone)]
pub struct ClarityReport {
    /// The last job's image samples, for comparing devices.
    pub output: Vec<u8>,
    pub write_s: Option<f64>,
    pub precisions: Precisions,
    /// VAE passes redone in fp32 (an fp16 VAE that overflowed).
    pub vae_redos: usize,
    pub jobs: Vec<JobReport>,
    /// UNet + ControlNet evaluations of one job, and their GFLOP (all tiles, CFG pair).
    pub evaluations: usize,
    pub eval_gflop: f64,
    pub gemm_gflops: f64,
    pub peak_rss_mib: f64,
}

impl ClarityReport {
    /// Seconds per evaluation in the last job (its denoise phase over its evaluations).
    pub fn eval_s(&self) -> f64 {
        let job = self.jobs.last().expect("at least one job");
        let denoise = job
            .phases
            .iter()
            .filter(|(p, _)| p == "denoise")
            .map(|(_, s)| s)
            .sum::<f64>();
        denoise / self.evaluations.max(1) as f64
    }

    pub fn fraction_of_peak(&self) -> f64 {
        self.eval_gflop / self.eval_s() / self.gemm_gflops
    }
}

/// FLOPs of every UNet + ControlNet evaluation of a default job on a `size`² image at `scale`:
/// (evaluations, GFLOP per evaluation averaged over the stages).
fn workload(params: &JobParams, size: u32, models: &ModelSize) -> (usize, f64) {
    use super::stage::{Rules, StageSetup};
    use crate::pipeline::sampling::{Update, schedule};
    let stages = super::stage_plan::plan(
        (size as usize, size as usize),
        {
            let (w, h) = crate::pipeline::upscale::output_size(size, size, params.scale);
            (w as usize, h as usize)
        },
        params.scale,
        params.creativity,
        params.multistep_factor,
        params.seed,
        false,
    );
    let full = schedule::full(
        params.sampler,
        params.steps as usize,
        &schedule::Training::sd15(),
    );
    let config = models.unet_config();
    let empty = ndarray::Array2::<f32>::zeros((77, models.text_width));
    let diffusion = crate::config::DiffusionConfig::default();
    let (mut evaluations, mut gflop) = (0, 0.0);
    for (index, stage) in stages.iter().enumerate() {
        let setup = StageSetup {
            stage,
            index,
            stages: stages.len(),
            rules: Rules::CLARITY,
            schedule: &full,
            update: Update::of(params.sampler),
            tile: (params.tile_width as usize, params.tile_height as usize),
            batch: diffusion.tile_batch.unwrap_or(1),
            cond: empty.view(),
            uncond: empty.view(),
            cfg: params.dynamic,
            resemblance: params.resemblance,
            decay: params.decay,
            vae: super::vae_passes::VaePolicy::bounded(super::vae_passes::VaeTiling::new(
                diffusion.vae_encoder_tile,
                diffusion.vae_decoder_tile,
            )),
        };
        let evals = setup.run().evaluations();
        let per_eval: f64 = setup
            .grid()
            .iter()
            .map(|t| {
                let side = ((t.w * t.h) as f64).sqrt().round() as usize;
                crate::nets::bench::unet_flops(&config, side, 2, true)
                    + crate::nets::bench::unet_flops(&config, side, 2, false)
            })
            .sum();
        evaluations += evals;
        gflop += per_eval / 1e9 * evals as f64;
    }
    (evaluations, gflop / evaluations.max(1) as f64)
}

/// What `tessera bench clarity` runs.
#[derive(Clone, Copy, Debug)]
pub struct ClarityOptions {
    /// The random models' size.
    pub models: ModelSize,
    /// Input side in pixels.
    pub size: u32,
    pub scale: f32,
    /// Jobs in a row on one runner (the second is the warm case).
    pub runs: usize,
    /// Sampler steps of a full denoise.
    pub steps: u32,
    pub precision: PrecisionSetting,
    pub vae_precision: PrecisionSetting,
    /// Diffusion tiles per call (`None`: the device's choice).
    pub tile_batch: Option<usize>,
}

/// Runs the benchmark: writes the models into `dir` unless they are there, runs the default
/// Clarity job (without its LoRAs and embedding, which the random set lacks) on a `size`²
/// image at `scale` with `steps` sampler steps, `runs` times on one runner.
pub fn clarity(
    engine: std::sync::Arc<Engine>,
    dir: &Path,
    options: &ClarityOptions,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<ClarityReport> {
    let ClarityOptions {
        size,
        scale,
        runs,
        steps,
        ..
    } = *options;
    let data = DataDir::open(dir)?;
    let [checkpoint, vae, tile, esrgan] = model_names(&options.models);
    let write_s = if data
        .models(tessera_protocol::ModelKind::Checkpoint)
        .join(format!("{checkpoint}.safetensors"))
        .exists()
    {
        None
    } else {
        let s = write_models(&data, &options.models)?;
        log(&format!("random models written in {s:.1} s"));
        Some(s)
    };
    let gemm_size = options.models.gemm_size();
    let gemm_before = gemm_peak(&engine, gemm_size)?;
    log(&format!("fp32 MatMul {gemm_before:.0} GFLOP/s"));
    let mut config = Config::default();
    config.diffusion.default_checkpoint = checkpoint;
    config.diffusion.default_vae = vae;
    config.diffusion.default_controlnet = tile;
    config.upscale.default_upscaler = esrgan;
    config.engine.precision = options.precision;
    config.engine.vae_precision = options.vae_precision;
    config.diffusion.tile_batch = options.tile_batch;
    let precisions = config.engine.precisions(engine.execution_providers());
    let mut runner = ClarityRunner::new(engine.clone(), data, config);
    let params = JobParams {
        scale,
        steps,
        prompt: "masterpiece, best quality, highres".into(),
        negative_prompt: "(worst quality, low quality, normal quality:2)".into(),
        ..JobParams::default()
    };
    let (evaluations, eval_gflop) = workload(&params, size, &options.models);
    let mut jobs = Vec::new();
    let mut output = Vec::new();
    for run in 1..=runs.max(1) {
        let (traffic_before, unet_before) = (binding::total(), runner.unet_traffic());
        let started = Instant::now();
        // Each run's picture differs by one sample, so that no run takes the last one's
        // pre-upscale and encode from the re-run cache: every run is a whole job.
        let mut image = test_image(size);
        image.data[..4].copy_from_slice(&(run as f32 / 255.0).to_le_bytes());
        let out = runner
            .run(image, &params, &mut Quiet)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let total_s = started.elapsed().as_secs_f64();
        let bad = non_finite(&out.image);
        anyhow::ensure!(
            bad == 0,
            "job {run}: the result holds {bad} NaN or ∞ samples of {}",
            out.image.data.len() / 4
        );
        let traffic = binding::total() - traffic_before;
        let unet_traffic = runner.unet_traffic() - unet_before;
        let phases: Vec<(String, f64)> = out
            .timings
            .iter()
            .map(|t| (t.name.clone(), t.seconds))
            .collect();
        let line: Vec<String> = phases
            .iter()
            .map(|(p, s)| format!("{p} {s:.1} s"))
            .collect();
        log(&format!("job {run}: {total_s:.1} s [{}]", line.join(", ")));
        output = out.image.data.clone();
        jobs.push(JobReport {
            phases,
            total_s,
            output: (out.image.width, out.image.height),
            traffic,
            unet_traffic,
        });
    }
    let gemm_after = gemm_peak(&engine, gemm_size)?;
    log(&format!("fp32 MatMul {gemm_after:.0} GFLOP/s"));
    Ok(ClarityReport {
        output,
        write_s,
        precisions,
        vae_redos: runner.vae_redos(),
        jobs,
        evaluations,
        eval_gflop,
        gemm_gflops: gemm_before.max(gemm_after),
        peak_rss_mib: peak_rss_mib(),
    })
}
