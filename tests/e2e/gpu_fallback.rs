//! Fallback that never loses a job, on a machine without a GPU: `TESSERA_FAULTS` (see
//! `docs/hardening.md`) gives the daemon a simulated accelerator that fails on purpose — a
//! probe that errors or gives wrong numbers, a session that cannot be built, out-of-memory on
//! chosen calls — and the daemon drops the provider with its reason, moves networks to the
//! CPU and retries with smaller calls, the job finishes with the clean run's image, and the
//! client hears every warning over the wire. Also `tessera doctor`'s one line per GPU
//! provider on this GPU-less machine.

use tessera_e2e::{Daemon, test_image};
use tessera_protocol::{Done, JobParams, Progress};

/// Clarity's defaults with 16×16 tiles, so that the ×2 job's latent has four tiles.
fn params() -> JobParams {
    JobParams {
        scale: 2.0,
        tile_width: 16,
        tile_height: 16,
        ..JobParams::default()
    }
}

/// A diffusion daemon with `config` and `faults`; the job's result, progress and status.
fn job(config: &str, faults: &str) -> (Done, Vec<Progress>, tessera_protocol::Status) {
    let daemon = Daemon::prepare_diffusion(config)
        .with_env("TESSERA_FAULTS", faults)
        .start();
    let mut client = daemon.client();
    let mut events = Vec::new();
    let done = client
        .upscale(test_image(48, 40), params(), |p| events.push(p.clone()))
        .unwrap_or_else(|e| panic!("the job failed with faults {faults:?}: {e}"));
    let status = client.status().unwrap();
    (done, events, status)
}

/// The warnings of a finished job as the client got them: the last progress's list is a
/// prefix of the result's (the list only grows).
fn warnings(done: &Done, events: &[Progress]) -> Vec<String> {
    for pair in events.windows(2) {
        assert!(
            pair[1].warnings.starts_with(&pair[0].warnings),
            "warnings only grow: {:?} then {:?}",
            pair[0].warnings,
            pair[1].warnings
        );
    }
    if let Some(last) = events.last() {
        assert!(done.warnings.starts_with(&last.warnings));
    }
    done.warnings.clone()
}

#[test]
fn a_provider_whose_probe_fails_is_dropped_at_start_with_its_reason() {
    for (fault, reason) in [
        ("probe", "its probe failed"),
        ("probe=wrong", "its probe gave wrong numbers"),
    ] {
        let (done, events, status) = job("", &format!("accelerator, {fault}"));
        assert!(status.device.starts_with("CPU"), "{}", status.device);
        let dropped = format!("simulated GPU is not used: {reason}");
        assert!(
            status.warnings.iter().any(|w| w.starts_with(&dropped)),
            "{:?}",
            status.warnings
        );
        let told = warnings(&done, &events);
        assert!(told.iter().any(|w| w.starts_with(&dropped)), "{told:?}");
    }
}

#[test]
fn a_working_accelerator_gives_a_clean_job_without_warnings() {
    let (done, events, status) = job("", "accelerator");
    assert!(
        status.device.starts_with("simulated GPU, then CPU"),
        "{}",
        status.device
    );
    assert!(status.warnings.is_empty(), "{:?}", status.warnings);
    assert!(warnings(&done, &events).is_empty());
    assert!(status.session_bytes > 0);
}

#[test]
fn a_session_that_fails_to_build_on_the_accelerator_runs_on_the_cpu_with_a_warning() {
    let (clean, _, _) = job("", "accelerator");
    let (done, events, status) = job("", "accelerator, build=VAE decoder");
    assert_eq!(
        done.image, clean.image,
        "the CPU computes what the accelerator would"
    );
    let told = warnings(&done, &events);
    assert!(
        told.iter().any(|w| w.starts_with("VAE decoder")
            && w.contains("could not be prepared on simulated GPU")
            && w.contains("runs on the CPU")),
        "{told:?}"
    );
    assert!(
        status
            .sessions
            .iter()
            .any(|s| s.starts_with("VAE decoder") && s.ends_with("(on the CPU)")),
        "{:?}",
        status.sessions
    );
    assert!(status.warnings.iter().any(|w| w.starts_with("VAE decoder")));
}

#[test]
fn out_of_gpu_memory_retries_with_a_smaller_batch_then_on_the_cpu_with_the_same_image() {
    let config = "[diffusion]\ntile_batch = 2\n";
    let (clean, _, _) = job(config, "accelerator");
    // The UNet's second and third calls run out of memory: the second at 2 tiles per call,
    // the third (the evaluation again, at 1 tile per call), then the UNet moves to the CPU.
    let (done, events, status) = job(config, "accelerator, oom=UNet+ControlNet@2+2");
    assert_eq!(done.image, clean.image);
    let told = warnings(&done, &events);
    let unet: Vec<&String> = told
        .iter()
        .filter(|w| w.starts_with("UNet+ControlNet"))
        .collect();
    assert_eq!(unet.len(), 2, "{told:?}");
    assert!(unet[0].contains("runs with 1 tile per call"), "{}", unet[0]);
    assert!(
        unet[1].contains("even with 1 tile per call") && unet[1].contains("runs on the CPU"),
        "{}",
        unet[1]
    );
    assert!(
        status
            .sessions
            .iter()
            .any(|s| s.starts_with("UNet+ControlNet") && s.ends_with("(on the CPU)")),
        "{:?}",
        status.sessions
    );
}

#[test]
fn out_of_gpu_memory_esrgan_retries_with_half_tiles() {
    let upscaler_only = JobParams::upscaler_only(4.0, None);
    let run = |config: &str, faults: &str| {
        let daemon = Daemon::prepare(config)
            .with_env("TESSERA_FAULTS", faults)
            .start();
        let mut client = daemon.client();
        client
            .upscale(test_image(80, 72), upscaler_only.clone(), |_| {})
            .unwrap()
    };
    // The first call at 64-pixel tiles fails: the pass runs again at 32, which is what a
    // clean run at 32 computes.
    let done = run(
        "[upscale]\ntile = 64\noverlap = 4\n",
        "accelerator, oom=ESRGAN@1",
    );
    let clean = run("[upscale]\ntile = 32\noverlap = 4\n", "accelerator");
    assert_eq!(done.image, clean.image);
    assert_eq!(done.warnings.len(), 1, "{:?}", done.warnings);
    assert!(
        done.warnings[0].contains("32-pixel tiles"),
        "{}",
        done.warnings[0]
    );
}

#[test]
fn doctor_says_in_one_line_why_each_gpu_provider_is_not_used() {
    let daemon = Daemon::prepare("");
    let output = daemon.command(["doctor"]).output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let line = |prefix: &str| {
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with(prefix))
            .collect();
        assert_eq!(lines.len(), 1, "one line for {prefix:?} in\n{out}");
        lines[0].to_owned()
    };
    if !cfg!(windows) {
        assert!(
            line("note     DirectML: not used:").contains("Windows only"),
            "{out}"
        );
    }
    if !cfg!(target_os = "macos") {
        assert!(
            line("note     CoreML: not used:").contains("macOS only"),
            "{out}"
        );
    }
    // The test library is the CPU-only package: CUDA is not in it.
    let cuda = line("note     CUDA: not used:");
    assert!(
        cuda.contains("no CUDA provider") && cuda.contains("onnxruntime-gpu"),
        "{cuda}"
    );

    // With the simulated accelerator and a probe that fails, doctor says so too.
    let daemon = daemon.with_env("TESSERA_FAULTS", "accelerator, probe=wrong");
    let output = daemon.command(["doctor"]).output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.lines()
            .any(|l| l.contains("simulated GPU: not used: its probe gave wrong numbers")),
        "{out}"
    );
}

#[test]
fn the_cli_prints_the_jobs_warnings_and_the_daemons() {
    let daemon = Daemon::prepare_diffusion("")
        .with_env("TESSERA_FAULTS", "accelerator, build=VAE decoder")
        .start();
    let input = daemon.dir.path().join("in.png");
    image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, 90])
    })
    .save(&input)
    .unwrap();
    let output = daemon.dir.path().join("out.png");
    let run = daemon
        .command(["upscale", "--no-start", "--creativity", "0.35", "-o"])
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tessera: warning: VAE decoder"))
        .collect();
    assert_eq!(warned.len(), 1, "printed once:\n{stderr}");
    assert!(warned[0].contains("runs on the CPU"), "{}", warned[0]);

    let status = daemon.command(["status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("warning: VAE decoder") && l.contains("could not be prepared")),
        "{stdout}"
    );
    assert!(stdout.contains("(on the CPU)"), "{stdout}");
}
