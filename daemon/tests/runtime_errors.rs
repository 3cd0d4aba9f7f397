//! What `Engine::new` does with a missing, wrong or old ONNX Runtime library: a typed error
//! whose message is one line saying how to get the library, never a panic.
//!
//! A separate test binary (so a separate process) because a process can load ONNX Runtime
//! only once; the checks run in one test, in order, ending with the real library.

mod common;

use std::path::Path;

use tessera::engine::{Engine, EngineError, EngineOptions};

fn engine_error(lib: &Path) -> EngineError {
    let mut options = EngineOptions::new(tempfile::tempdir().unwrap().path());
    options.ort_lib = Some(lib.to_owned());
    let err = Engine::new(options)
        .err()
        .unwrap_or_else(|| panic!("{} must be refused", lib.display()));
    let text = err.to_string();
    eprintln!("{}: {text}", lib.display());
    assert!(!text.contains('\n'), "one line: {text}");
    err
}

fn assert_says_how_to_fix(err: &EngineError) {
    let text = err.to_string();
    assert!(
        text.contains("tessera runtime install") && text.contains("TESSERA_ORT_LIB"),
        "{text}"
    );
}

/// Builds a shared library exporting a fake `OrtGetApiBase` that reports `version` and has no
/// API table (like a runtime too old for the API we need).
#[cfg(unix)]
fn fake_runtime(dir: &Path, name: &str, version: Option<&str>) -> std::path::PathBuf {
    let source = dir.join(format!("{name}.c"));
    let body = match version {
        Some(v) => format!(
            "typedef struct {{ const void *(*get_api)(unsigned); const char *(*version)(void); }} Base;\n\
             static const void *get_api(unsigned v) {{ (void)v; return 0; }}\n\
             static const char *version(void) {{ return \"{v}\"; }}\n\
             static const Base base = {{ get_api, version }};\n\
             const Base *OrtGetApiBase(void) {{ return &base; }}\n"
        ),
        None => "int not_onnxruntime(void) { return 42; }\n".to_owned(),
    };
    std::fs::write(&source, body).unwrap();
    let lib = dir.join(format!("lib{name}.so"));
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .expect(
            "these checks build stand-in libraries with a C compiler (cc); install one or set CC",
        );
    assert!(status.success(), "cc failed");
    lib
}

#[test]
fn wrong_libraries_are_one_line_errors_then_the_real_one_loads() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("nowhere/libonnxruntime.so");
    let err = engine_error(&missing);
    assert!(
        matches!(err, EngineError::RuntimeNotFound { .. }),
        "{err:?}"
    );
    assert_says_how_to_fix(&err);

    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    assert!(matches!(
        engine_error(&empty_dir),
        EngineError::RuntimeNotFound { .. }
    ));

    let text = dir.path().join("libonnxruntime.so.1.32.0");
    std::fs::write(&text, "this is not a shared library\n").unwrap();
    let err = engine_error(&text);
    assert!(
        matches!(err, EngineError::RuntimeUnusable { .. }),
        "{err:?}"
    );
    assert_says_how_to_fix(&err);

    #[cfg(unix)]
    {
        let other = fake_runtime(dir.path(), "other", None);
        let err = engine_error(&other);
        assert!(
            matches!(&err, EngineError::RuntimeUnusable { reason, .. } if reason.contains("OrtGetApiBase")),
            "{err:?}"
        );

        let old = fake_runtime(dir.path(), "old", Some("1.16.3"));
        let err = engine_error(&old);
        assert!(
            matches!(&err, EngineError::RuntimeTooOld { found, .. } if found == "1.16.3"),
            "{err:?}"
        );
        assert_says_how_to_fix(&err);

        // A new enough version string whose library lacks the API table must not reach ort.
        let hollow = fake_runtime(dir.path(), "hollow", Some("1.40.0"));
        let err = engine_error(&hollow);
        assert!(
            matches!(&err, EngineError::RuntimeUnusable { reason, .. } if reason.contains("API")),
            "{err:?}"
        );
    }

    // After all that, the real library still loads, from a folder holding it too.
    let real = common::ort_lib();
    let mut options = EngineOptions::new(dir.path());
    options.ort_lib = Some(real.parent().unwrap().to_owned());
    let engine = Engine::new(options).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        engine.runtime_description().contains("1.3"),
        "{}",
        engine.runtime_description()
    );

    // A second, different library in the same process is a clear error, not a silent reuse.
    let mut options = EngineOptions::new(dir.path());
    options.ort_lib = Some(text.clone());
    assert!(matches!(
        Engine::new(options),
        Err(EngineError::RuntimeConflict { .. })
    ));
}

/// Without an explicit path or variables, the library is found under `<data dir>/runtime/`
/// where the PyPI wheel layout puts it. Runs in a child process with the variables removed.
#[test]
fn library_is_found_in_the_data_dir() {
    if std::env::var_os("TESSERA_TEST_CHILD").is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "library_is_found_in_the_data_dir", "--nocapture"])
            .env_remove("TESSERA_ORT_LIB")
            .env_remove("ORT_DYLIB_PATH")
            .env("TESSERA_TEST_CHILD", "1")
            .status()
            .unwrap();
        assert!(status.success());
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let err = tessera::engine::locate_library(None, data.path()).unwrap_err();
    assert!(err.to_string().contains("runtime"), "{err}");
    let capi = data.path().join("runtime/onnxruntime/capi");
    std::fs::create_dir_all(&capi).unwrap();
    let name = tessera::engine::library_name();
    let old = capi.join(format!("{name}.1.9.0"));
    let new = capi.join(format!("{name}.1.32.0"));
    std::fs::write(&old, "").unwrap();
    std::fs::write(&new, "").unwrap();
    std::fs::write(capi.join("libonnxruntime_providers_shared.so"), "").unwrap();
    let found = tessera::engine::locate_library(None, data.path()).unwrap();
    if cfg!(target_os = "linux") {
        assert_eq!(found, new, "the newest version wins");
    }
}
