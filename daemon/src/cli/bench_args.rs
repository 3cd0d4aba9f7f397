//! The arguments of `tessera bench` (cargo feature `dev`): which benchmark, its sizes, and the
//! device it runs on.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One SD 1.5 UNet + ControlNet evaluation on random full-size weights, as a stage runs it:
    /// first and warm time, host↔device bytes, device memory, against the GEMM peak
    SdStep(SdStepArgs),
    /// A whole Clarity job on random full-size models: per-phase times, peak memory, the
    /// UNet + ControlNet rate against the GEMM peak
    Clarity(ClarityBenchArgs),
    /// SD 1.5's VAE on random full-size weights: time and peak memory of each way to encode
    /// and decode a square canvas (whole, Clarity's tiles, the bounded tiles)
    Vae {
        /// Folder for the random VAE (335 MB; kept and reused when given)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Canvas sides in pixels, comma-separated
        #[arg(long, value_delimiter = ',', default_values_t = [512, 768, 1024])]
        sides: Vec<usize>,
        /// ONNX Runtime threads (default: one per core)
        #[arg(long)]
        threads: Option<usize>,
    },
}

/// Where and how a benchmark runs.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchDevice {
    /// Execution providers, best first, as in config.toml's engine.execution_providers
    /// (cpu, cuda, cuda:N, directml, directml:N, coreml, openvino:cpu, openvino:gpu, webgpu,
    /// tensorrt-rtx); a listed accelerator that cannot be used here is an error
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    pub providers: Vec<String>,
    /// What a plugin provider's CPU device computes f32 graphs in: auto (the configured
    /// engine.cpu_precision_hint's default), fp32, bf16 or fp16
    #[arg(long, value_name = "HINT")]
    pub cpu_precision_hint: Option<crate::engine::PrecisionHint>,
    /// Precision of the UNet, ControlNet, text encoder and ESRGAN: auto (fp16 on an
    /// accelerator, fp32 on the CPU), fp32 or fp16
    #[arg(long, default_value = "auto")]
    pub precision: crate::nets::PrecisionSetting,
    /// ONNX Runtime threads (default: one per core)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the output (sd-step: the first noise prediction, f32; clarity: the last image's
    /// samples) to FILE, as the reference of a later --compare
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Report the output's difference to a --save of another run (e.g. the CPU provider in
    /// fp32, the same models and sizes)
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,
}

/// `bench sd-step` arguments.
#[derive(Debug, clap::Args)]
pub struct SdStepArgs {
    /// Folder for the random checkpoints and the converted weights (about 7 GB; default: a temporary folder, removed afterwards)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Latent size (the image is 8× larger)
    #[arg(long, default_value_t = 64)]
    pub latent: usize,
    /// Batch (2: a CFG pair)
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Evaluations (at least 2: the first warms up; the best of the others is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The random models: SD 1.5's size (full) or the same architecture about ten times
    /// narrower (small: a quick check of the machinery, not of the speed)
    #[arg(long, default_value = "full")]
    pub models: crate::nets::bench::ModelSize,
    /// Also time the host round trip (residuals to host arrays and back, as before I/O
    /// binding), alternating with the bound path in the same run
    #[arg(long)]
    pub compare_host: bool,
    #[command(flatten)]
    pub device: BenchDevice,
}

/// `bench clarity` arguments.
#[derive(Debug, clap::Args)]
pub struct ClarityBenchArgs {
    /// Folder for the random models (about 5.8 GB; kept and reused when given; a RAM disk
    /// such as /dev/shm spares the disk)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Input side in pixels (the input is square)
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Scale factor
    #[arg(long, default_value_t = 2.0)]
    pub scale: f32,
    /// Jobs in a row on the same warm models (the second shows the warm cost)
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Sampler steps of a full denoise (Clarity's 18). Fewer steps make a run that only
    /// measures peak memory cheaper: memory depends on the shapes, not on the step count
    #[arg(long, default_value_t = 18)]
    pub steps: u32,
    /// The random models: SD 1.5's size (full) or the same architecture about ten times
    /// narrower (small)
    #[arg(long, default_value = "full")]
    pub models: crate::nets::bench::ModelSize,
    /// The VAE's precision (fp32 by default: SD 1.5's VAE overflows fp16; an fp16 pass that
    /// gives NaN or ∞ is redone in fp32)
    #[arg(long, default_value = "fp32")]
    pub vae_precision: crate::nets::PrecisionSetting,
    /// Diffusion tiles per network call (default: the device's, see diffusion.tile_batch)
    #[arg(long)]
    pub tile_batch: Option<usize>,
    /// Only write the random models into --dir, with a config.toml that makes them the
    /// defaults (for `tessera serve` on that data directory, as bench/compare.sh does)
    #[arg(long, requires = "dir")]
    pub models_only: bool,
    #[command(flatten)]
    pub device: BenchDevice,
}
