//! A whole install in a temporary HOME: the program and its systemd user unit (validated with
//! `systemd-analyze verify` where it exists), the plug-ins in fake Krita and GIMP folders
//! (native and Flatpak, `kritarc`), the models from a local server, then an upscale with the
//! installed program; and `--uninstall`, which must leave HOME as it was. Unix only: the
//! Windows install is tested in `windows.rs`.
#![cfg(unix)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{Behaviour, Entry, Home, Server, manifest, run, snapshot, stderr, stdout};

/// A HOME where Krita (native and Flatpak) and GIMP (2.10, 3.0, and 3.0 Flatpak) have run.
fn editors_home() -> Home {
    let home = Home::new();
    home.write(
        ".config/kritarc",
        "[General]\nfoo=1\n\n[python]\nenable_other=true\n",
    );
    home.write(
        ".local/share/krita/pykrita/other.desktop",
        "someone else's plug-in",
    );
    home.mkdir(".var/app/org.kde.krita");
    home.mkdir(".config/GIMP/2.10/plug-ins");
    home.mkdir(".config/GIMP/3.0");
    home.mkdir(".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins");
    home
}

struct Models {
    _server: Server,
    manifest: PathBuf,
}

/// The tiny ESRGAN fixture served as the default model.
fn models(home: &Home) -> Models {
    let content = std::fs::read(tessera_e2e::fixture("esrgan/tiny-x4.safetensors")).unwrap();
    let mut files = BTreeMap::new();
    files.insert("/r1/tiny-x4.safetensors".to_owned(), content.clone());
    let server = Server::start(files, Behaviour::Good);
    let manifest = manifest(
        home.path(),
        &[Entry {
            name: "tiny-x4",
            file: "tiny-x4.safetensors",
            kind: "upscaler",
            set: "default",
            content: &content,
            urls: vec![server.url("/r1/tiny-x4.safetensors")],
        }],
    );
    Models {
        _server: server,
        manifest,
    }
}

fn full_install(
    home: &Home,
    tools: &Path,
    models: &Models,
    program: &Path,
) -> std::process::Output {
    let systemctl = home.systemctl_recorder(tools);
    run(home
        .installer(systemctl.to_str().unwrap())
        .arg("--ort-lib")
        .arg(tessera_e2e::ort_lib())
        .arg("--tessera-bin")
        .arg(program)
        .arg("--manifest")
        .arg(&models.manifest))
}

/// A small stand-in for the `tessera` program, for tests that never run it (the real one is
/// large, and each install copies it).
fn stand_in_program(tools: &Path) -> PathBuf {
    let program = tools.join("tessera-stand-in");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    support::make_executable(&program);
    program
}

fn systemctl_calls(tools: &Path) -> Vec<String> {
    std::fs::read_to_string(tools.join("systemctl.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `systemd-analyze verify` on a unit: `None` when the tool is absent, else its complaints.
fn systemd_verify(unit: &Path, home: &Home) -> Option<Vec<String>> {
    let output = std::process::Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(unit)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    let mut complaints: Vec<String> = text
        .lines()
        .filter(|l| l.contains(&*unit.to_string_lossy()) || l.contains("tessera"))
        .map(str::to_owned)
        .collect();
    if !output.status.success() {
        complaints.push(format!("exit {}", output.status));
    }
    Some(complaints)
}

#[test]
fn a_full_install_places_everything_and_the_program_upscales() {
    let home = editors_home();
    let tools = tempfile::tempdir().unwrap();
    let models = models(&home);
    let output = full_install(&home, tools.path(), &models, &tessera_e2e::tessera_bin());
    assert!(output.status.success());
    let out = stdout(&output);

    // The program and its service.
    let program = home.join(".local/bin/tessera");
    assert_eq!(
        std::fs::read(&program).unwrap(),
        std::fs::read(tessera_e2e::tessera_bin()).unwrap()
    );
    let unit_path = home.join(".config/systemd/user/tessera.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(
        unit.contains(&format!("ExecStart=\"{}\" serve", program.display())),
        "{unit}"
    );
    assert!(
        !unit.contains("TESSERA_DATA_DIR"),
        "the default data dir needs no variable"
    );
    assert_eq!(
        systemctl_calls(tools.path()),
        [
            "--user show-environment",
            "--user daemon-reload",
            "--user enable --now tessera.service"
        ]
    );
    assert!(
        out.contains("enabled and started with systemctl --user"),
        "{out}"
    );

    // Krita, native: files as Krita's importer lays them out, enabled in kritarc.
    let krita = home.join(".local/share/krita");
    for rel in [
        "pykrita/tessera_krita.desktop",
        "pykrita/tessera_krita/__init__.py",
        "pykrita/tessera_krita/vendor/tessera_client/codec.py",
        "actions/tessera_krita.action",
    ] {
        assert!(krita.join(rel).is_file(), "{rel}");
    }
    assert_eq!(
        std::fs::read_to_string(home.join(".config/kritarc")).unwrap(),
        "[General]\nfoo=1\n\n[python]\nenable_other=true\nenable_tessera_krita=true\n"
    );
    assert!(krita.join("pykrita/other.desktop").is_file());
    // Krita, Flatpak: the same, with a kritarc of its own.
    let flatpak = home.join(".var/app/org.kde.krita");
    assert!(
        flatpak
            .join("data/krita/pykrita/tessera_krita/__init__.py")
            .is_file()
    );
    assert_eq!(
        std::fs::read_to_string(flatpak.join("config/kritarc")).unwrap(),
        "[python]\nenable_tessera_krita=true\n"
    );
    // GIMP 3.0, native and Flatpak: the executable plug-in with the codec beside it.
    for root in [".config/GIMP/3.0", ".var/app/org.gimp.GIMP/config/GIMP/3.0"] {
        let plugin = home.join(root).join("plug-ins/tessera-upscale");
        let script = plugin.join("tessera-upscale.py");
        assert_eq!(
            std::fs::read(&script).unwrap(),
            std::fs::read(
                tessera_e2e::repo_root().join("plugin-gimp/tessera-upscale/tessera-upscale.py")
            )
            .unwrap()
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&script).unwrap().permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o755,
            "{root}: GIMP ignores a plug-in without the bit"
        );
        assert!(plugin.join("tessera_gimp.py").is_file(), "{root}");
        for file in ["__init__.py", "codec.py", "client.py"] {
            assert_eq!(
                std::fs::read(plugin.join("tessera_client").join(file)).unwrap(),
                std::fs::read(
                    tessera_e2e::repo_root()
                        .join("shared/python/tessera_client")
                        .join(file)
                )
                .unwrap(),
                "{root}: {file}"
            );
        }
    }
    // GIMP 2.10 is not a target.
    assert_eq!(
        std::fs::read_dir(home.join(".config/GIMP/2.10/plug-ins"))
            .unwrap()
            .count(),
        0
    );
    assert!(
        out.contains("Krita (native)") && out.contains("Krita (Flatpak)"),
        "{out}"
    );
    assert!(
        out.contains("GIMP 3.0 (native)") && out.contains("GIMP 3.0 (Flatpak)"),
        "{out}"
    );

    // The model, then an upscale with the installed program and nothing else. The test manifest
    // holds only the tiny ESRGAN, so the job is the upscaler alone (a default job also needs the
    // SD models of the built-in default set).
    let model = home.data().join("models/upscalers/tiny-x4.safetensors");
    assert!(model.is_file());
    let input = home.join("in.png");
    image::RgbaImage::from_fn(9, 7, |x, y| {
        image::Rgba([(x * 20) as u8, (y * 30) as u8, 90, 255])
    })
    .save(&input)
    .unwrap();
    let upscale = run(std::process::Command::new(&program)
        .args(["upscale", "--preset", "upscaler", "--scale", "4"])
        .arg(&input)
        .arg("-o")
        .arg(home.join("out.png"))
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .env_remove("TESSERA_DATA_DIR")
        .env_remove("TESSERA_SOCKET")
        .env_remove("TESSERA_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH"));
    let stop = std::process::Command::new(&program)
        .arg("stop")
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .env_remove("TESSERA_DATA_DIR")
        .env_remove("TESSERA_SOCKET")
        .output()
        .unwrap();
    assert!(upscale.status.success(), "{}", stderr(&upscale));
    assert!(stop.status.success());
    let result = image::open(home.join("out.png")).unwrap();
    assert_eq!((result.width(), result.height()), (36, 28));

    if let Some(complaints) = systemd_verify(&unit_path, &home) {
        assert!(complaints.is_empty(), "systemd-analyze: {complaints:?}");
    } else {
        assert!(
            std::env::var_os("TESSERA_REQUIRE_SYSTEMD").is_none(),
            "systemd-analyze is missing but TESSERA_REQUIRE_SYSTEMD is set"
        );
        eprintln!("systemd-analyze not found: the unit was not verified");
    }
}

#[test]
fn systemd_analyze_catches_a_broken_unit() {
    // The check above is only worth something if it can fail.
    let home = Home::new();
    home.write(
        ".config/systemd/user/broken.service",
        "[Service]\nType=simpel\nExecStart=relative/tessera serve\n",
    );
    let Some(complaints) = systemd_verify(&home.join(".config/systemd/user/broken.service"), &home)
    else {
        assert!(std::env::var_os("TESSERA_REQUIRE_SYSTEMD").is_none());
        return;
    };
    assert!(!complaints.is_empty());
}

#[test]
fn without_a_user_manager_the_service_step_says_what_happens_instead() {
    let home = Home::new();
    let tools = tempfile::tempdir().unwrap();
    let failing = tools.path().join("systemctl");
    std::fs::write(
        &failing,
        "#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n",
    )
    .unwrap();
    support::make_executable(&failing);
    let program = stand_in_program(tools.path());
    for (systemctl, expected) in [
        ("", "systemctl not found"),
        (
            failing.to_str().unwrap(),
            "no systemd user manager here (Failed to connect to bus",
        ),
    ] {
        let output = run(home
            .installer(systemctl)
            .args(["--no-models", "--no-plugins", "--ort-lib"])
            .arg(tessera_e2e::ort_lib())
            .arg("--tessera-bin")
            .arg(&program));
        assert!(output.status.success());
        let out = stdout(&output);
        assert!(out.contains(expected), "{out}");
        assert!(out.contains("start the daemon when they need it"), "{out}");
        assert!(home.join(".config/systemd/user/tessera.service").is_file());
    }
}

#[test]
fn uninstall_leaves_home_as_it_was() {
    let home = editors_home();
    let tools = tempfile::tempdir().unwrap();
    let models = models(&home);
    let before = snapshot(home.path());
    let program = stand_in_program(tools.path());
    assert!(
        full_install(&home, tools.path(), &models, &program)
            .status
            .success()
    );
    let installed = snapshot(home.path());
    assert_ne!(installed, before);
    // Installing again changes nothing and keeps the first record of what was there before.
    assert!(
        full_install(&home, tools.path(), &models, &program)
            .status
            .success()
    );
    let again = snapshot(home.path());
    let differing: Vec<_> = installed
        .keys()
        .chain(again.keys())
        .filter(|k| installed.get(*k) != again.get(*k))
        .collect();
    assert!(
        differing.is_empty(),
        "a second install changed {differing:?}"
    );
    let systemctl = tools.path().join("systemctl");
    let output = run(home
        .installer(systemctl.to_str().unwrap())
        .args(["--uninstall", "--remove-models"]));
    assert!(output.status.success());
    assert!(
        systemctl_calls(tools.path()).contains(&"--user disable --now tessera.service".to_owned())
    );
    let after = snapshot(home.path());
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned())
        .collect();
    assert!(
        changed.is_empty(),
        "changed by install + uninstall: {changed:?}"
    );
}

#[test]
fn uninstall_keeps_models_unless_asked_and_never_touches_the_users_own() {
    let home = Home::new();
    let models = models(&home);
    let output = run(home
        .installer("")
        .args(["--no-service", "--no-plugins", "--ort-lib"])
        .arg(tessera_e2e::ort_lib())
        .arg("--manifest")
        .arg(&models.manifest));
    assert!(output.status.success());
    let upscalers = home.data().join("models/upscalers");
    std::fs::write(upscalers.join("mine.pth"), b"the user's model").unwrap();

    let output = run(home.installer("").arg("--uninstall"));
    assert!(output.status.success());
    assert!(stdout(&output).contains("kept 1 downloaded model(s)"));
    assert!(upscalers.join("tiny-x4.safetensors").is_file());
    assert!(!home.data().join("runtime/runtime.toml").exists());

    let output = run(home.installer("").args(["--uninstall", "--remove-models"]));
    assert!(output.status.success());
    assert!(!upscalers.join("tiny-x4.safetensors").exists());
    assert_eq!(
        std::fs::read(upscalers.join("mine.pth")).unwrap(),
        b"the user's model"
    );
    assert!(
        stdout(&output).contains("left in place"),
        "{}",
        stdout(&output)
    );
    assert!(!home.data().join("install.toml").exists());
}

#[test]
fn doctor_reports_each_problem_with_a_fix() {
    let home = Home::new();
    home.write(".config/kritarc", "[General]\nfoo=1\n");
    home.mkdir(".local/share/krita");
    let models = models(&home);
    let output = run(home
        .installer("")
        .args(["--ort-lib"])
        .arg(tessera_e2e::ort_lib())
        .arg("--tessera-bin")
        .arg(tessera_e2e::tessera_bin())
        .arg("--manifest")
        .arg(&models.manifest));
    assert!(output.status.success());
    let doctor = || {
        run(std::process::Command::new(home.join(".local/bin/tessera"))
            .arg("doctor")
            .arg("--manifest")
            .arg(&models.manifest)
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", home.path())
            .env_remove("TESSERA_DATA_DIR")
            .env_remove("TESSERA_SOCKET")
            .env_remove("TESSERA_ORT_LIB")
            .env_remove("ORT_DYLIB_PATH"))
    };
    let healthy = doctor();
    let out = stdout(&healthy);
    assert!(healthy.status.success(), "{out}");
    assert!(
        out.contains("upscalers/tiny-x4.safetensors valid (tiny-x4"),
        "{out}"
    );
    assert!(out.contains("CPU: usable"), "{out}");
    assert!(out.contains("unchanged since it was installed"), "{out}");
    assert!(
        out.contains("Krita (native): ") && out.contains("(enabled)"),
        "{out}"
    );
    assert!(out.contains("no problems found"), "{out}");

    let model = home.data().join("models/upscalers/tiny-x4.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    home.write(".config/kritarc", "[python]\nenable_tessera_krita=false\n");
    std::fs::remove_file(home.join(".local/share/krita/actions/tessera_krita.action")).unwrap();
    let sick = doctor();
    let out = stdout(&sick);
    assert!(!sick.status.success());
    assert!(
        out.contains("PROBLEM  upscalers/tiny-x4.safetensors is not the expected tiny-x4"),
        "{out}"
    );
    assert!(
        out.contains("not enabled in") && out.contains("Python Plugin Manager"),
        "{out}"
    );
    assert!(out.contains("tessera_krita.action is missing"), "{out}");
    assert!(out.contains("3 problem(s) found"), "{out}");
    let problems = out
        .lines()
        .filter(|l| l.trim_start().starts_with("PROBLEM"))
        .count();
    let fixes = out
        .lines()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .count();
    assert_eq!((problems, fixes), (3, 3), "one fix per problem");
}
