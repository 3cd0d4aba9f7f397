//! `tessera serve`: claim the socket, load ONNX Runtime, serve until told to stop.

use super::launch::Target;
use crate::config::Config;
use crate::engine::{Engine, EngineOptions};
use crate::pipeline::upscale::{Checker, Upscaler};
use crate::server::{self, ServeOptions, hub::DaemonInfo, instance};
use crate::store::DataDir;
use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;

pub fn run(target: &Target, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let dir = DataDir::open(&target.data_dir.path).with_context(|| {
        format!(
            "cannot use the data directory {}",
            target.data_dir.path.display()
        )
    })?;
    let _log = super::logging::init_daemon(&dir.logs())?;
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
    let engine = Engine::new(EngineOptions {
        ort_lib: target
            .ort_lib_flag
            .clone()
            .or(config.engine.ort_lib.clone()),
        data_dir: dir.root().to_path_buf(),
        intra_threads: (config.engine.threads > 0).then_some(config.engine.threads),
    })?;
    let info = DaemonInfo {
        runtime: engine.runtime_description(),
        device: engine.device_description(),
        data_dir: dir.root().display().to_string(),
    };
    tracing::info!(
        "tessera {} using {} on {}",
        env!("CARGO_PKG_VERSION"),
        info.runtime,
        info.device
    );
    let checker = Arc::new(Checker::new(dir.clone(), config.clone()));
    let runner = Box::new(Upscaler::new(engine, dir.clone(), config.clone()));
    server::serve(
        ServeOptions {
            data_dir: dir,
            address: target.address.clone(),
            limits: config.limits,
            info,
        },
        runner,
        checker,
    )
    .with_context(|| format!("cannot serve on {}", target.address))?;
    drop(instance);
    Ok(ExitCode::SUCCESS)
}
