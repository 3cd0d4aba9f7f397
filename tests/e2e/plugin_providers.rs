//! Plugin execution providers over the real socket, with OpenVINO's CPU device standing in for
//! every plugin (its wheel is installed beside the tests' ONNX Runtime by `scripts/test`):
//! the tiny Clarity job through `openvino:cpu` gives the CPU provider's image within a stated
//! tolerance, its networks report which nodes ran where, the second start of a daemon loads
//! the compiled blobs the first one cached, and a broken or missing plugin library is one line
//! in `tessera doctor` and a CPU fallback, never a failed job.

use std::time::Instant;

use tessera_e2e::{Daemon, ort_lib, test_image};
use tessera_protocol::{Done, JobParams, Status};

/// Clarity's defaults with 16×16 tiles, so that the ×2 job's latent has four tiles.
fn params() -> JobParams {
    JobParams {
        scale: 2.0,
        tile_width: 16,
        tile_height: 16,
        ..JobParams::default()
    }
}

const OPENVINO_CPU: &str = "[engine]\nexecution_providers = [\"openvino:cpu\", \"cpu\"]\n";

/// The OpenVINO plugin installed beside the tests' ONNX Runtime (`scripts/test`).
fn openvino_installed() -> bool {
    let folder = ort_lib()
        .parent()
        .expect("the library has a folder")
        .join("plugins/openvino");
    let found = folder
        .join("libonnxruntime_providers_openvino_plugin.so")
        .is_file();
    assert!(
        found || std::env::var_os("TESSERA_REQUIRE_OPENVINO").is_none(),
        "the OpenVINO plugin is not in {} (scripts/test installs it)",
        folder.display()
    );
    if !found {
        eprintln!(
            "skipped: no OpenVINO plugin in {} (scripts/test installs it)",
            folder.display()
        );
    }
    found
}

fn run_job(daemon: &Daemon) -> (Done, Status) {
    let mut client = daemon.client();
    let done = client
        .upscale(test_image(48, 40), params(), |_| {})
        .unwrap_or_else(|e| panic!("the job failed: {e}"));
    let status = client.status().unwrap();
    (done, status)
}

/// Seconds a finished job spent in `phase`.
fn seconds(done: &Done, phase: &str) -> f64 {
    done.timings
        .iter()
        .find(|t| t.name == phase)
        .map_or(0.0, |t| t.seconds)
}

/// Largest and mean absolute difference of two images' samples, in 8-bit levels.
fn difference(a: &Done, b: &Done) -> (u8, f64) {
    assert_eq!(a.image.data.len(), b.image.data.len());
    let mut max = 0u8;
    let mut sum = 0u64;
    for (x, y) in a.image.data.iter().zip(&b.image.data) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
    }
    (max, sum as f64 / a.image.data.len() as f64)
}

/// Stops the daemon and waits for it to exit.
fn stop(daemon: &mut Daemon) {
    let status = daemon.command(["stop"]).status().unwrap();
    assert!(status.success());
    daemon
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the daemon exits when stopped");
}

/// OpenVINO computes in its own order (and fuses), so its numbers differ from the CPU
/// provider's in the last bits, and twenty sampler steps carry that on: after them the tiny
/// job's pixels differ by at most this many 8-bit levels, and on average by less than
/// [`MEAN_TOLERANCE`]. A wrong kernel or a wrong precision gives tens of levels.
const MAX_TOLERANCE: u8 = 8;
const MEAN_TOLERANCE: f64 = 0.5;

#[test]
fn a_job_through_openvino_gives_the_cpu_image_and_names_where_its_nodes_ran() {
    if !openvino_installed() {
        return;
    }
    let (cpu, _) = run_job(&Daemon::prepare_diffusion("").start());
    let daemon = Daemon::prepare_diffusion(OPENVINO_CPU).start();
    let (done, status) = run_job(&daemon);
    assert!(
        status.device.starts_with("OpenVINO CPU (") && status.device.contains("then CPU"),
        "{}",
        status.device
    );
    assert!(status.warnings.is_empty(), "{:?}", status.warnings);
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    let (max, mean) = difference(&done, &cpu);
    eprintln!("OpenVINO CPU against the CPU provider: max {max} levels, mean {mean:.3}");
    assert!(
        max <= MAX_TOLERANCE && mean <= MEAN_TOLERANCE,
        "max {max} levels, mean {mean:.3}"
    );
    // Each network says which provider ran its nodes: OpenVINO's compiled partitions, and
    // what stayed on the CPU.
    let unet = status
        .sessions
        .iter()
        .find(|s| s.starts_with("UNet+ControlNet"))
        .unwrap_or_else(|| panic!("no UNet session in {:?}", status.sessions));
    eprintln!("sessions: {:#?}", status.sessions);
    assert!(unet.contains("[OpenVINO "), "{unet}");
    assert!(unet.contains(" node"), "{unet}");
}

#[test]
fn the_second_start_loads_the_compiled_blobs_the_first_one_cached() {
    if !openvino_installed() {
        return;
    }
    let mut daemon = Daemon::prepare_diffusion(OPENVINO_CPU).start();
    let started = Instant::now();
    let (first, status) = run_job(&daemon);
    let first_job = started.elapsed();
    let unet_first = status
        .sessions
        .iter()
        .find(|s| s.starts_with("UNet+ControlNet"))
        .cloned()
        .unwrap();
    assert!(unet_first.contains("compiled and cached"), "{unet_first}");
    let cache = daemon.dir.path().join("cache/compiled");
    let entries = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        entries.iter().any(|e| e.starts_with("openvino-")),
        "{entries:?}"
    );
    stop(&mut daemon);
    daemon.restart();
    let started = Instant::now();
    let (second, status) = run_job(&daemon);
    let second_job = started.elapsed();
    // What the cache saves is in the model load (the sessions are built there); reported, not
    // asserted (the machine is shared).
    eprintln!(
        "first start: load {:.2} s, job {:.2} s (compiles); second start: load {:.2} s, job {:.2} s (cached blobs)",
        seconds(&first, "load"),
        first_job.as_secs_f64(),
        seconds(&second, "load"),
        second_job.as_secs_f64()
    );
    let unet = status
        .sessions
        .iter()
        .find(|s| s.starts_with("UNet+ControlNet"))
        .unwrap();
    assert!(unet.contains("compiled cache hit"), "{unet}");
    assert_eq!(
        first.image, second.image,
        "the cached blobs compute the same"
    );
}

#[test]
fn a_broken_plugin_library_is_one_line_in_doctor_and_the_job_runs_on_the_cpu() {
    if !openvino_installed() {
        return;
    }
    let (cpu, _) = run_job(&Daemon::prepare_diffusion("").start());
    let daemon = Daemon::prepare_diffusion(OPENVINO_CPU);
    // The data directory's copy comes first, and is not a library at all.
    let plugins = daemon.dir.path().join("runtime/plugins/openvino");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(
        plugins.join("libonnxruntime_providers_openvino_plugin.so"),
        b"not a library",
    )
    .unwrap();
    let doctor = daemon.command(["doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("OpenVINO CPU is configured but not used"))
        .unwrap_or_else(|| panic!("no line about OpenVINO in:\n{text}"));
    assert!(
        line.contains("its plugin library") && line.contains("does not load"),
        "{line}"
    );
    assert!(text.contains("the daemon will use: CPU"), "{text}");
    let daemon = daemon.start();
    let (done, status) = run_job(&daemon);
    assert!(status.device.starts_with("CPU"), "{}", status.device);
    let dropped = status
        .warnings
        .iter()
        .find(|w| w.starts_with("OpenVINO CPU is not used: its plugin library"))
        .unwrap_or_else(|| panic!("{:?}", status.warnings));
    assert!(!dropped.contains('\n'));
    assert!(done.warnings.contains(dropped));
    assert_eq!(done.image, cpu.image, "the CPU computes the job");
}

#[test]
fn a_missing_plugin_library_is_one_line_in_doctor_and_the_job_runs_on_the_cpu() {
    // WebGPU's plugin is installed nowhere here.
    let daemon = Daemon::prepare_diffusion("[engine]\nexecution_providers = [\"webgpu\"]\n");
    let doctor = daemon.command(["doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("WebGPU is configured but not used"))
        .unwrap_or_else(|| panic!("no line about WebGPU in:\n{text}"));
    assert!(
        line.contains("is not installed")
            && line.contains("tessera runtime install --providers webgpu"),
        "{line}"
    );
    let daemon = daemon.start();
    let (done, status) = run_job(&daemon);
    assert_eq!(
        (done.image.width, done.image.height),
        (96, 80),
        "the job finished"
    );
    assert!(status.device.starts_with("CPU"), "{}", status.device);
    assert!(
        done.warnings
            .iter()
            .any(|w| w.starts_with("WebGPU is not used: its plugin library")),
        "{:?}",
        done.warnings
    );
}
