//! The Stable Diffusion commands: `models export-onnx` and `bench sd-step`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::ExportArgs;
use super::launch::Target;
use crate::engine::{Engine, EngineOptions};
use crate::nets::bench;
use crate::nets::export::{ExportOptions, export};
use crate::nets::sd::Precision;
use crate::store;
use crate::weights::sd::SdHyper;

pub fn export_onnx(target: &Target, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let dir = store::DataDir::open(&target.data_dir.path)?;
    let loras = args
        .loras
        .iter()
        .map(|s| parse_lora(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hyper = match (args.attention_heads, args.norm_groups) {
        (Some(attention_heads), Some(norm_groups)) => Some(SdHyper {
            attention_heads,
            norm_groups,
        }),
        _ => None,
    };
    let options = ExportOptions {
        checkpoint: args.checkpoint.clone(),
        vae: args.vae.clone(),
        controlnet: args.controlnet.clone(),
        loras,
        embeddings: args.embeddings.clone(),
        precision: if args.fp16 {
            Precision::F16
        } else {
            Precision::F32
        },
        hyper,
        skip_text_encoder: args.no_text_encoder,
        out_dir: args.out_dir.clone(),
        cache_dir: dir.cache(),
    };
    let written = export(&options)?;
    for file in written {
        println!("{}", file.display());
    }
    if args.no_text_encoder {
        println!("text encoder left out (--no-text-encoder)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `PATH:WEIGHT`, or just `PATH` (weight 1). The weight follows the last `:`, so Windows
/// drive letters stay part of the path.
fn parse_lora(spec: &str) -> anyhow::Result<(PathBuf, f32)> {
    if let Some((path, weight)) = spec.rsplit_once(':')
        && let Ok(w) = weight.parse::<f32>()
        && !path.is_empty()
    {
        return Ok((PathBuf::from(path), w));
    }
    Ok((PathBuf::from(spec), 1.0))
}

pub fn bench_sd_step(
    target: &Target,
    dir: Option<PathBuf>,
    latent: usize,
    batch: usize,
    threads: Option<usize>,
    runs: usize,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        latent >= 8 && latent.is_multiple_of(8) && batch > 0,
        "the latent size must be a multiple of 8, the batch at least 1"
    );
    let engine = Engine::new(EngineOptions {
        ort_lib: target.ort_lib_flag.clone(),
        data_dir: target.data_dir.path.clone(),
        intra_threads: threads,
    })?;
    let temp;
    let dir: &Path = match &dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path()
        }
    };
    println!(
        "SD 1.5 UNet + ControlNet, latent {latent}×{latent}, batch {batch}, {}, {}",
        engine.runtime_description(),
        engine.device_description()
    );
    let report = bench::sd_step(&engine, dir, latent, batch, runs, &mut |line| {
        println!("  {line}")
    })?;
    println!(
        "compile (translate, convert f16→f32, build graphs): {:.1} s",
        report.compile_s
    );
    println!(
        "session creation (UNet with residual inputs, ControlNet hint encoder + body): {:.1} s",
        report.session_s
    );
    println!(
        "evaluation: {:.2} s first, {:.2} s best of the others; {:.0} GFLOP",
        report.first_eval_s, report.eval_s, report.eval_gflop
    );
    println!(
        "evaluation rate: {:.0} GFLOP/s",
        report.eval_gflop / report.eval_s
    );
    println!("fp32 MatMul peak: {:.0} GFLOP/s", report.gemm_gflops);
    println!(
        "fraction of the GEMM peak: {:.0} %",
        100.0 * report.fraction_of_peak()
    );
    println!("peak RSS: {:.0} MiB", report.peak_rss_mib);
    Ok(ExitCode::SUCCESS)
}

pub fn bench_vae(
    target: &Target,
    dir: Option<PathBuf>,
    sides: &[usize],
    threads: Option<usize>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        sides.iter().all(|&s| s >= 64),
        "every side must be at least 64 pixels"
    );
    crate::server::keep_large_blocks_mapped();
    let engine = std::sync::Arc::new(Engine::new(EngineOptions {
        ort_lib: target.ort_lib_flag.clone(),
        data_dir: target.data_dir.path.clone(),
        intra_threads: threads,
    })?);
    let temp;
    let dir: &Path = match &dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path()
        }
    };
    let config = crate::config::DiffusionConfig::default();
    let bounded = crate::pipeline::clarity::vae::VaeTiling::new(
        config.vae_encoder_tile,
        config.vae_decoder_tile,
    );
    println!(
        "SD 1.5 VAE, random weights, {}, {}",
        engine.runtime_description(),
        engine.device_description()
    );
    println!("  side  pass    how                         seconds   peak MiB  estimate MiB");
    crate::pipeline::clarity::vae::bench::run(engine, dir, sides, bounded, &mut |r| {
        println!(
            "  {:>5} {:<7} {:<27} {:>8.1} {:>10.0} {:>12}",
            r.side,
            r.direction,
            r.mode,
            r.seconds,
            r.peak_mib,
            r.estimate_mib
                .map_or_else(String::new, |m| format!("{m:.0}"))
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn bench_clarity(
    target: &Target,
    dir: Option<PathBuf>,
    size: u32,
    scale: f32,
    runs: usize,
    threads: Option<usize>,
    steps: u32,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        size >= 8 && (1.0..=16.0).contains(&scale) && (1..=100).contains(&steps),
        "the size must be at least 8, the scale between 1 and 16 and the steps between 1 and 100"
    );
    // The job's memory as the daemon would hold it (`tessera serve` tunes the allocator so).
    crate::server::keep_large_blocks_mapped();
    let engine = std::sync::Arc::new(Engine::new(EngineOptions {
        ort_lib: target.ort_lib_flag.clone(),
        data_dir: target.data_dir.path.clone(),
        intra_threads: threads,
    })?);
    let temp;
    let dir: &Path = match &dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path()
        }
    };
    println!(
        "Clarity job, {size}×{size} ×{scale}, {steps} steps, random SD 1.5-sized models, {}, {}",
        engine.runtime_description(),
        engine.device_description()
    );
    let report = crate::pipeline::clarity::bench::clarity(
        engine,
        dir,
        size,
        scale,
        runs,
        steps,
        &mut |line| println!("  {line}"),
    )?;
    for (i, job) in report.jobs.iter().enumerate() {
        println!(
            "job {} ({}×{}): {:.1} s",
            i + 1,
            job.output.0,
            job.output.1,
            job.total_s
        );
        for (phase, s) in &job.phases {
            println!("  {phase:<10} {s:>8.1} s");
        }
    }
    println!(
        "UNet + ControlNet: {} evaluations, {:.0} GFLOP each, {:.2} s each = {:.0} GFLOP/s",
        report.evaluations,
        report.eval_gflop,
        report.eval_s(),
        report.eval_gflop / report.eval_s()
    );
    println!(
        "fp32 MatMul peak {:.0} GFLOP/s: the evaluation runs at {:.0} % of it",
        report.gemm_gflops,
        100.0 * report.fraction_of_peak()
    );
    println!("peak RSS: {:.0} MiB", report.peak_rss_mib);
    Ok(ExitCode::SUCCESS)
}
