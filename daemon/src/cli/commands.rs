//! What each client-side command does.

use super::launch::{self, Target};
use super::{Cli, Command, ModelsCommand, RuntimeCommand, client::ClientError, imagefile};
use crate::store::accelerator::{RuntimePlan, runtime_plan};
use crate::store::{self, registry, runtime};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tessera_protocol::{ErrorKind, JobParams, paths};

/// Exit code of a job stopped by Ctrl-C (the shell's convention for SIGINT).
const EXIT_CANCELLED: u8 = 130;
/// Exit code of `status` when no daemon runs.
const EXIT_NOT_RUNNING: u8 = 3;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = paths::data_dir(cli.data_dir.as_deref())?;
    let address = paths::socket_address(cli.socket.as_deref(), &data_dir);
    let target = Target {
        data_dir,
        address,
        data_dir_flag: cli.data_dir,
        socket_flag: cli.socket,
        ort_lib_flag: cli.ort_lib,
    };
    if let Command::Serve { threads, tray } = cli.command {
        return super::serve::run(&target, threads, tray);
    }
    super::logging::init_client();
    match cli.command {
        Command::Serve { .. } => unreachable!("handled above"),
        Command::Upscale {
            inputs,
            output,
            overwrite,
            job,
            no_start,
        } => {
            if super::batch::is_batch(&inputs, &output) {
                upscale_batch(
                    &target,
                    &inputs,
                    &output,
                    &job.to_params(),
                    overwrite,
                    no_start,
                )
            } else {
                upscale(&target, &inputs[0], &output, job.to_params(), no_start)
            }
        }
        Command::Status => status(&target),
        Command::Doctor { manifest } => super::doctor::run(&target, manifest.as_deref()),
        Command::Stop => stop(&target),
        Command::Models {
            command: ModelsCommand::List { no_hashes },
        } => list_models(&target, !no_hashes),
        Command::Models {
            command: ModelsCommand::ExportOnnx(args),
        } => super::export::export_onnx(&target, &args),
        #[cfg(feature = "dev")]
        Command::Bench { command } => super::bench::run(&target, command),
        #[cfg(not(feature = "dev"))]
        Command::Bench { .. } => bail!(
            "this tessera was built without benchmarks; build one with them: \
             cargo build --release -p tessera --features dev"
        ),
        Command::Runtime {
            command:
                RuntimeCommand::Install {
                    version,
                    package,
                    providers,
                    wheel,
                    force,
                    pip_index_url,
                },
        } => {
            let plan = runtime_plan(package, providers.as_deref())?;
            install_runtime(
                &target,
                runtime::InstallOptions {
                    version: version
                        .unwrap_or_else(|| runtime::default_version(&plan.package).into()),
                    package: plan.package.clone(),
                    wheel,
                    force,
                    index_url: pip_index_url,
                },
                &plan,
            )
        }
        Command::Runtime {
            command: RuntimeCommand::Path,
        } => runtime_path(&target),
    }
}

fn upscale(
    target: &Target,
    input: &std::path::Path,
    output: &std::path::Path,
    params: JobParams,
    no_start: bool,
) -> anyhow::Result<ExitCode> {
    // Refuse an unknown output type before any work is done.
    image::ImageFormat::from_path(output)
        .map_err(|_| imagefile::ImageFileError::UnknownFormat(output.to_path_buf()))?;
    let image = imagefile::read(input)?;
    let (width, height) = (image.width, image.height);
    let mut client = if no_start {
        launch::connect(target)?
    } else {
        launch::connect_or_start(target)?
    };

    // Ctrl-C cancels the job (once it has a number) instead of killing us.
    let job = Arc::new(AtomicU64::new(0));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (job, interrupted, canceller) = (job.clone(), interrupted.clone(), client.canceller());
        ctrlc::set_handler(move || {
            if interrupted.swap(true, Ordering::SeqCst) {
                std::process::exit(i32::from(EXIT_CANCELLED));
            }
            eprintln!("\ntessera: cancelling (press Ctrl-C again to quit at once)");
            let id = job.load(Ordering::SeqCst);
            if id != 0 {
                let _ = canceller.cancel(id);
            }
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let accepted = client.submit(image, params)?;
    job.store(accepted.job, Ordering::SeqCst);
    if interrupted.load(Ordering::SeqCst) {
        client.canceller().cancel(accepted.job)?;
    }
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:44} [{bar:32}] {percent:>3}% {elapsed_precise}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    if accepted.position > 0 {
        bar.set_message(format!("queued ({} ahead)", accepted.position));
    }
    // Warnings come as the job's whole list so far: print each new one once, above the bar.
    let mut warned = 0;
    let mut warn = |warnings: &[String], bar: &ProgressBar| {
        for warning in warnings.iter().skip(warned) {
            // `suspend`, not `println`: a hidden bar (stderr not a terminal) prints nothing.
            bar.suspend(|| eprintln!("tessera: warning: {warning}"));
        }
        warned = warned.max(warnings.len());
    };
    let outcome = client.wait(accepted.job, |p| {
        warn(&p.warnings, &bar);
        bar.set_message(super::batch::progress_text(p));
        bar.set_position((p.fraction * 1000.0) as u64);
    });
    let done = match outcome {
        Ok(done) => {
            warn(&done.warnings, &bar);
            bar.finish_and_clear();
            done
        }
        Err(e) => {
            bar.finish_and_clear();
            return upscale_failed(e);
        }
    };
    finish_upscale(input, output, width, height, done)
}

/// The exit of an upscale whose job did not finish.
fn upscale_failed(error: ClientError) -> anyhow::Result<ExitCode> {
    match error {
        ClientError::Daemon(e) if e.kind == ErrorKind::Cancelled => {
            eprintln!("tessera: cancelled");
            Ok(ExitCode::from(EXIT_CANCELLED))
        }
        e => Err(e.into()),
    }
}

/// Writes a finished job's image and prints what it took.
fn finish_upscale(
    input: &Path,
    output: &Path,
    width: u32,
    height: u32,
    done: tessera_protocol::Done,
) -> anyhow::Result<ExitCode> {
    if let Some(note) = imagefile::write(&done.image, output)? {
        eprintln!("tessera: note: {note}");
    }
    let timings: Vec<String> = done
        .timings
        .iter()
        .map(|t| format!("{} {:.2} s", t.name, t.seconds))
        .collect();
    println!(
        "{} ({width}×{height}) → {} ({}×{}) in {:.2} s [{}]",
        input.display(),
        output.display(),
        done.image.width,
        done.image.height,
        done.timings.iter().map(|t| t.seconds).sum::<f64>(),
        timings.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn upscale_batch(
    target: &Target,
    inputs: &[std::path::PathBuf],
    out_dir: &std::path::Path,
    params: &JobParams,
    overwrite: bool,
    no_start: bool,
) -> anyhow::Result<ExitCode> {
    let items = super::batch::plan(inputs, out_dir)?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the folder {}", out_dir.display()))?;
    let mut client = if no_start {
        launch::connect(target)?
    } else {
        launch::connect_or_start(target)?
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let in_flight = super::batch::InFlight::default();
    {
        let (interrupted, in_flight, canceller) =
            (interrupted.clone(), in_flight.clone(), client.canceller());
        ctrlc::set_handler(move || {
            if interrupted.swap(true, Ordering::SeqCst) {
                std::process::exit(i32::from(EXIT_CANCELLED));
            }
            eprintln!("\ntessera: cancelling (press Ctrl-C again to quit at once)");
            for job in in_flight.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = canceller.cancel(*job);
            }
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let outcome = super::batch::run(
        &mut client,
        items,
        params,
        overwrite,
        &interrupted,
        &in_flight,
    );
    for (input, reason) in &outcome.failed {
        eprintln!("tessera: {} failed: {reason}", input.display());
    }
    if outcome.cancelled {
        eprintln!("tessera: cancelled");
        return Ok(ExitCode::from(EXIT_CANCELLED));
    }
    Ok(if outcome.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status(target: &Target) -> anyhow::Result<ExitCode> {
    let mut client = match launch::connect(target) {
        Ok(client) => client,
        Err(ClientError::NotRunning { .. }) => {
            println!("not running (socket {})", target.address);
            return Ok(ExitCode::from(EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    let status = client.status()?;
    println!(
        "running: tessera {} on {}",
        status.daemon_version, target.address
    );
    println!("runtime: {}", status.runtime);
    match status.device.split_once(super::serve::DEVICE_PRECISION) {
        Some((device, precision)) => {
            println!("device:  {device}");
            println!("precision: {precision}");
        }
        None => println!("device:  {}", status.device),
    }
    match status.running {
        Some(job) => println!(
            "job:     {job} ({:.0}% done{})",
            status.running_fraction * 100.0,
            status
                .running_eta_seconds
                .map(|s| format!(", {} left", super::batch::short_duration(s)))
                .unwrap_or_default()
        ),
        None => println!("job:     idle"),
    }
    println!("queued:  {}", status.queued);
    if let Some(line) = status.warm_up.as_ref().map(warm_up_line) {
        println!("warm-up: {line}");
    }
    if status.resident_bytes > 0 {
        println!("memory:  {} resident", human_size(status.resident_bytes));
    }
    if let Some(gpu) = &status.device_memory {
        println!(
            "gpu:     {}, {} of {} free",
            gpu.device,
            human_size(gpu.free_bytes),
            human_size(gpu.total_bytes)
        );
    }
    if let Some(budget) = status.session_budget_bytes {
        println!(
            "budget:  sessions hold about {} of {}",
            human_size(status.session_bytes),
            human_size(budget)
        );
    }
    if status.sessions.is_empty() {
        println!("models:  none loaded");
    } else {
        println!("models:  {} warm sessions", status.sessions.len());
        for session in &status.sessions {
            println!("         {session}");
        }
    }
    println!("clients: {}", status.clients);
    println!("data:    {}", status.data_dir);
    for warning in &status.warnings {
        println!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The start-up warm-up in a few words.
fn warm_up_line(w: &tessera_protocol::WarmUp) -> String {
    if !w.loading.is_empty() {
        format!(
            "loading {} ({} of {} parts done, {:.1} s so far)",
            w.loading, w.done, w.parts, w.seconds
        )
    } else if !w.error.is_empty() {
        format!("stopped after {:.1} s: {}", w.seconds, w.error)
    } else {
        format!("the default models were warm after {:.1} s", w.seconds)
    }
}

fn stop(target: &Target) -> anyhow::Result<ExitCode> {
    match launch::connect(target) {
        Ok(mut client) => {
            client.shutdown()?;
            println!("stopped the daemon on {}", target.address);
        }
        Err(ClientError::NotRunning { .. }) => {
            println!("no daemon is running on {}", target.address)
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn list_models(target: &Target, hashes: bool) -> anyhow::Result<ExitCode> {
    let dir = store::DataDir::open(&target.data_dir.path)?;
    let models = registry::entries(&dir, hashes)?;
    if models.is_empty() {
        println!("no models in {}", dir.models_root().display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<11} {:<28} {:>10}  {:<64}  FILE",
        "KIND", "NAME", "SIZE", "SHA256"
    );
    for model in models {
        println!(
            "{:<11} {:<28} {:>10}  {:<64}  {}",
            format!("{:?}", model.kind).to_lowercase(),
            model.name,
            human_size(model.size),
            model.sha256.as_deref().unwrap_or("-"),
            model.file
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn install_runtime(
    target: &Target,
    options: runtime::InstallOptions,
    plan: &RuntimePlan,
) -> anyhow::Result<ExitCode> {
    let dir = store::DataDir::open(&target.data_dir.path)?;
    eprintln!(
        "tessera: installing {}=={} into {} ({})",
        options.package,
        options.version,
        dir.runtime().display(),
        plan.reason
    );
    let mut installed = runtime::install(&dir, &options)?;
    if let Some(cuda) = &installed.cuda {
        eprintln!("tessera: {}", cuda.summary(&dir.runtime()));
    }
    if let Some(providers) = &plan.providers {
        installed = store::plugins::install_for(
            &dir,
            providers,
            &store::plugins::PluginInstallOptions {
                version: None,
                wheel: None,
                force: options.force,
                index_url: options.index_url.clone(),
            },
        )?;
        for plugin in &installed.plugins {
            eprintln!(
                "tessera: {} {} ({} files, {}) in {}",
                plugin.package,
                plugin.version,
                plugin.files.len(),
                human_size(plugin.bytes()),
                plugin.folder(&dir).display()
            );
        }
        eprintln!(
            "tessera: execution providers: {}",
            installed.providers.join(", ")
        );
    }
    println!("{}", installed.library_path(&dir).display());
    Ok(ExitCode::SUCCESS)
}

fn runtime_path(target: &Target) -> anyhow::Result<ExitCode> {
    let found =
        crate::engine::locate_library(target.ort_lib_flag.as_deref(), &target.data_dir.path);
    match found {
        Ok(path) => {
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(super::human_size(999), "999 B");
        assert_eq!(super::human_size(67_040_989), "67.0 MB");
    }
}
