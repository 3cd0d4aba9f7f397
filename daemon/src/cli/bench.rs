//! `tessera bench sd-step`, `tessera bench clarity` and `tessera bench vae`: the engine on the asked execution
//! providers and precision, the benchmark, and a report whose last block is one `key: value`
//! per line (what `scripts/gpu-check` collects into its table). A benchmark whose networks give
//! NaN or ∞ fails with a message saying so. Built with the cargo feature `dev` only.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::bench_args::{BenchCommand, BenchDevice, ClarityBenchArgs, SdStepArgs};
use super::launch::Target;
use crate::engine::binding::Traffic;
use crate::engine::device_memory::PeakSampler;
use crate::engine::{Engine, EngineOptions, EngineTuning, ExecutionProvider};
use crate::nets::precision::accelerated;
use crate::pipeline::clarity::bench::ClarityOptions;
use crate::pipeline::clarity::step_bench::StepOptions;

/// Runs the benchmark asked for.
pub fn run(target: &Target, command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::SdStep(args) => sd_step(target, &args),
        BenchCommand::Clarity(args) => clarity(target, &args),
        BenchCommand::Vae {
            dir,
            sides,
            threads,
        } => vae(target, &dir, &sides, threads),
    }
}

/// The largest and mean absolute difference of `got` to `want`, relative to `want`'s largest
/// value as well (`None` when the sizes differ).
fn difference(got: &[f32], want: &[f32]) -> Option<String> {
    if got.len() != want.len() || got.is_empty() {
        return None;
    }
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (mut max, mut sum) = (0f32, 0f64);
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    let mean = sum / got.len() as f64;
    Some(format!(
        "max {max:.3e} ({:.2e} of the largest value), mean {mean:.3e}",
        max / max_ref
    ))
}

/// Writes `bytes` to `--save`, and compares them, read as samples by `samples`, with the
/// `--compare` file's.
fn save_and_compare(
    device: &BenchDevice,
    bytes: &[u8],
    samples: impl Fn(&[u8]) -> Vec<f32>,
) -> anyhow::Result<Option<String>> {
    if let Some(path) = &device.save {
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let Some(path) = &device.compare else {
        return Ok(None);
    };
    let reference =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    difference(&samples(bytes), &samples(&reference))
        .map(Some)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds another size of output (another model size, latent or image size?)",
                path.display()
            )
        })
}

/// The engine on `device.providers`; an accelerator that cannot be used is an error here (a
/// benchmark that silently fell back to the CPU would report the wrong device).
fn engine(target: &Target, device: &BenchDevice) -> anyhow::Result<Arc<Engine>> {
    let providers = crate::engine::parse_providers(&device.providers)
        .map_err(|e| anyhow::anyhow!("--providers: {e}"))?;
    let engine = Engine::with_tuning(
        EngineOptions {
            ort_lib: target.ort_lib_flag.clone(),
            data_dir: target.data_dir.path.clone(),
            intra_threads: device.threads,
        },
        EngineTuning {
            execution_providers: providers,
            precision_hint: device.cpu_precision_hint.unwrap_or_default(),
            ..EngineTuning::default()
        },
    )?;
    if let Some((ep, reason)) = engine
        .dropped_providers()
        .iter()
        .find(|(ep, _)| *ep != ExecutionProvider::Cpu)
    {
        anyhow::bail!("{ep} was asked for but cannot be used here: {reason}");
    }
    Ok(Arc::new(engine))
}

/// A peak sampler of the device the first provider runs on, where NVML can read it.
fn device_sampler(engine: &Engine) -> Result<(PeakSampler, String), String> {
    match engine.execution_providers().first() {
        Some(ExecutionProvider::Cuda { device_id }) => {
            let sampler =
                PeakSampler::start((*device_id).max(0) as u32, Duration::from_millis(20))?;
            let name = sampler.device.clone();
            Ok((sampler, name))
        }
        Some(ExecutionProvider::Cpu) | None => Err("n/a (CPU)".into()),
        Some(other) => Err(format!("n/a ({other}: its memory cannot be read)")),
    }
}

fn peak_text(sampler: &Result<(PeakSampler, String), String>) -> String {
    match sampler {
        Ok((s, name)) => {
            let (peak, baseline) = s.peak();
            format!(
                "{} MiB ({} MiB above the {} MiB in use before; {name}, all processes)",
                peak >> 20,
                (peak - baseline) >> 20,
                baseline >> 20
            )
        }
        Err(why) => why.clone(),
    }
}

fn scratch_dir(
    dir: &Option<std::path::PathBuf>,
) -> anyhow::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Ok((d.clone(), None))
        }
        None => {
            let temp = tempfile::tempdir()?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}

fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

/// `up X, down Y in N calls (Z per call)`.
fn traffic_text(t: &Traffic) -> String {
    let per_call = t
        .bytes()
        .checked_div(t.calls)
        .map_or_else(String::new, |b| format!(" ({} per call)", mib(b)));
    format!(
        "up {}, down {} in {} calls{per_call}",
        mib(t.uploaded),
        mib(t.downloaded),
        t.calls
    )
}

fn sd_step(target: &Target, args: &SdStepArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.latent >= 8 && args.latent.is_multiple_of(8) && args.batch > 0,
        "the latent size must be a multiple of 8, the batch at least 1"
    );
    let engine = engine(target, &args.device)?;
    let precision = args
        .device
        .precision
        .on(accelerated(engine.execution_providers()));
    let (dir, _temp) = scratch_dir(&args.dir)?;
    println!(
        "SD 1.5 UNet + ControlNet ({4} models), latent {0}×{0}, batch {1}, {precision}, {2}, {3}",
        args.latent,
        args.batch,
        engine.runtime_description(),
        engine.device_description(),
        if args.models == crate::nets::bench::ModelSize::FULL {
            "full-size"
        } else {
            "small"
        }
    );
    let sampler = device_sampler(&engine);
    let options = StepOptions {
        size: args.models,
        latent: args.latent,
        batch: args.batch,
        runs: args.runs,
        precision,
        compare_host: args.compare_host,
    };
    let report =
        crate::pipeline::clarity::step_bench::sd_step(&engine, &dir, &options, &mut |line| {
            println!("  {line}")
        })?;
    let latent_bytes = 4 * (args.batch * 4 * args.latent * args.latent) as u64;
    let bytes: Vec<u8> = report.output.iter().flat_map(|v| v.to_le_bytes()).collect();
    let difference = save_and_compare(&args.device, &bytes, |b| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })?;
    println!("\nsummary");
    println!("providers: {}", engine.device_description());
    println!("precision: {precision}");
    println!("outputs finite: yes");
    if let Some(d) = &difference {
        println!("difference to the reference: {d}");
    }
    println!(
        "compile: {:.1} s; sessions: {:.1} s",
        report.compile_s, report.session_s
    );
    println!(
        "evaluation first: {:.3} s; warm: {:.3} s; {:.0} GFLOP, {:.0} GFLOP/s warm",
        report.bound.first_s,
        report.bound.warm_s,
        report.eval_gflop,
        report.eval_gflop / report.bound.warm_s
    );
    println!(
        "host-device per evaluation: {} (latents {} each way)",
        traffic_text(&report.bound.traffic),
        mib(latent_bytes)
    );
    println!(
        "host-device once per stage: {}",
        traffic_text(&report.stage_traffic)
    );
    if let Some(host) = &report.host {
        println!(
            "host round trip first: {:.3} s; warm: {:.3} s; per evaluation {}",
            host.first_s,
            host.warm_s,
            traffic_text(&host.traffic)
        );
        println!(
            "bound vs host round trip: {:.3}× the time, {:.4}× the bytes",
            report.bound.warm_s / host.warm_s,
            report.bound.traffic.bytes() as f64 / host.traffic.bytes().max(1) as f64
        );
    }
    if let Some(e) = &report.fp16_error {
        println!(
            "fp16 error against fp32: max |Δ| {:.3e} (output up to {:.3}, relative {:.2e}), mean |Δ| {:.3e}",
            e.max_abs,
            e.max_reference,
            e.max_abs / e.max_reference.max(f32::MIN_POSITIVE),
            e.mean_abs
        );
    }
    println!(
        "fp32 MatMul peak: {:.0} GFLOP/s; evaluation at {:.0} % of it",
        report.gemm_gflops,
        100.0 * report.fraction_of_peak()
    );
    println!("peak RSS: {:.0} MiB", report.peak_rss_mib);
    println!("peak device memory: {}", peak_text(&sampler));
    Ok(ExitCode::SUCCESS)
}

fn clarity(target: &Target, args: &ClarityBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.size >= 8 && (1.0..=16.0).contains(&args.scale) && (1..=100).contains(&args.steps),
        "the size must be at least 8, the scale between 1 and 16 and the steps between 1 and 100"
    );
    anyhow::ensure!(
        args.tile_batch != Some(0),
        "--tile-batch must be at least 1"
    );
    if args.models_only {
        let dir = args.dir.as_deref().expect("clap requires --dir");
        let seconds = crate::pipeline::clarity::bench::write_data_dir(dir, &args.models)?;
        println!(
            "random models and config.toml in {} ({seconds:.1} s)",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The job's memory as the daemon would hold it (`tessera serve` tunes the allocator so).
    crate::server::keep_large_blocks_mapped();
    let engine = engine(target, &args.device)?;
    let (dir, _temp) = scratch_dir(&args.dir)?;
    let options = ClarityOptions {
        models: args.models,
        size: args.size,
        scale: args.scale,
        runs: args.runs,
        steps: args.steps,
        precision: args.device.precision,
        vae_precision: args.vae_precision,
        tile_batch: args.tile_batch,
    };
    println!(
        "Clarity job, {0}×{0} ×{1}, {2} steps, random SD 1.5-sized models, {3}, {4}",
        args.size,
        args.scale,
        args.steps,
        engine.runtime_description(),
        engine.device_description()
    );
    let sampler = device_sampler(&engine);
    let report = crate::pipeline::clarity::bench::clarity(
        engine.clone(),
        Path::new(&dir),
        &options,
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
        println!(
            "  host-device, all networks: {}",
            traffic_text(&job.traffic)
        );
        println!(
            "  host-device, UNet + ControlNet: {}",
            traffic_text(&job.unet_traffic)
        );
    }
    let first = report.jobs.first().expect("at least one job");
    let last = report.jobs.last().expect("at least one job");
    // f32 samples in 0..1, compared in 8-bit levels.
    let difference = save_and_compare(&args.device, &report.output, |b| {
        b.chunks_exact(4)
            .map(|c| 255.0 * f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })?;
    println!("\nsummary");
    println!("providers: {}", engine.device_description());
    println!("precision: {}", report.precisions.describe());
    println!("outputs finite: yes");
    if let Some(d) = &difference {
        println!("image difference to the reference (8-bit levels): {d}");
    }
    println!("VAE passes redone in fp32: {}", report.vae_redos);
    println!(
        "job first: {:.2} s; warm: {} s",
        first.total_s,
        if report.jobs.len() > 1 {
            format!("{:.2}", last.total_s)
        } else {
            "n/a (--runs 1)".into()
        }
    );
    println!(
        "UNet + ControlNet: {} evaluations, {:.0} GFLOP each, {:.3} s each = {:.0} GFLOP/s",
        report.evaluations,
        report.eval_gflop,
        report.eval_s(),
        report.eval_gflop / report.eval_s()
    );
    println!(
        "host-device per job: {}; UNet + ControlNet {}",
        traffic_text(&last.traffic),
        traffic_text(&last.unet_traffic)
    );
    println!(
        "fp32 MatMul peak: {:.0} GFLOP/s; evaluation at {:.0} % of it",
        report.gemm_gflops,
        100.0 * report.fraction_of_peak()
    );
    println!("peak RSS: {:.0} MiB", report.peak_rss_mib);
    println!("peak device memory: {}", peak_text(&sampler));
    Ok(ExitCode::SUCCESS)
}

/// `tessera bench vae`: each way the pipeline can encode and decode a square canvas (whole,
/// Clarity's tiles, the bounded tiles), with its time and peak memory, on the CPU.
fn vae(
    target: &Target,
    dir: &Option<std::path::PathBuf>,
    sides: &[usize],
    threads: Option<usize>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        sides.iter().all(|&s| s >= 64),
        "every side must be at least 64 pixels"
    );
    crate::server::keep_large_blocks_mapped();
    let engine = Arc::new(Engine::new(EngineOptions {
        ort_lib: target.ort_lib_flag.clone(),
        data_dir: target.data_dir.path.clone(),
        intra_threads: threads,
    })?);
    let (dir, _temp) = scratch_dir(dir)?;
    let config = crate::config::DiffusionConfig::default();
    let bounded = crate::pipeline::clarity::vae_passes::VaeTiling::new(
        config.vae_encoder_tile,
        config.vae_decoder_tile,
    );
    println!(
        "SD 1.5 VAE, random weights, {}, {}",
        engine.runtime_description(),
        engine.device_description()
    );
    println!("  side  pass    how                         seconds   peak MiB  estimate MiB");
    crate::pipeline::clarity::vae_passes::bench::run(engine, &dir, sides, bounded, &mut |r| {
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
