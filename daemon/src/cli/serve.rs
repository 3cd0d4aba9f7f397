//! `tessera serve`: claim the socket, load ONNX Runtime, serve until told to stop.

use super::launch::Target;
use crate::config::Config;
use crate::engine::{Engine, EngineOptions, EngineTuning, ExecutionProvider, Faults};
use crate::pipeline::clarity::job::ClarityRunner;
use crate::pipeline::upscale::Checker;
use crate::server::hub::{DaemonInfo, EngineReport};
use crate::server::{self, ServeOptions, instance};
use crate::store::DataDir;
use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;

pub fn run(target: &Target, threads: Option<usize>, tray: bool) -> anyhow::Result<ExitCode> {
    // Before anything allocates: the daemon lives for the whole session.
    server::keep_large_blocks_mapped();
    if tray && !cfg!(all(feature = "tray", target_os = "linux")) {
        if cfg!(target_os = "linux") {
            anyhow::bail!(
                "this tessera has no tray: it is built with `cargo build --release -p tessera --features tray`"
            );
        }
        anyhow::bail!(
            "the tray icon exists on Linux only: run `tessera serve` without --tray (tessera-install's login entry does)"
        );
    }
    let dir = DataDir::open(&target.data_dir.path).with_context(|| {
        format!(
            "cannot use the data directory {}",
            target.data_dir.path.display()
        )
    })?;
    let _log = super::logging::init_daemon(&dir.logs())
        .with_context(|| format!("cannot write logs to {}", dir.logs().display()))?;
    let mut config = Config::load(&dir.config_file())?;
    if let Some(threads) = threads {
        config.engine.threads = threads;
    }
    let instance = match instance::claim(&target.address, &dir) {
        Ok(instance) => instance,
        Err(e @ instance::InstanceError::AlreadyRunning { .. }) => {
            eprintln!("tessera: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    crate::weights::remove_stale_conversions(&dir.cache(), crate::weights::STALE_CONVERSION_AGE);
    let ort_lib = target
        .ort_lib_flag
        .clone()
        .or(config.engine.ort_lib.clone());
    let engine = Arc::new(Engine::with_tuning(
        EngineOptions {
            ort_lib: ort_lib.clone(),
            data_dir: dir.root().to_path_buf(),
            intra_threads: (config.engine.threads > 0).then_some(config.engine.threads),
        },
        EngineTuning {
            execution_providers: execution_providers(&config, &dir, ort_lib.as_deref()),
            cpu_arena: config.engine.cpu_arena,
            vram_budget: config.engine.budget(),
            faults: Faults::from_env().map_err(anyhow::Error::msg)?,
            precision_hint: config.engine.precision_hint(),
            ..EngineTuning::default()
        },
    )?);
    let precisions = config.engine.precisions(engine.execution_providers());
    tracing::info!("precision: {}", precisions.describe());
    let mut runner = ClarityRunner::new(engine.clone(), dir.clone(), config.clone());
    let warm_up = config.serve.warm_up.then(|| runner.start_warm_up());
    let info = DaemonInfo {
        runtime: engine.runtime_description(),
        // The precision travels in the device line (the editors show it as it is).
        device: format!(
            "{}{DEVICE_PRECISION}{}",
            engine.device_description(),
            precisions.short()
        ),
        data_dir: dir.root().display().to_string(),
        engine: Some(Arc::new(EngineView(engine.clone()))),
        warm_up: warm_up.map(|w| Arc::new(move || w.report()) as _),
    };
    tracing::info!(
        "tessera {} using {} on {}",
        env!("CARGO_PKG_VERSION"),
        info.runtime,
        info.device
    );
    let checker = Arc::new(Checker::new(dir.clone(), config.clone()));
    let runner = Box::new(runner);
    let options = ServeOptions {
        data_dir: dir,
        address: target.address.clone(),
        limits: config.limits,
        info,
    };
    let address = target.address.clone();
    let serve = move |on_listening: Box<dyn FnOnce(server::Control) + Send>| {
        server::serve_controlled(options, runner, checker, on_listening)
    };
    #[cfg(all(feature = "tray", target_os = "linux"))]
    if tray {
        crate::tray::serve_with_tray(serve)
            .with_context(|| format!("cannot serve on {address}"))?;
        drop(instance);
        return Ok(ExitCode::SUCCESS);
    }
    serve(Box::new(|_| {})).with_context(|| format!("cannot serve on {address}"))?;
    drop(instance);
    Ok(ExitCode::SUCCESS)
}

/// The engine as the server reports it.
struct EngineView(Arc<Engine>);

impl EngineReport for EngineView {
    fn sessions(&self) -> Vec<String> {
        self.0.held_sessions()
    }
    fn warnings(&self) -> Vec<String> {
        self.0.warnings()
    }
    fn warning_mark(&self) -> u64 {
        self.0.warning_mark()
    }
    fn job_warnings(&self, mark: u64) -> Vec<String> {
        self.0.warnings_since(mark)
    }
    fn device_memory(&self) -> Option<tessera_protocol::DeviceMemory> {
        self.0
            .device_memory()
            .map(|m| tessera_protocol::DeviceMemory {
                device: m.name,
                total_bytes: m.total,
                free_bytes: m.free,
            })
    }
    fn session_budget(&self) -> Option<u64> {
        self.0.session_budget()
    }
    fn session_bytes(&self) -> u64 {
        self.0.session_bytes()
    }
}

/// Separates the devices from the precision in `Status::device`.
pub(crate) const DEVICE_PRECISION: &str = " · ";

/// The execution providers to try: `engine.execution_providers` from the configuration, else
/// the list recorded with the installed runtime when that is the library in use, else the CPU.
pub(crate) fn execution_providers(
    config: &Config,
    dir: &DataDir,
    ort_lib: Option<&std::path::Path>,
) -> Vec<ExecutionProvider> {
    let names = config.engine.execution_providers.clone().or_else(|| {
        let installed = crate::store::runtime::installed(dir)?;
        let in_use = crate::engine::locate_library(ort_lib, dir.root()).ok()?;
        (in_use == installed.library_path(dir)).then_some(installed.providers)
    });
    match names {
        // The configuration was validated when it was loaded; a record is ours.
        Some(names) => crate::engine::parse_providers(&names).unwrap_or_else(|e| {
            tracing::warn!("{e}; using the CPU");
            vec![ExecutionProvider::Cpu]
        }),
        None => vec![ExecutionProvider::Cpu],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_come_from_the_config_else_the_installed_runtime_in_use() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path().join("data")).unwrap();
        let library = dir.runtime().join("libonnxruntime.so.1.32.0");
        std::fs::write(&library, b"stand-in").unwrap();
        std::fs::write(
            dir.runtime().join("runtime.toml"),
            "package = \"onnxruntime-gpu\"\nversion = \"1.32.0\"\nlibrary = \"libonnxruntime.so.1.32.0\"\nsha256 = \"x\"\nwheel = \"w\"\nproviders = [\"cuda\", \"cpu\"]\n",
        )
        .unwrap();
        let cuda = ExecutionProvider::Cuda { device_id: 0 };
        let config = Config::default();
        assert_eq!(
            execution_providers(&config, &dir, Some(&library)),
            [cuda, ExecutionProvider::Cpu]
        );
        let other = temp.path().join("libonnxruntime.so.1.31.0");
        std::fs::write(&other, b"another library").unwrap();
        assert_eq!(
            execution_providers(&config, &dir, Some(&other)),
            [ExecutionProvider::Cpu],
            "the record describes its own library only"
        );
        let mut config = Config::default();
        config.engine.execution_providers = Some(vec!["directml:1".into()]);
        assert_eq!(
            execution_providers(&config, &dir, Some(&library)),
            [
                ExecutionProvider::DirectMl { adapter: Some(1) },
                ExecutionProvider::Cpu
            ]
        );
    }
}
