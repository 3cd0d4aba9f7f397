//! The `tessera` command line: `serve` runs the daemon; `upscale`, `status`,
//! `stop` and `models` talk to it (starting it when needed); `runtime`
//! fetches the ONNX Runtime library; `doctor` checks the installation; `bench` runs the
//! benchmarks in a build with the cargo feature `dev` (and says how to get one otherwise).

mod batch;
#[cfg(feature = "dev")]
mod bench;
#[cfg(feature = "dev")]
mod bench_args;
pub use tessera_protocol::client;
mod commands;
pub use crate::store::accelerator::{RuntimePlan, runtime_plan};
#[cfg(feature = "dev")]
pub use bench_args::{BenchCommand, BenchDevice, ClarityBenchArgs, SdStepArgs};
mod doctor;
mod export;
pub mod imagefile;
mod launch;
pub mod logging;
pub mod params;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "AI upscaling for image editors, served from a resident daemon"
)]
pub struct Cli {
    /// Data directory (models, runtime, cache, logs) [env: TESSERA_DATA_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Socket path (or pipe name on Windows) [env: TESSERA_SOCKET]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<String>,
    /// ONNX Runtime library [env: TESSERA_ORT_LIB, then ORT_DYLIB_PATH, then the data directory's runtime/]
    #[arg(long, global = true, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (one per user; logs to stderr and the data directory)
    Serve {
        /// Threads per network call (default: one per CPU core)
        #[arg(long)]
        threads: Option<usize>,
        /// Show a tray icon (idle / busy / error) with the current job, Pause/Resume, Open
        /// models folder, Open log and Quit
        #[arg(long, hide = !cfg!(feature = "tray"))]
        tray: bool,
    },
    /// Upscale image files (starts the daemon if none is running)
    Upscale {
        /// Input images (PNG, JPEG, WebP or TIFF, 8 or 16 bits), or folders of them
        #[arg(required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Output image, whose extension picks the format (png, jpg, webp, tif); for several
        /// inputs or a folder, the folder the results go to under their input's names
        #[arg(short, long)]
        output: PathBuf,
        /// Replace results that exist already (a batch skips them otherwise)
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        job: Box<params::JobArgs>,
        /// Fail instead of starting a daemon when none is running
        #[arg(long)]
        no_start: bool,
    },
    /// Show whether the daemon runs and what it is doing
    Status,
    /// Ask the daemon to shut down
    Stop,
    /// The models in the data directory
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Check the installation: runtime, execution providers, models, service, plug-ins
    Doctor {
        /// Check the models against this manifest instead of the built-in one
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },
    /// The ONNX Runtime library
    Runtime {
        #[command(subcommand)]
        command: RuntimeCommand,
    },
    /// Benchmarks (not part of the tests)
    #[cfg(feature = "dev")]
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// This build has no benchmarks (they need the cargo feature `dev`): says so
    #[cfg(not(feature = "dev"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `models export-onnx` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// SD 1.5 single-file checkpoint or diffusers folder
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// VAE to use instead of the checkpoint's (LDM or diffusers)
    #[arg(long, value_name = "PATH")]
    pub vae: Option<PathBuf>,
    /// ControlNet (LDM .pth/.safetensors or diffusers)
    #[arg(long, value_name = "PATH")]
    pub controlnet: Option<PathBuf>,
    /// LoRA fused into UNet and text encoder, with its multiplier (repeatable)
    #[arg(long = "lora", value_name = "PATH:WEIGHT")]
    pub loras: Vec<String>,
    /// Textual-inversion embedding for the text encoder (repeatable)
    #[arg(long = "embedding", value_name = "PATH")]
    pub embeddings: Vec<PathBuf>,
    /// fp16 weights and arithmetic (inputs and outputs stay fp32), for GPU execution providers
    #[arg(long)]
    pub fp16: bool,
    /// Export without the text encoder
    #[arg(long)]
    pub no_text_encoder: bool,
    /// Attention heads, for models that are not SD 1.5-sized (default 8, or the diffusers config's)
    #[arg(long, value_name = "N", requires = "norm_groups")]
    pub attention_heads: Option<usize>,
    /// GroupNorm groups, for models that are not SD 1.5-sized (default 32, or the diffusers config's)
    #[arg(long, value_name = "N", requires = "attention_heads")]
    pub norm_groups: Option<usize>,
    /// Output folder
    pub out_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List every model with its size and SHA-256
    List {
        /// Skip the SHA-256 (faster the first time)
        #[arg(long)]
        no_hashes: bool,
    },
    /// Write the SD 1.5 graphs as standard .onnx files with their weights beside them
    // Boxed: its paths make it the one large variant (larger still on Windows).
    ExportOnnx(Box<ExportArgs>),
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Fetch the onnxruntime wheel with pip and unpack its library into the data directory (for
    /// onnxruntime-gpu also the CUDA and cuDNN libraries its metadata names, into runtime/cuda/),
    /// and the plugin providers the machine's GPU wants (OpenVINO, WebGPU) into runtime/plugins/
    Install {
        /// onnxruntime release [default: 1.32.0; 1.31.1 for onnxruntime-gpu]
        #[arg(long)]
        version: Option<String>,
        /// PyPI package: onnxruntime, onnxruntime-gpu, onnxruntime-directml [default: the one
        /// the providers need, else the one that fits this machine's GPU]
        #[arg(long)]
        package: Option<String>,
        /// Execution providers to install and use, best first, comma-separated (e.g.
        /// `openvino:gpu,cpu`, `webgpu`, `cuda`); plugin providers are fetched into
        /// runtime/plugins/ [default: chosen for this machine's GPU]
        #[arg(long, value_name = "LIST")]
        providers: Option<String>,
        /// Use this wheel file instead of downloading
        #[arg(long, value_name = "FILE")]
        wheel: Option<PathBuf>,
        /// Reinstall even if the same version is present
        #[arg(long)]
        force: bool,
        /// Package index for pip instead of the configured one (a mirror; the tests' local index)
        #[arg(long, value_name = "URL", env = "TESSERA_PIP_INDEX_URL")]
        pip_index_url: Option<String>,
    },
    /// Print the library the daemon would load
    Path,
}

/// Runs the command line; the process exits with the returned code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that only print (`tessera models list | head`) end quietly when their reader
    // goes away, as Unix tools do, instead of panicking in `println!`. The others keep ignoring
    // SIGPIPE: a daemon or a job's client whose peer vanished reports it as an error.
    #[cfg(unix)]
    if matches!(
        cli.command,
        Command::Status | Command::Models { .. } | Command::Doctor { .. }
    ) {
        // SAFETY: called before any other thread exists; restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tessera: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once (see [`crate::store::one_line`]).
pub fn one_line(error: &anyhow::Error) -> String {
    crate::store::one_line(error.as_ref())
}
