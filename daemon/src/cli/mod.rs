//! The `tessera` command line: `serve` runs the daemon; `upscale`, `status`,
//! `stop` and `models` talk to it (starting it when needed); `runtime`
//! fetches the ONNX Runtime library; `doctor` checks the installation.

pub mod client;
mod commands;
mod doctor;
pub mod imagefile;
mod launch;
pub mod logging;
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
    /// Upscale an image file (starts the daemon if none is running)
    Upscale {
        /// Input image: PNG, JPEG, WebP or TIFF, 8 or 16 bits
        input: PathBuf,
        /// Output image; the extension picks the format
        #[arg(short, long)]
        output: PathBuf,
        /// Output size ÷ input size, 1 to 16
        #[arg(long, default_value_t = 4.0)]
        scale: f32,
        /// Upscaler in the data directory's models/upscalers/, with or without extension
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
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
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List every model with its size and SHA-256
    List {
        /// Skip the SHA-256 (faster the first time)
        #[arg(long)]
        no_hashes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Fetch the onnxruntime wheel with pip and unpack its library into the data directory
    Install {
        /// onnxruntime release
        #[arg(long, default_value = crate::store::runtime::DEFAULT_VERSION)]
        version: String,
        /// PyPI package: onnxruntime, onnxruntime-gpu, onnxruntime-directml
        #[arg(long, default_value = "onnxruntime")]
        package: String,
        /// Use this wheel file instead of downloading
        #[arg(long, value_name = "FILE")]
        wheel: Option<PathBuf>,
        /// Reinstall even if the same version is present
        #[arg(long)]
        force: bool,
    },
    /// Print the library the daemon would load
    Path,
}

/// Runs the command line; the process exits with the returned code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tessera: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: most of our errors
/// already quote their cause, which `{:#}` would print a second time.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
