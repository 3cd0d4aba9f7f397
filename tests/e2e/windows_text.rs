//! Windows only (run under Wine in CI): what Tessera tells a Windows user names Windows places
//! in Windows terms. The installer's table of folders prints with backslashes; `tessera
//! doctor` and the errors of a setup with nothing installed name `%APPDATA%`-style paths and
//! Windows fixes, never `~/.local`, a `/` path or a Unix command.
#![cfg(windows)]

use std::path::Path;
use tessera::setup::places::{Home, Platform};
use tessera_e2e::{Daemon, assert_windows_paths};

#[test]
fn the_windows_places_print_with_backslashes() {
    let home = Home::at(Platform::Windows, Path::new(r"C:\Users\Ana"));
    assert_eq!(
        home.bin_dir().display().to_string(),
        r"C:\Users\Ana\AppData\Local\Programs\Tessera"
    );
    assert_eq!(
        home.service_file().display().to_string(),
        r"C:\Users\Ana\AppData\Roaming\Microsoft\Windows\Start Menu\Programs\Startup\Tessera.vbs"
    );
    let krita = &home.krita_places()[0];
    assert_eq!(
        krita.folder.display().to_string(),
        r"C:\Users\Ana\AppData\Roaming\krita"
    );
    assert_eq!(
        krita.settings.as_ref().unwrap().display().to_string(),
        r"C:\Users\Ana\AppData\Local\kritarc"
    );
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn doctor_on_an_empty_setup_speaks_windows() {
    let daemon = Daemon::prepare("");
    // Nothing installed: no runtime, no install record, only the tiny upscaler.
    let output = daemon
        .command(["doctor"])
        .env_remove("TESSERA_ORT_LIB")
        .output()
        .unwrap();
    let report = text(&output);
    assert!(!output.status.success(), "{report}");
    assert_windows_paths(&report);
    let runtime = daemon.dir.path().join("runtime");
    for expected in [
        format!("no onnxruntime.dll in {}", runtime.display()),
        "run tessera-install (or `tessera runtime install`), or pass --ort-lib".into(),
        r"upscalers\tiny-x4.safetensors present".into(),
        r"the default model upscalers\".into(),
        format!(
            r"not running on \\.\pipe\{}",
            daemon.dir.path().file_name().unwrap().to_string_lossy()
        ),
    ] {
        assert!(report.contains(&expected), "{expected:?} in\n{report}");
    }
}

#[test]
fn errors_without_a_runtime_or_a_tray_speak_windows() {
    let daemon = Daemon::prepare("");
    let serve = daemon
        .command(["serve"])
        .env_remove("TESSERA_ORT_LIB")
        .output()
        .unwrap();
    let message = text(&serve);
    assert!(!serve.status.success());
    assert_windows_paths(&message);
    assert!(
        message.contains("no onnxruntime.dll in") && message.contains("tessera runtime install"),
        "{message}"
    );
    let tray = daemon.command(["serve", "--tray"]).output().unwrap();
    let message = text(&tray);
    assert!(!tray.status.success());
    assert!(message.contains("Linux only"), "{message}");
    assert_windows_paths(&message);
}
