//! `tessera-install`: prepares a machine for Tessera. Today it creates the
//! data directory, puts the ONNX Runtime library in place (from the
//! onnxruntime wheel, through the user's own pip, or from a library the user
//! already has) and reports which models are present. Registering the
//! service, placing the editor plug-ins and downloading the default models
//! build on these steps.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tessera::store::{DataDir, registry, runtime};
use tessera_protocol::{ModelKind, paths};

#[derive(Debug, Parser)]
#[command(
    name = "tessera-install",
    version,
    about = "Set up Tessera for this user"
)]
struct Args {
    /// Data directory [env: TESSERA_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use this ONNX Runtime library instead of fetching one
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// PyPI package to take the runtime from (onnxruntime, onnxruntime-gpu, onnxruntime-directml)
    #[arg(long, default_value = "onnxruntime")]
    package: String,
    /// onnxruntime release
    #[arg(long, default_value = runtime::DEFAULT_VERSION)]
    ort_version: String,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-install: {}", tessera::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let location = paths::data_dir(args.data_dir.as_deref())?;
    let dir = DataDir::open(&location.path).with_context(|| {
        format!(
            "cannot create the data directory {}",
            location.path.display()
        )
    })?;
    println!("data directory: {}", dir.root().display());

    match &args.ort_lib {
        Some(lib) => {
            let found = tessera::engine::locate_library(Some(lib), dir.root())?;
            println!(
                "ONNX Runtime:   {} (yours; pass it to `tessera serve --ort-lib` or set TESSERA_ORT_LIB)",
                found.display()
            );
        }
        None => {
            let installed = runtime::install(
                &dir,
                &runtime::InstallOptions {
                    package: args.package,
                    version: args.ort_version,
                    ..runtime::InstallOptions::default()
                },
            )?;
            println!(
                "ONNX Runtime:   {} {} ({})",
                installed.package,
                installed.version,
                installed.library_path(&dir).display()
            );
        }
    }

    for kind in ModelKind::ALL {
        let models = registry::list(&dir, kind)?;
        let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
        let shown = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        println!("{:<15} {shown}", format!("{}:", kind.folder()));
    }
    if registry::list(&dir, ModelKind::Upscaler)?.is_empty() {
        println!(
            "\nNo upscaler yet: put an ESRGAN model (e.g. RealESRGAN_x4plus.pth) into {}",
            dir.models(ModelKind::Upscaler).display()
        );
    }
    Ok(())
}
