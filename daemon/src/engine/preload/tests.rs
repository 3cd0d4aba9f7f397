//! Preloading with real shared objects built here by the C compiler: a stand-in for the CUDA
//! runtime, one for cuBLAS that needs it (linked by file name, without a run path, so that it
//! loads only once the other is loaded), and one that needs a library nobody has.

use super::*;
use crate::store::cuda::{CudaLibraries, Library};
use crate::store::runtime::InstalledRuntime;
use std::ffi::CString;
use std::process::Command;

/// Compiles `source` into `folder/name` with `name` as its soname.
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
        .expect("these tests build shared objects with a C compiler (cc); install one or set CC");
    assert!(status.success(), "cc failed for {name}");
    out
}

/// A CUDA-runtime stand-in and a cuBLAS stand-in that needs it, built in `build` and moved to
/// `folder` (away from the link-time search path), with unique names for this test.
fn pair(build: &Path, folder: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let runtime = format!("libfakecudart_{tag}.so.13");
    let blas = format!("libfakecublas_{tag}.so.13");
    shared_object(
        build,
        &runtime,
        &format!("int fake_runtime_{tag}(void) {{ return 13; }}\n"),
        &[],
    );
    shared_object(
        build,
        &blas,
        &format!(
            "int fake_runtime_{tag}(void);\nint fake_blas_{tag}(void) {{ return fake_runtime_{tag}() * 10 + 1; }}\n"
        ),
        &[&format!("-l:{runtime}")],
    );
    std::fs::create_dir_all(folder).unwrap();
    let moved = |name: &str| {
        let to = folder.join(name);
        std::fs::rename(build.join(name), &to).unwrap();
        to
    };
    (moved(&runtime), moved(&blas))
}

/// Whether the loader has an object of this file name (the provider's lookup by name).
fn loaded_by_name(name: &str) -> bool {
    let name = CString::new(name).unwrap();
    // SAFETY: RTLD_NOLOAD only looks the name up among loaded objects; a handle it returns is
    // closed again at once.
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
fn a_library_loads_after_the_one_it_needs_and_stays_loaded_while_held() {
    let temp = tempfile::tempdir().unwrap();
    let folder = temp.path().join("runtime/cuda");
    let (runtime, blas) = pair(temp.path(), &folder, "order");
    assert!(!loaded_by_name("libfakecublas_order.so.13"));

    // cuBLAS first, as a record might list it: it cannot load before the runtime.
    let preloaded = load_in_order(&[blas.clone(), runtime.clone()]);
    assert_eq!(preloaded.loaded, [runtime.clone(), blas.clone()]);
    assert!(preloaded.failed.is_empty(), "{:?}", preloaded.failed);

    // A lookup by bare name (as the CUDA provider does) finds the preloaded objects, though
    // their folder is on no search path.
    assert!(loaded_by_name("libfakecublas_order.so.13"));
    assert!(loaded_by_name("libfakecudart_order.so.13"));
    // SAFETY: the symbol is `int (void)` in the source above.
    let value = unsafe {
        let f = preloaded.handles[1]
            .get::<unsafe extern "C" fn() -> i32>(b"fake_blas_order\0")
            .unwrap();
        f()
    };
    assert_eq!(value, 131);

    // The handles are what keeps them: once they are closed, the objects are gone.
    drop(preloaded);
    assert!(!loaded_by_name("libfakecublas_order.so.13"));
    assert!(!loaded_by_name("libfakecudart_order.so.13"));
}

#[test]
fn a_library_whose_dependency_is_missing_is_reported_and_the_rest_load() {
    let temp = tempfile::tempdir().unwrap();
    let folder = temp.path().join("runtime/cuda");
    let (runtime, blas) = pair(temp.path(), &folder, "missing");
    // Needs a library that exists nowhere (like cuDNN's engines without the NVIDIA driver).
    shared_object(
        temp.path(),
        "libfakedriver.so.1",
        "int fake_driver(void) { return 1; }\n",
        &[],
    );
    let orphan = shared_object(
        temp.path(),
        "libfakeengines_missing.so.9",
        "int fake_driver(void);\nint fake_engines(void) { return fake_driver(); }\n",
        &["-l:libfakedriver.so.1"],
    );
    std::fs::remove_file(temp.path().join("libfakedriver.so.1")).unwrap();
    let preloaded = load_in_order(&[orphan.clone(), blas.clone(), runtime.clone()]);
    assert_eq!(preloaded.loaded, [runtime, blas]);
    assert_eq!(preloaded.failed.len(), 1);
    let (path, reason) = &preloaded.failed[0];
    assert_eq!(path, &orphan);
    assert!(reason.contains("libfakedriver.so.1"), "{reason}");
    assert!(!reason.contains('\n'));
}

fn record(runtime_dir: &Path, files: &[&str]) {
    let runtime = InstalledRuntime {
        package: "onnxruntime-gpu".into(),
        version: "9.9.9".into(),
        library: "libonnxruntime.so.9.9.9".into(),
        sha256: String::new(),
        wheel: String::new(),
        providers: vec!["cuda".into(), "cpu".into()],
        dependencies_read: true,
        cuda: Some(CudaLibraries {
            requirements: vec!["nvidia-cuda-runtime~=13.0".into()],
            cuda_major: Some(13),
            libraries: files
                .iter()
                .map(|f| Library {
                    file: (*f).into(),
                    package: "nvidia-cuda-runtime".into(),
                    size: 1,
                    sha256: String::new(),
                    modified_ns: 0,
                })
                .collect(),
            ..CudaLibraries::default()
        }),
    };
    std::fs::create_dir_all(runtime_dir).unwrap();
    std::fs::write(
        runtime_dir.join("runtime.toml"),
        toml::to_string(&runtime).unwrap(),
    )
    .unwrap();
}

#[test]
fn the_libraries_recorded_beside_a_cuda_runtime_are_the_ones_preloaded() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let runtime = data.join("runtime");
    let main = runtime.join("libonnxruntime.so.9.9.9");
    record(&runtime, &["libcublasLt.so.13", "libcublas.so.13"]);
    std::fs::write(&main, b"main").unwrap();
    // A CPU build: no CUDA provider beside it, nothing to preload.
    assert_eq!(to_preload(&main, &data), None);

    std::fs::write(runtime.join(provider_library_name()), b"provider").unwrap();
    let cuda = runtime.join("cuda");
    assert_eq!(
        to_preload(&main, &data),
        Some((
            cuda.clone(),
            vec![cuda.join("libcublasLt.so.13"), cuda.join("libcublas.so.13")]
        ))
    );

    // A GPU library elsewhere (a Python environment's) with the data directory's libraries.
    let elsewhere = temp.path().join("venv/capi");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other = elsewhere.join("libonnxruntime.so.9.9.9");
    std::fs::write(&other, b"main").unwrap();
    std::fs::write(elsewhere.join(provider_library_name()), b"provider").unwrap();
    assert_eq!(to_preload(&other, &data).unwrap().0, cuda);

    // A link to a GPU library (`tessera-install --ort-lib`): the provider is beside the target.
    let linked_data = temp.path().join("linked");
    let linked_runtime = linked_data.join("runtime");
    record(&linked_runtime, &["libcudart.so.13"]);
    let link = linked_runtime.join("libonnxruntime.so.9.9.9");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    assert_eq!(
        to_preload(&link, &linked_data).unwrap().1,
        [linked_runtime.join("cuda/libcudart.so.13")]
    );
}
