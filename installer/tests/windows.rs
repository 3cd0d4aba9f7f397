//! Windows only (run under Wine in CI): `tessera-install.exe` in the user's real profile, the
//! way a user runs it. The runtime comes from the Windows onnxruntime wheel (`--wheel`), the
//! program goes to `%LOCALAPPDATA%\Programs\Tessera`, the login entry to the Startup folder, the
//! plug-ins to `%APPDATA%\krita\pykrita` and `%APPDATA%\GIMP\3.0\plug-ins`, the models come from
//! `--models-from`; `--uninstall` leaves the profile as it was. A second install, in a profile
//! and a data directory of its own, runs what it installed: `tessera doctor` finds it all and
//! says so with Windows paths, the Startup script starts the daemon, and the installed program
//! upscales through it.
#![cfg(windows)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Entry, manifest, run, sha256_hex, stdout};
use tessera_e2e::assert_windows_paths;

/// The Windows onnxruntime wheel: `TESSERA_WINDOWS_WHEEL`, else the one scripts/test fetched.
fn wheel() -> PathBuf {
    if let Some(path) = std::env::var_os("TESSERA_WINDOWS_WHEEL") {
        return PathBuf::from(path);
    }
    let folder = tessera_e2e::repo_root().join(".cache/windows/wheels");
    std::fs::read_dir(&folder)
        .ok()
        .and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with("win_amd64.whl"))
        })
        .unwrap_or_else(|| panic!("no win_amd64 onnxruntime wheel in {}", folder.display()))
}

fn var(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")))
}

/// A folder holding the tiny upscaler, and a manifest that names it as the one default model.
fn models(folder: &Path) -> (PathBuf, PathBuf) {
    let content = std::fs::read(tessera_e2e::fixture("esrgan/tiny-x4.safetensors")).unwrap();
    let source = folder.join("my-models");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("tiny-x4.safetensors"), &content).unwrap();
    let manifest = manifest(
        folder,
        &[Entry {
            name: "tiny-x4",
            file: "tiny-x4.safetensors",
            kind: "upscaler",
            set: "default",
            content: &content,
            urls: vec!["http://127.0.0.1:9/r1/tiny-x4.safetensors".into()],
        }],
    );
    (source, manifest)
}

fn installer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-install"));
    command
        .env_remove("TESSERA_DATA_DIR")
        .env_remove("TESSERA_SOCKET")
        .env_remove("TESSERA_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH");
    command
}

/// Every entry below `root` but the temporary files: relative path → kind and content hash.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let temp = std::env::temp_dir().display().to_string().to_lowercase();
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.display().to_string().to_lowercase().starts_with(&temp) {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                stack.push(path);
                found.insert(rel, "dir".into());
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                found.insert(rel, format!("file {}", sha256_hex(&bytes)));
            }
        }
    }
    found
}

#[test]
fn an_install_in_the_users_profile_places_everything_and_uninstall_takes_it_back() {
    let profile = var("USERPROFILE");
    let appdata = var("APPDATA");
    let local = var("LOCALAPPDATA");
    // This user has run Krita and GIMP 3.0, and has settings of their own.
    std::fs::create_dir_all(appdata.join(r"krita\pykrita")).unwrap();
    std::fs::write(
        appdata.join(r"krita\pykrita\other.desktop"),
        "someone else's",
    )
    .unwrap();
    std::fs::write(local.join("kritarc"), "[General]\r\nfoo=1\r\n").unwrap();
    std::fs::create_dir_all(appdata.join(r"GIMP\3.0")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (source, manifest) = models(work.path());
    let before = snapshot(&profile);

    let output = run(installer()
        .arg("--wheel")
        .arg(wheel())
        .arg("--models-from")
        .arg(&source)
        .arg("--manifest")
        .arg(&manifest));
    let out = stdout(&output);
    assert!(output.status.success(), "{out}");
    assert_windows_paths(&out);
    let data = appdata.join(r"Tessera\data");
    assert!(
        out.contains(&format!("data directory   {}", data.display())),
        "{out}"
    );
    let program = local.join(r"Programs\Tessera\tessera.exe");
    assert!(program.is_file());
    assert!(data.join(r"runtime\onnxruntime.dll").is_file());
    assert!(data.join(r"models\upscalers\tiny-x4.safetensors").is_file());
    let startup = appdata.join(r"Microsoft\Windows\Start Menu\Programs\Startup\Tessera.vbs");
    let script = std::fs::read_to_string(&startup).unwrap();
    assert!(
        script.contains(&format!("\"\"{}\"\" serve", program.display())),
        "{script}"
    );
    assert!(
        !script.contains("TESSERA_DATA_DIR"),
        "the default data directory: {script}"
    );
    assert!(
        appdata
            .join(r"krita\pykrita\tessera_krita\__init__.py")
            .is_file()
    );
    assert!(
        appdata
            .join(r"krita\actions\tessera_krita.action")
            .is_file()
    );
    let kritarc = std::fs::read_to_string(local.join("kritarc")).unwrap();
    assert!(kritarc.contains("enable_tessera_krita=true"), "{kritarc}");
    let gimp = appdata.join(r"GIMP\3.0\plug-ins\tessera-upscale");
    assert!(gimp.join("tessera-upscale.py").is_file());
    assert!(gimp.join(r"tessera_client\__init__.py").is_file());

    let output = run(installer().args(["--uninstall", "--remove-models"]));
    assert!(output.status.success(), "{}", stdout(&output));
    assert_windows_paths(&stdout(&output));
    let after = snapshot(&profile);
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        changed.is_empty(),
        "changed by install + uninstall: {changed:?}"
    );
}

#[test]
fn the_startup_entry_starts_the_daemon_and_the_installed_program_upscales() {
    // A profile of its own, and a data directory of its own (the script then sets it).
    let home = tempfile::tempdir().unwrap();
    let appdata = home.path().join(r"AppData\Roaming");
    let local = home.path().join(r"AppData\Local");
    let data = home.path().join("tessera-data");
    std::fs::create_dir_all(appdata.join(r"krita")).unwrap();
    std::fs::create_dir_all(appdata.join(r"GIMP\3.0")).unwrap();
    let (source, manifest) = models(home.path());
    let output = run(installer()
        .env("USERPROFILE", home.path())
        .env("APPDATA", &appdata)
        .env("LOCALAPPDATA", &local)
        .env("TESSERA_DATA_DIR", &data)
        .arg("--wheel")
        .arg(wheel())
        .arg("--models-from")
        .arg(&source)
        .arg("--manifest")
        .arg(&manifest));
    assert!(output.status.success(), "{}", stdout(&output));
    let program = local.join(r"Programs\Tessera\tessera.exe");
    let startup = appdata.join(r"Microsoft\Windows\Start Menu\Programs\Startup\Tessera.vbs");
    let script = std::fs::read_to_string(&startup).unwrap();
    assert!(
        script.contains(&format!("serve --data-dir \"\"{}\"\"", data.display())),
        "{script}"
    );
    let in_profile = |command: &mut Command| {
        command
            .env("USERPROFILE", home.path())
            .env("APPDATA", &appdata)
            .env("LOCALAPPDATA", &local)
            .env("TESSERA_DATA_DIR", &data)
            .env_remove("TESSERA_ORT_LIB")
            .env_remove("TESSERA_SOCKET");
    };

    // The installed program checks the installation, in Windows terms.
    let mut doctor = Command::new(&program);
    in_profile(doctor.args(["doctor", "--manifest"]).arg(&manifest));
    let doctor = run(&mut doctor);
    let report = stdout(&doctor);
    assert!(doctor.status.success(), "{report}");
    assert_windows_paths(&report);
    for expected in [
        r"upscalers\tiny-x4.safetensors valid (tiny-x4".to_owned(),
        "unchanged since it was installed".into(),
        "CPU: usable".into(),
        format!(
            "Krita (native): {} (enabled)",
            appdata.join(r"krita\pykrita\tessera_krita").display()
        ),
        format!(
            "GIMP 3.0 (native): {}",
            appdata.join(r"GIMP\3.0\plug-ins\tessera-upscale").display()
        ),
        format!("{} (startup)", startup.display()),
        r"not running on \\.\pipe\tessera-".into(),
        "no problems found".into(),
    ] {
        assert!(report.contains(&expected), "{expected:?} in\n{report}");
    }

    // What Windows does at login: the script runs, and the daemon starts, hidden.
    let status = Command::new("wscript.exe")
        .arg("//B")
        .arg(&startup)
        .env_remove("TESSERA_DATA_DIR")
        .status()
        .unwrap();
    assert!(status.success(), "wscript: {status}");
    let tessera = |args: &[&str]| {
        let mut command = Command::new(&program);
        in_profile(command.args(args));
        command
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tessera(&["status"]).output().unwrap().status.success() {
        assert!(
            Instant::now() < deadline,
            "the Startup script started no daemon"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let input = home.path().join("in.png");
    image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 99]))
        .save(&input)
        .unwrap();
    let output_image = home.path().join("out.png");
    let upscale = run(tessera(&[
        "upscale",
        "--no-start",
        "--preset",
        "upscaler",
        "--scale",
        "4",
    ])
    .arg(&input)
    .arg("-o")
    .arg(&output_image));
    assert!(upscale.status.success());
    assert_eq!(image::image_dimensions(&output_image).unwrap(), (36, 28));
    assert!(tessera(&["stop"]).status().unwrap().success());

    let output = run(installer()
        .env("USERPROFILE", home.path())
        .env("APPDATA", &appdata)
        .env("LOCALAPPDATA", &local)
        .env("TESSERA_DATA_DIR", &data)
        .args(["--uninstall", "--remove-models"]));
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(!program.exists() && !startup.exists());
}
