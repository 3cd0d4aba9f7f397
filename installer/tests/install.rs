//! `tessera-install` on a fresh data directory with a library the user already has.

use std::process::Command;

#[test]
fn a_fresh_data_dir_is_laid_out_and_reported() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let lib = temp.path().join("libonnxruntime.so.1.32.0");
    std::fs::write(&lib, b"stand-in: only its presence is checked here").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tessera-install"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--ort-lib")
        .arg(&lib)
        .env_remove("TESSERA_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(data.join("models/upscalers").is_dir() && data.join("runtime").is_dir());
    assert!(stdout.contains("upscalers:      none"), "{stdout}");
    assert!(stdout.contains("No upscaler yet"), "{stdout}");
    assert!(stdout.contains(lib.to_str().unwrap()), "{stdout}");
}

#[test]
fn a_missing_library_is_one_clear_line() {
    let temp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tessera-install"))
        .arg("--data-dir")
        .arg(temp.path())
        .arg("--ort-lib")
        .arg(temp.path().join("nope.so"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
