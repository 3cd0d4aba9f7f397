//! The `tessera` command line against a real daemon: upscaling files,
//! starting the daemon on demand, status, stop, listing models.

use std::path::Path;
use std::time::{Duration, Instant};
use tessera_e2e::Daemon;

fn write_png(path: &Path, width: u32, height: u32, sixteen_bit: bool) {
    if sixteen_bit {
        let image = image::ImageBuffer::from_fn(width, height, |x, y| {
            image::Rgb([(x * 3000) as u16, (y * 5000) as u16, 40000u16])
        });
        image.save(path).unwrap();
    } else {
        let image = image::ImageBuffer::from_fn(width, height, |x, y| {
            image::Rgba([(x * 20) as u8, (y * 30) as u8, 99, 255])
        });
        image.save(path).unwrap();
    }
}

fn run_ok(command: &mut std::process::Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn upscale_starts_a_daemon_when_none_runs_and_stop_ends_it() {
    let daemon = Daemon::prepare("[upscale]\ndefault_upscaler = \"tiny-x4\"\n");
    let input = daemon.dir.path().join("in.png");
    let output = daemon.dir.path().join("out.png");
    write_png(&input, 12, 9, false);
    let stdout = run_ok(
        daemon
            .command(["upscale", "--preset", "upscaler", "--scale", "4"])
            .arg(&input)
            .arg("-o")
            .arg(&output),
    );
    assert!(stdout.contains("48×36"), "{stdout}");
    let result = image::open(&output).unwrap();
    assert_eq!((result.width(), result.height()), (48, 36));
    assert!(run_ok(&mut daemon.command(["status"])).contains("running: tessera"));
    assert!(run_ok(&mut daemon.command(["stop"])).contains("stopped"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.socket_present() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = daemon.command(["status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(3));
}

#[test]
fn sixteen_bit_files_come_back_sixteen_bit_at_the_asked_scale() {
    let daemon = Daemon::with_small_tiles();
    let input = daemon.dir.path().join("deep.png");
    let output = daemon.dir.path().join("deep-2x.tif");
    write_png(&input, 10, 6, true);
    run_ok(
        daemon
            .command([
                "upscale",
                "--no-start",
                "--preset",
                "upscaler",
                "--scale",
                "2",
                "--model",
                "tiny-x4.safetensors",
            ])
            .arg(&input)
            .arg("-o")
            .arg(&output),
    );
    let result = image::open(&output).unwrap();
    assert_eq!((result.width(), result.height()), (20, 12));
    assert!(
        matches!(result, image::DynamicImage::ImageRgb16(_)),
        "{:?}",
        result.color()
    );
}

#[test]
fn errors_are_one_clear_line() {
    let daemon = Daemon::with_small_tiles();
    let input = daemon.dir.path().join("in.png");
    write_png(&input, 4, 4, false);
    let output = daemon
        .command([
            "upscale",
            "--no-start",
            "--preset",
            "upscaler",
            "--model",
            "missing",
        ])
        .arg(&input)
        .args(["-o", "out.png"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("model-not-found") && stderr.contains("tiny-x4"),
        "{stderr}"
    );
    let other_socket = if cfg!(windows) {
        format!("tessera-e2e-other-{}", std::process::id()).into()
    } else {
        daemon.dir.path().join("other.sock").into_os_string()
    };
    let bad_lib = daemon
        .command(["serve", "--socket"])
        .arg(other_socket)
        .env("TESSERA_ORT_LIB", &input)
        .output()
        .unwrap();
    assert!(!bad_lib.status.success());
    let stderr = String::from_utf8_lossy(&bad_lib.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("tessera runtime install"), "{stderr}");
}

#[test]
fn models_list_shows_sizes_and_hashes() {
    let daemon = Daemon::prepare("");
    let stdout = run_ok(&mut daemon.command(["models", "list"]));
    let line = stdout
        .lines()
        .find(|l| l.contains("tiny-x4"))
        .expect("the tiny model is listed");
    let hash = tessera::store::hashes::sha256_file(
        &daemon
            .dir
            .path()
            .join("models/upscalers/tiny-x4.safetensors"),
    )
    .unwrap();
    assert!(
        line.starts_with("upscaler") && line.contains(&hash),
        "{line}"
    );
}

#[cfg(unix)]
#[test]
fn a_listing_whose_reader_went_away_ends_quietly() {
    let daemon = Daemon::prepare("");
    // A pipe whose reading end is closed before the command writes: every write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = daemon
        .command(["models", "list"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}

#[test]
fn a_batch_writes_every_good_file_skips_existing_results_and_names_the_bad_one() {
    let daemon = Daemon::prepare("[upscale]\ndefault_upscaler = \"tiny-x4\"\n").start();
    let root = daemon.dir.path();
    let folder = root.join("photos");
    std::fs::create_dir(&folder).unwrap();
    write_png(&folder.join("a.png"), 8, 6, false);
    write_png(&folder.join("b.png"), 5, 7, true);
    std::fs::write(folder.join("broken.png"), b"not a png at all").unwrap();
    write_png(&folder.join("c.png"), 6, 6, false);
    let extra = root.join("extra.png");
    write_png(&extra, 4, 4, false);
    let out = root.join("out");
    std::fs::create_dir(&out).unwrap();
    // A result from an earlier run: kept as it is.
    std::fs::write(out.join("c.png"), b"earlier").unwrap();
    let batch = |overwrite: bool| {
        let mut command = daemon.command(["upscale", "--preset", "upscaler", "--scale", "2"]);
        command.arg(&folder).arg(&extra).arg("-o").arg(&out);
        if overwrite {
            command.arg("--overwrite");
        }
        command.output().unwrap()
    };
    let first = batch(false);
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{stdout}\n{stderr}");
    for (name, size) in [
        ("a.png", (16, 12)),
        ("b.png", (10, 14)),
        ("extra.png", (8, 8)),
    ] {
        let result = image::open(out.join(name)).unwrap();
        assert_eq!((result.width(), result.height()), size, "{name}");
    }
    assert_eq!(std::fs::read(out.join("c.png")).unwrap(), b"earlier");
    assert!(!out.join("broken.png").exists());
    assert!(
        stderr.contains("broken.png failed: cannot read"),
        "the bad file is named with its cause: {stderr}"
    );
    assert!(
        stdout.contains("skipped") && stdout.contains("c.png"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 written, 1 skipped, 1 failed of 5 files"),
        "{stdout}"
    );
    let again = batch(true);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("4 written, 0 skipped, 1 failed of 5 files"),
        "{stdout}"
    );
    assert_eq!(image::open(out.join("c.png")).unwrap().width(), 12);
}
