//! `tessera bench sd-step`: one UNet + ControlNet evaluation of a full-size SD 1.5, as a stage
//! runs it, on random weights.
//!
//! The benchmark writes a random SD 1.5-shaped checkpoint (LDM layout, f16) and ControlNet
//! (original layout) into a folder, compiles them in the asked precision, and runs the
//! evaluation through [`SdUnet`], the pipeline's own path: the stage's text context, residual
//! scales and hint embedding placed with the networks once, then per evaluation the latents
//! up, the ControlNet body into resident residuals, the UNet, the noise down. It reports the
//! first and the best warm evaluation, the bytes that crossed between host and device per
//! evaluation, the FLOP rate against ONNX Runtime's fp32 MatMul measured in the same run, the
//! peak resident memory, and the peak device memory where NVML can read it. Every output is
//! checked for NaN and ∞. Two comparisons on request: the host round trip the pipeline ran
//! before I/O binding (residuals down to host arrays, scaled there, up again), timed in the
//! same run; and, for an fp16 run, the same evaluation in fp32, whose output the fp16 one is
//! measured against.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array2, Array4, ArrayD, Axis, Ix4};

use super::control::residual_scales;
use super::controlled_unet::SdUnet;
use super::network_traits::{ControlledUnet, Prompts, StageConditioning};
use crate::engine::Engine;
use crate::engine::binding::{self, Traffic};
use crate::nets::bench::{
    ModelSize, TOKENS, gemm_peak, peak_rss_mib, random_array, unet_flops, unet_tensors,
    write_random,
};
use crate::nets::controlnet::{CompiledControlNet, ControlNet};
use crate::nets::sd::{Precision, SdOptions};
use crate::nets::unet::{CompiledUnet, Unet};
use crate::weights::sd;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// SD 1.5's size, or a small one for quick checks.
    pub size: ModelSize,
    pub latent: usize,
    /// Samples per call (2: one tile's CFG pair).
    pub batch: usize,
    /// Evaluations per path (at least 2: the first warms up).
    pub runs: usize,
    pub precision: Precision,
    /// Also time the host round trip.
    pub compare_host: bool,
}

/// One way of running the evaluation, timed.
#[derive(Clone, Copy, Debug)]
pub struct PathTiming {
    pub first_s: f64,
    /// The best of the evaluations after the first.
    pub warm_s: f64,
    /// What crossed between host and device in one warm evaluation.
    pub traffic: Traffic,
}

/// An fp16 evaluation against the same evaluation in fp32.
#[derive(Clone, Copy, Debug)]
pub struct Fp16Error {
    pub max_abs: f32,
    /// The fp32 output's largest magnitude (the scale of `max_abs`).
    pub max_reference: f32,
    pub mean_abs: f32,
}

/// What one benchmark run measured.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// The first evaluation's output (the noise prediction), for comparing devices.
    pub output: Vec<f32>,
    pub write_s: f64,
    pub compile_s: f64,
    pub session_s: f64,
    /// The stage's one-time uploads (context, scales, hints) and the hint encoder call.
    pub stage_traffic: Traffic,
    pub bound: PathTiming,
    pub host: Option<PathTiming>,
    pub fp16_error: Option<Fp16Error>,
    pub eval_gflop: f64,
    pub gemm_gflops: f64,
    pub peak_rss_mib: f64,
}

impl StepReport {
    pub fn fraction_of_peak(&self) -> f64 {
        self.eval_gflop / self.bound.warm_s / self.gemm_gflops
    }
}

/// The random inputs of one evaluation.
struct Inputs {
    /// `[batch, 4, latent, latent]`.
    sample: Array4<f32>,
    cond: Array2<f32>,
    uncond: Array2<f32>,
    /// `[tiles, 3, 8·latent, 8·latent]`: one hint per tile (the CFG pair shares it).
    hints: Array4<f32>,
    prompts: Prompts,
}

fn inputs(o: &StepOptions) -> anyhow::Result<Inputs> {
    let (tiles, prompts) = if o.batch.is_multiple_of(2) {
        (o.batch / 2, Prompts::Both)
    } else {
        (o.batch, Prompts::Cond)
    };
    let four = |a: ArrayD<f32>| a.into_dimensionality::<Ix4>();
    let two = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix2>();
    Ok(Inputs {
        sample: four(random_array(&[o.batch, 4, o.latent, o.latent], 3))?,
        cond: two(random_array(&[TOKENS, o.size.text_width], 4))?,
        uncond: two(random_array(&[TOKENS, o.size.text_width], 8))?,
        hints: four(
            random_array(&[tiles, 3, 8 * o.latent, 8 * o.latent], 5).mapv(|v| v.abs().min(1.0)),
        )?,
        prompts,
    })
}

const TIMESTEP: f32 = 500.0;
const RESEMBLANCE: f32 = 0.6;
const DECAY: f32 = 0.825;

/// The random checkpoint and ControlNet files of `size` in `dir`.
fn files(dir: &Path, size: &ModelSize) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join(format!("sd15-{}random.safetensors", size.tag)),
        dir.join(format!("controlnet-{}random.safetensors", size.tag)),
    )
}

/// Compiles the random networks of `size` in `dir` in `precision`.
fn compile(
    dir: &Path,
    size: &ModelSize,
    precision: Precision,
) -> anyhow::Result<(CompiledUnet, CompiledControlNet)> {
    let options = SdOptions {
        precision,
        config: None,
        patch: None,
    };
    let cache = dir.join("cache");
    let (checkpoint, controlnet) = files(dir, size);
    let unet = CompiledUnet::compile(&sd::unet(&checkpoint)?, &cache, &options)?;
    let cn = CompiledControlNet::compile(&sd::controlnet(&controlnet)?, &cache, &options)?;
    Ok((unet, cn))
}

fn finite(eps: &Array4<f32>, what: &str) -> anyhow::Result<()> {
    let bad = eps.iter().filter(|v| !v.is_finite()).count();
    anyhow::ensure!(
        bad == 0,
        "{what}: the predicted noise holds {bad} NaN or ∞ values of {}",
        eps.len()
    );
    Ok(())
}

/// Begins a stage on `net` with `x`'s conditioning; returns what it uploaded.
fn begin(net: &mut SdUnet, x: &Inputs) -> anyhow::Result<Traffic> {
    let before = net.traffic();
    net.begin_stage(&StageConditioning {
        cond: x.cond.view(),
        uncond: x.uncond.view(),
        scales: residual_scales(RESEMBLANCE, DECAY),
    })?;
    net.embed_hints(0, x.hints.view())?;
    Ok(net.traffic() - before)
}

/// One bound evaluation: its time, its traffic and its output.
fn bound_step(net: &mut SdUnet, x: &Inputs) -> anyhow::Result<(f64, Traffic, Array4<f32>)> {
    let before = net.traffic();
    let t = Instant::now();
    let eps = net.predict(0, x.sample.view(), TIMESTEP, x.prompts)?;
    let s = t.elapsed().as_secs_f64();
    finite(&eps, "UNet + ControlNet")?;
    Ok((s, net.traffic() - before, eps))
}

/// The host round trip the pipeline ran before I/O binding.
struct HostPath {
    unet: Unet,
    cn: ControlNet,
    context: ArrayD<f32>,
    embedding: ArrayD<f32>,
    timestep: ArrayD<f32>,
    scales: Vec<f32>,
}

impl HostPath {
    fn new(unet: Unet, cn: ControlNet, x: &Inputs) -> anyhow::Result<HostPath> {
        let n = x.sample.len_of(Axis(0));
        let rows: Vec<_> = (0..n)
            .map(|i| {
                let text = match x.prompts {
                    Prompts::Both if i >= n / 2 => &x.uncond,
                    _ => &x.cond,
                };
                text.view().insert_axis(Axis(0))
            })
            .collect();
        let context = ndarray::concatenate(Axis(0), &rows)?.into_dyn();
        let embedding = cn.embed_hint(x.hints.view().into_dyn())?;
        let repeats = n / embedding.shape()[0];
        let views: Vec<_> = (0..repeats).map(|_| embedding.view()).collect();
        let embedding = ndarray::concatenate(Axis(0), &views)?;
        Ok(HostPath {
            unet,
            cn,
            context,
            embedding,
            timestep: ArrayD::from_elem(vec![n], TIMESTEP),
            scales: residual_scales(RESEMBLANCE, DECAY).to_vec(),
        })
    }

    fn step(&mut self, engine: &Engine, x: &Inputs) -> anyhow::Result<(f64, Traffic)> {
        let before = binding::total();
        let t = Instant::now();
        let mut residuals = self.cn.residuals(
            x.sample.view().into_dyn(),
            self.timestep.view(),
            self.context.view(),
            self.embedding.view(),
        )?;
        for (r, &k) in residuals.iter_mut().zip(&self.scales) {
            r.mapv_inplace(|v| v * k);
        }
        let eps = self.unet.forward(
            engine,
            x.sample.view().into_dyn(),
            self.timestep.view(),
            self.context.view(),
            Some(&residuals),
        )?;
        let s = t.elapsed().as_secs_f64();
        finite(&eps.into_dimensionality::<Ix4>()?, "host round trip")?;
        Ok((s, binding::total() - before))
    }
}

/// Runs the benchmark in `dir` (about 7 GB of files; more with an fp16 reference).
pub fn sd_step(
    engine: &Arc<Engine>,
    dir: &Path,
    o: &StepOptions,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<StepReport> {
    let started = Instant::now();
    let (checkpoint, controlnet) = files(dir, &o.size);
    write_random(
        &checkpoint,
        &unet_tensors("model.diffusion_model.", false, &o.size),
        1,
    )?;
    write_random(
        &controlnet,
        &unet_tensors("control_model.", true, &o.size),
        2,
    )?;
    let write_s = started.elapsed().as_secs_f64();
    log(&format!("random checkpoints written in {write_s:.1} s"));

    let t = Instant::now();
    let (unet, cn) = compile(dir, &o.size, o.precision)?;
    let compile_s = t.elapsed().as_secs_f64();
    log(&format!("compiled ({}) in {compile_s:.1} s", o.precision));
    let eval_gflop = (unet_flops(&unet.config, o.latent, o.batch, true)
        + unet_flops(&cn.config.unet, o.latent, o.batch, false))
        / 1e9;
    let host_networks = o.compare_host.then(|| (unet.clone(), cn.clone()));

    let t = Instant::now();
    let mut bound_unet = Unet::new(unet);
    bound_unet.warm(engine, true)?;
    let mut net = SdUnet::new(engine.clone(), bound_unet, ControlNet::new(engine, cn)?);
    let mut host = match host_networks {
        Some((unet, cn)) => {
            // The same sessions (the engine's cache), so neither path holds more weights.
            let mut unet = Unet::new(unet);
            unet.warm(engine, true)?;
            Some(ControlNet::new(engine, cn).map(|cn| (unet, cn))?)
        }
        None => None,
    };
    let session_s = t.elapsed().as_secs_f64();
    log(&format!("sessions created in {session_s:.1} s"));

    let x = inputs(o)?;
    let stage_traffic = begin(&mut net, &x)?;
    let mut host = match host.take() {
        Some((unet, cn)) => Some(HostPath::new(unet, cn, &x)?),
        None => None,
    };

    let gemm_before = gemm_peak(engine, o.size.gemm_size())?;
    log(&format!("fp32 MatMul {gemm_before:.0} GFLOP/s"));
    let (first, _, first_eps) = bound_step(&mut net, &x)?;
    log(&format!("bound evaluation 1: {first:.2} s"));
    let host_first = match host.as_mut() {
        Some(h) => {
            let (s, _) = h.step(engine, &x)?;
            log(&format!("host round trip 1: {s:.2} s"));
            Some(s)
        }
        None => None,
    };
    let (mut warm, mut warm_traffic) = (f64::INFINITY, Traffic::default());
    let (mut host_warm, mut host_traffic) = (f64::INFINITY, Traffic::default());
    // The host is shared: the paths alternate, and the best of each is kept.
    for run in 2..=o.runs.max(2) {
        let (s, traffic, _) = bound_step(&mut net, &x)?;
        log(&format!("bound evaluation {run}: {s:.2} s"));
        (warm, warm_traffic) = (warm.min(s), traffic);
        if let Some(h) = host.as_mut() {
            let (s, traffic) = h.step(engine, &x)?;
            log(&format!("host round trip {run}: {s:.2} s"));
            (host_warm, host_traffic) = (host_warm.min(s), traffic);
        }
    }
    let gemm_after = gemm_peak(engine, o.size.gemm_size())?;
    log(&format!("fp32 MatMul {gemm_after:.0} GFLOP/s"));
    net.end_stage();
    let peak_rss = peak_rss_mib();
    drop((net, host));

    let fp16_error = if o.precision == Precision::F16 {
        log("the same evaluation in fp32, for the fp16 error");
        let (unet, cn) = compile(dir, &o.size, Precision::F32)?;
        let mut unet = Unet::new(unet);
        unet.warm(engine, true)?;
        let mut reference = SdUnet::new(engine.clone(), unet, ControlNet::new(engine, cn)?);
        begin(&mut reference, &x)?;
        let (_, _, want) = bound_step(&mut reference, &x)?;
        reference.end_stage();
        let diff = &first_eps - &want;
        Some(Fp16Error {
            max_abs: diff.iter().fold(0.0, |m, v| m.max(v.abs())),
            max_reference: want.iter().fold(0.0, |m, v| m.max(v.abs())),
            mean_abs: diff.iter().map(|v| v.abs()).sum::<f32>() / diff.len() as f32,
        })
    } else {
        None
    };

    Ok(StepReport {
        output: first_eps.iter().copied().collect(),
        write_s,
        compile_s,
        session_s,
        stage_traffic,
        bound: PathTiming {
            first_s: first,
            warm_s: warm,
            traffic: warm_traffic,
        },
        host: host_first.map(|first_s| PathTiming {
            first_s,
            warm_s: host_warm,
            traffic: host_traffic,
        }),
        fp16_error,
        eval_gflop,
        gemm_gflops: gemm_before.max(gemm_after),
        peak_rss_mib: peak_rss,
    })
}
