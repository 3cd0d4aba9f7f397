//! The Windows build against this one (Linux only): the same jobs through `tessera.exe` under
//! Wine, on `onnxruntime.dll` from the Windows wheel, and through this build's `tessera` on the
//! Linux library give the same pixels. The tiny ESRGAN jobs (8-bit RGB ×4, 16-bit RGBA ×2.5)
//! agree byte for byte; the tiny Clarity job agrees within [`CLARITY_TOLERANCE`] levels of 255,
//! the two ONNX Runtime builds (MSVC and GCC) rounding some float kernels differently.
//!
//! `scripts/test` runs it after cross-building `tessera.exe` and setting up Wine
//! (`TESSERA_WINE_TESTS=1`); without that variable it says it is skipped and passes.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_e2e::{Daemon, ort_lib, repo_root, tessera_bin};

/// Largest difference allowed between the two builds' Clarity results, in 8-bit levels.
const CLARITY_TOLERANCE: u8 = 2;

/// `path` as Wine's Windows programs see it (the root `/` is drive `Z:`).
fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

struct Wine {
    exe: PathBuf,
    ort_lib: String,
}

impl Wine {
    /// The Windows build, or `None` (skip) when scripts/test has not set it up.
    fn find() -> Option<Wine> {
        if std::env::var_os("TESSERA_WINE_TESTS").is_none() {
            eprintln!("SKIPPED: TESSERA_WINE_TESTS is not set (scripts/test sets it up)");
            return None;
        }
        let repo = repo_root();
        let exe = std::env::var_os("TESSERA_WINDOWS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/x86_64-pc-windows-gnu/debug/tessera.exe"));
        let dll = std::env::var_os("TESSERA_WINDOWS_ORT_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join(".cache/windows/ort-data/runtime/onnxruntime.dll"));
        assert!(exe.is_file(), "{} is missing", exe.display());
        assert!(dll.is_file(), "{} is missing", dll.display());
        Some(Wine {
            exe,
            ort_lib: windows_path(&dll),
        })
    }

    fn command(&self, data: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(repo_root().join("scripts/wine"));
        command
            .arg(&self.exe)
            .args(args)
            .arg("--data-dir")
            .arg(windows_path(data))
            .arg("--ort-lib")
            .arg(&self.ort_lib);
        for var in ["TESSERA_DATA_DIR", "TESSERA_SOCKET", "TESSERA_ORT_LIB"] {
            command.env_remove(var);
        }
        command
    }

    /// `tessera.exe serve` on `data`, once it answers (its output in `serve-output.txt`).
    fn serve(&self, data: &Path) -> Child {
        let log = std::fs::File::create(data.join("serve-output.txt")).unwrap();
        let mut child = self
            .command(data, &["serve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self.run(data, &["status"]).status.success() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "tessera.exe serve exited with {status}: {}",
                    std::fs::read_to_string(data.join("serve-output.txt")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tessera.exe serve did not listen"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        child
    }

    /// Runs `tessera.exe` with `args` and waits for it. Its output goes through files, not
    /// pipes: a Wine program starts the prefix's background programs (services.exe, …) with
    /// its own Unix stderr, so a pipe would stay open long after the program has exited.
    fn run(&self, data: &Path, args: &[&str]) -> std::process::Output {
        let out = tempfile::tempfile_in(data).unwrap();
        let err = tempfile::tempfile_in(data).unwrap();
        let status = self
            .command(data, args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .status()
            .unwrap();
        let read = |mut file: std::fs::File| {
            use std::io::{Read, Seek};
            let mut bytes = Vec::new();
            file.rewind().unwrap();
            file.read_to_end(&mut bytes).unwrap();
            bytes
        };
        std::process::Output {
            status,
            stdout: read(out),
            stderr: read(err),
        }
    }
}

/// Runs one `tessera upscale` with `args` on both builds, each with a data directory of its
/// own made by `prepare` (so that neither reuses the other's converted models); returns
/// (Linux, Windows) pixels.
fn both(
    prepare: impl Fn() -> Daemon,
    wine: &Wine,
    input: &Path,
    args: &[&str],
) -> (Vec<u8>, Vec<u8>) {
    let (linux_daemon, windows_daemon) = (prepare(), prepare());
    let data = linux_daemon.dir.path();
    let linux_out = data.join("linux.png");
    let windows_out = windows_daemon.dir.path().join("windows.png");
    let linux = Command::new(tessera_bin())
        .arg("upscale")
        .arg(input)
        .arg("-o")
        .arg(&linux_out)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("TESSERA_ORT_LIB", ort_lib())
        .env_remove("TESSERA_SOCKET")
        .output()
        .unwrap();
    assert!(
        linux.status.success(),
        "{}",
        String::from_utf8_lossy(&linux.stderr)
    );
    let stop = Command::new(tessera_bin())
        .args(["stop", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(stop.status.success());

    let data = windows_daemon.dir.path();
    let mut serve = wine.serve(data);
    let mut upscale = vec![
        "upscale".to_owned(),
        windows_path(input),
        "-o".into(),
        windows_path(&windows_out),
        "--no-start".into(),
    ];
    upscale.extend(args.iter().map(|a| (*a).to_owned()));
    let upscale: Vec<&str> = upscale.iter().map(String::as_str).collect();
    let windows = wine.run(data, &upscale);
    let stopped = wine.run(data, &["stop"]);
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        windows.status.success(),
        "tessera.exe upscale: {}",
        String::from_utf8_lossy(&windows.stderr)
    );
    assert!(stopped.status.success());
    let pixels = |path: &Path| image::open(path).unwrap().into_bytes();
    let (a, b) = (pixels(&linux_out), pixels(&windows_out));
    assert_eq!(
        image::image_dimensions(&linux_out).unwrap(),
        image::image_dimensions(&windows_out).unwrap()
    );
    assert_eq!(a.len(), b.len());
    (a, b)
}

fn scratch() -> PathBuf {
    // Wine sees only the repository (scripts/wine), so the data directories live there.
    let folder = repo_root().join(".cache/windows/e2e");
    std::fs::create_dir_all(&folder).unwrap();
    folder
}

#[test]
fn the_upscaler_gives_the_same_bytes_on_windows() {
    let Some(wine) = Wine::find() else { return };
    let prepare = || Daemon::prepare_in(&scratch(), "[upscale]\ntile = 32\noverlap = 4\n");
    let inputs = tempfile::tempdir_in(scratch()).unwrap();
    let rgb = inputs.path().join("rgb.png");
    image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([
            (x * 6) as u8,
            (y * 8) as u8,
            (((x / 4 + y / 4) % 2) * 200) as u8,
        ])
    })
    .save(&rgb)
    .unwrap();
    let (linux, windows) = both(
        prepare,
        &wine,
        &rgb,
        &[
            "--preset",
            "upscaler",
            "--scale",
            "4",
            "--upscaler",
            "tiny-x4",
        ],
    );
    assert!(linux == windows, "8-bit RGB ×4 differs");

    let rgba16 = inputs.path().join("rgba16.png");
    image::ImageBuffer::from_fn(21, 13, |x, y| {
        image::Rgba([x as u16 * 3000, y as u16 * 5000, 40000u16, x as u16 * 3100])
    })
    .save(&rgba16)
    .unwrap();
    let (linux, windows) = both(
        prepare,
        &wine,
        &rgba16,
        &[
            "--preset",
            "upscaler",
            "--scale",
            "2.5",
            "--upscaler",
            "tiny-x4",
        ],
    );
    assert!(linux == windows, "16-bit RGBA ×2.5 differs");
}

#[test]
fn the_clarity_pipeline_gives_the_same_picture_on_windows() {
    let Some(wine) = Wine::find() else { return };
    let inputs = tempfile::tempdir_in(scratch()).unwrap();
    let input = inputs.path().join("in.png");
    image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([
            (x * 5) as u8,
            (y * 6) as u8,
            (((x / 4 + y / 4) % 2) * 200) as u8,
        ])
    })
    .save(&input)
    .unwrap();
    let (linux, windows) = both(
        || Daemon::prepare_diffusion_in(&scratch(), ""),
        &wine,
        &input,
        &["--scale", "2", "--tile-width", "16", "--tile-height", "16"],
    );
    let differences: Vec<u8> = linux
        .iter()
        .zip(&windows)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let largest = differences.iter().copied().max().unwrap_or(0);
    let differing = differences.iter().filter(|d| **d > 0).count();
    eprintln!(
        "Clarity ×2, Linux against Windows: {differing} of {} samples differ, by at most {largest}",
        differences.len()
    );
    assert!(
        largest <= CLARITY_TOLERANCE,
        "the builds differ by {largest} levels (at most {CLARITY_TOLERANCE} allowed)"
    );
}
