//! Starting the engine on a GPU runtime's data directory preloads the CUDA libraries recorded
//! in `runtime/runtime.toml` from `runtime/cuda/`, before ONNX Runtime is initialised, and
//! keeps them loaded. The runtime here is the test library linked into a data directory beside a
//! stand-in CUDA provider file; the CUDA libraries are shared objects built by the C compiler.
//!
//! A separate test binary (so a separate process): the preload happens once per process.

#![cfg(target_os = "linux")]

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use tessera::engine::{Engine, EngineOptions, EngineTuning, ExecutionProvider};
use tessera::store::cuda::{CudaLibraries, Library};
use tessera::store::runtime::InstalledRuntime;

fn shared_object(folder: &Path, name: &str, source: &str, link: &[&str]) -> PathBuf {
    let c = folder.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = folder.join(name);
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&c)
        .arg(format!("-Wl,-soname,{name}"))
        .arg(format!("-L{}", folder.display()))
        .args(link)
        .status()
        .expect("this test builds shared objects with a C compiler (cc); install one or set CC");
    assert!(status.success(), "cc failed for {name}");
    out
}

fn loaded_by_name(name: &str) -> bool {
    let name = CString::new(name).unwrap();
    // SAFETY: RTLD_NOLOAD only looks the name up among loaded objects; the handle is closed.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
        true
    }
}

#[test]
fn the_engine_preloads_the_recorded_cuda_libraries_before_onnx_runtime() {
    let temp = tempfile::tempdir().unwrap();
    let build = temp.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    shared_object(
        &build,
        "libtesseracudart.so.13",
        "int tessera_cudart(void) { return 13; }\n",
        &[],
    );
    shared_object(
        &build,
        "libtesseracublas.so.13",
        "int tessera_cudart(void);\nint tessera_cublas(void) { return tessera_cudart(); }\n",
        &["-l:libtesseracudart.so.13"],
    );

    let data = temp.path().join("data");
    let runtime = data.join("runtime");
    let cuda = runtime.join("cuda");
    std::fs::create_dir_all(&cuda).unwrap();
    let mut libraries = Vec::new();
    for name in ["libtesseracublas.so.13", "libtesseracudart.so.13"] {
        std::fs::rename(build.join(name), cuda.join(name)).unwrap();
        libraries.push(Library {
            file: name.into(),
            package: "nvidia-test".into(),
            size: std::fs::metadata(cuda.join(name)).unwrap().len(),
            sha256: String::new(),
            modified_ns: 0,
        });
    }
    let real = common::ort_lib();
    let name = real.file_name().unwrap().to_string_lossy().into_owned();
    let main = runtime.join(&name);
    std::os::unix::fs::symlink(&real, &main).unwrap();
    std::fs::write(
        runtime.join("libonnxruntime_providers_cuda.so"),
        b"stand-in",
    )
    .unwrap();
    let record = InstalledRuntime {
        package: "onnxruntime-gpu".into(),
        version: "test".into(),
        library: name,
        sha256: String::new(),
        wheel: String::new(),
        providers: vec!["cuda".into(), "cpu".into()],
        dependencies_read: true,
        cuda: Some(CudaLibraries {
            requirements: vec!["nvidia-test~=13.0".into()],
            cuda_major: Some(13),
            libraries,
            ..CudaLibraries::default()
        }),
    };
    std::fs::write(
        runtime.join("runtime.toml"),
        toml::to_string(&record).unwrap(),
    )
    .unwrap();

    assert!(tessera::engine::preloaded_cuda_libraries().is_none());
    assert!(!loaded_by_name("libtesseracublas.so.13"));
    let mut options = EngineOptions::new(&data);
    options.ort_lib = Some(main);
    let tuning = EngineTuning {
        execution_providers: vec![
            ExecutionProvider::Cuda { device_id: 0 },
            ExecutionProvider::Cpu,
        ],
        ..EngineTuning::default()
    };
    let engine = Engine::with_tuning(options, tuning).unwrap_or_else(|e| panic!("{e}"));
    assert!(engine.runtime_description().contains("ONNX Runtime"));

    let preloaded = tessera::engine::preloaded_cuda_libraries().expect("the engine preloaded");
    assert_eq!(
        preloaded.loaded,
        [
            cuda.join("libtesseracudart.so.13"),
            cuda.join("libtesseracublas.so.13")
        ],
        "the runtime stand-in first, then the library that needs it"
    );
    assert!(preloaded.failed.is_empty(), "{:?}", preloaded.failed);
    // Found by bare name, as the CUDA provider looks them up, and still loaded after the call.
    assert!(loaded_by_name("libtesseracublas.so.13"));
    assert!(loaded_by_name("libtesseracudart.so.13"));
}

/// `tessera doctor` on such a data directory: what was preloaded, and each library that would
/// not load with the loader's reason (here one needing a library nobody has, as cuDNN's engines
/// need the NVIDIA driver's `libcuda.so.1`).
#[test]
fn doctor_names_a_cuda_library_that_does_not_load_and_why() {
    let temp = tempfile::tempdir().unwrap();
    let build = temp.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    shared_object(
        &build,
        "libdoctorcudart.so.13",
        "int doctor_cudart(void) { return 13; }\n",
        &[],
    );
    shared_object(
        &build,
        "libdoctordriver.so.1",
        "int doctor_driver(void) { return 1; }\n",
        &[],
    );
    shared_object(
        &build,
        "libdoctorengines.so.9",
        "int doctor_driver(void);\nint doctor_engines(void) { return doctor_driver(); }\n",
        &["-l:libdoctordriver.so.1"],
    );
    let data = temp.path().join("data");
    let runtime = data.join("runtime");
    let cuda = runtime.join("cuda");
    std::fs::create_dir_all(&cuda).unwrap();
    let mut libraries = Vec::new();
    for name in ["libdoctorengines.so.9", "libdoctorcudart.so.13"] {
        std::fs::rename(build.join(name), cuda.join(name)).unwrap();
        libraries.push(Library {
            file: name.into(),
            package: "nvidia-test".into(),
            size: std::fs::metadata(cuda.join(name)).unwrap().len(),
            sha256: String::new(),
            modified_ns: 0,
        });
    }
    let real = common::ort_lib();
    let name = real.file_name().unwrap().to_string_lossy().into_owned();
    std::os::unix::fs::symlink(&real, runtime.join(&name)).unwrap();
    std::fs::write(
        runtime.join("libonnxruntime_providers_cuda.so"),
        b"stand-in",
    )
    .unwrap();
    let record = InstalledRuntime {
        package: "onnxruntime-gpu".into(),
        version: "test".into(),
        library: name,
        sha256: tessera::store::hashes::sha256_file(&real).unwrap(),
        wheel: String::new(),
        providers: vec!["cuda".into(), "cpu".into()],
        dependencies_read: true,
        cuda: Some(CudaLibraries {
            requirements: vec!["nvidia-test~=13.0".into()],
            cuda_major: Some(13),
            libraries,
            ..CudaLibraries::default()
        }),
    };
    std::fs::write(
        runtime.join("runtime.toml"),
        toml::to_string(&record).unwrap(),
    )
    .unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("doctor")
        .env("HOME", temp.path())
        .env("XDG_RUNTIME_DIR", temp.path())
        .env("TESSERA_DATA_DIR", &data)
        .env_remove("TESSERA_SOCKET")
        .env_remove("TESSERA_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    eprintln!("{out}");
    assert!(
        out.contains("CUDA 13 libraries for onnxruntime-gpu test in")
            && out.contains("2 of 2 present"),
        "{out}"
    );
    assert!(
        out.contains("ok       preloaded 1 of 2 CUDA libraries"),
        "{out}"
    );
    let engines = cuda.join("libdoctorengines.so.9");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("PROBLEM  {} does not load: ", engines.display())))
        .unwrap_or_else(|| panic!("no line for the engines library: {out}"));
    assert!(line.contains("libdoctordriver.so.1"), "{line}");
    assert!(out.contains("no NVIDIA driver"), "{out}");
}
