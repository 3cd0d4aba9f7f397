//! Loading the CUDA and cuDNN libraries that `tessera runtime install` unpacked into
//! `runtime/cuda/`, and the DirectML wheel's own `DirectML.dll`, by their full paths, before
//! ONNX Runtime is initialised, and keeping them loaded for the life of the process.
//!
//! `onnxruntime.dll` of the DirectML build imports `DirectML.dll` by name; without a copy
//! already in the process, Windows finds the one in System32, which is older than the one the
//! wheel was built and tested with (and absent before Windows 10 1903). Loading the wheel's
//! copy first, by its full path, makes the import resolve to it ([`directml`]).
//!
//! ONNX Runtime's CUDA provider library links cuBLAS and the CUDA runtime by file name and opens
//! cuDNN (and through it NVRTC) by file name when it starts. A library already in the process is
//! what such a lookup finds (glibc's loader matches the `DT_SONAME` of loaded objects, Windows
//! the module name of loaded DLLs), so preloading makes the provider find ours without any
//! `LD_LIBRARY_PATH` or `PATH` change. This is what the Python package's
//! `onnxruntime.preload_dlls()` does with the NVIDIA wheels in `site-packages`.
//!
//! Order: a library must come after those it needs unless the loader finds them itself (the
//! NVIDIA libraries carry an `$ORIGIN` run path; on Windows the DLL's own folder is searched).
//! The recorded order is tried; one that fails is tried again after a round in which another
//! loaded, until a round loads nothing, so the order that results is a dependency order. What
//! still fails (no NVIDIA driver: no `libcuda.so.1`) is logged and reported by `tessera doctor`;
//! the CUDA provider then fails to register and the CPU takes over, as before.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::runtime::{error_chain, one_line};

/// The libraries this process loaded, and those it could not.
#[derive(Debug)]
pub struct Preloaded {
    /// In the order they loaded.
    pub loaded: Vec<PathBuf>,
    /// With the loader's reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Open for as long as this value lives (for the process, in [`PRELOADED`]).
    handles: Vec<libloading::Library>,
}

static PRELOADED: OnceLock<Preloaded> = OnceLock::new();

pub use crate::store::runtime::DIRECTML_DLL;

static DIRECTML: OnceLock<Result<libloading::Library, String>> = OnceLock::new();

/// The `DirectML.dll` beside `main_library`, if there is one.
pub(crate) fn directml_beside(main_library: &Path) -> Option<PathBuf> {
    let folder = main_library.parent()?;
    std::fs::read_dir(folder)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.eq_ignore_ascii_case(DIRECTML_DLL))
        })
}

/// Loads the `DirectML.dll` beside `main_library` by its full path, once per process, before
/// ONNX Runtime loads (Windows; elsewhere there is no DirectML). `None`: none is there.
pub(crate) fn directml(main_library: &Path) -> Option<Result<PathBuf, String>> {
    let path = directml_beside(main_library)?;
    let outcome = DIRECTML.get_or_init(|| open(&path));
    Some(match outcome {
        Ok(_) => {
            tracing::info!(library = %path.display(), "preloaded DirectML");
            Ok(path)
        }
        Err(reason) => Err(reason.clone()),
    })
}

/// The CUDA provider's library beside the ONNX Runtime library.
pub fn provider_library_name() -> &'static str {
    if cfg!(windows) {
        "onnxruntime_providers_cuda.dll"
    } else {
        "libonnxruntime_providers_cuda.so"
    }
}

/// Preloads the CUDA libraries recorded for the runtime at `main_library` (its own folder's
/// record, else the data directory's `runtime/`), once per process. Nothing is loaded when no
/// CUDA provider sits beside the library (a CPU or DirectML build) or no libraries are recorded.
pub(crate) fn cuda_libraries(main_library: &Path, data_dir: &Path) -> Option<&'static Preloaded> {
    if let Some(done) = PRELOADED.get() {
        return Some(done);
    }
    let (folder, libraries) = to_preload(main_library, data_dir)?;
    let done = PRELOADED.get_or_init(|| load_in_order(&libraries));
    tracing::info!(
        "preloaded {} of {} CUDA libraries from {}",
        done.loaded.len(),
        libraries.len(),
        folder.display()
    );
    for (path, reason) in &done.failed {
        tracing::warn!("cannot preload {}: {reason}", path.display());
    }
    Some(done)
}

/// The folder and the paths of the CUDA libraries to preload for the runtime at `main_library`.
fn to_preload(main_library: &Path, data_dir: &Path) -> Option<(PathBuf, Vec<PathBuf>)> {
    let beside = |library: &Path| {
        library
            .parent()
            .is_some_and(|folder| folder.join(provider_library_name()).is_file())
    };
    let real = main_library.canonicalize().ok();
    if !beside(main_library) && !real.as_deref().is_some_and(beside) {
        return None;
    }
    let runtime_dirs = [
        main_library.parent().map(Path::to_path_buf),
        Some(data_dir.join("runtime")),
    ];
    runtime_dirs.into_iter().flatten().find_map(|dir| {
        let cuda = crate::store::runtime::read_record(&dir)?.cuda?;
        Some((crate::store::cuda::folder(&dir), cuda.paths(&dir)))
    })
}

/// Preloads the CUDA libraries recorded for the runtime at `main_library` even when the
/// configuration does not ask for CUDA: for `tessera doctor`, which checks every provider.
pub fn preload_cuda_libraries(main_library: &Path, data_dir: &Path) -> Option<&'static Preloaded> {
    cuda_libraries(main_library, data_dir)
}

/// What this process preloaded, if it did.
pub fn preloaded() -> Option<&'static Preloaded> {
    PRELOADED.get()
}

/// Loads `paths` in rounds until every one is loaded or a round loads none.
pub(crate) fn load_in_order(paths: &[PathBuf]) -> Preloaded {
    let mut preloaded = Preloaded {
        loaded: Vec::new(),
        failed: Vec::new(),
        handles: Vec::new(),
    };
    let mut pending: Vec<PathBuf> = paths.to_vec();
    loop {
        let before = preloaded.loaded.len();
        let mut failed = Vec::new();
        for path in pending {
            match open(&path) {
                Ok(handle) => {
                    preloaded.handles.push(handle);
                    preloaded.loaded.push(path);
                }
                Err(reason) => failed.push((path, reason)),
            }
        }
        if failed.is_empty() || preloaded.loaded.len() == before {
            preloaded.failed = failed;
            return preloaded;
        }
        pending = failed.into_iter().map(|(path, _)| path).collect();
    }
}

fn open(path: &Path) -> Result<libloading::Library, String> {
    // A full path, never a name the loader would search for (Windows requires it with
    // LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR).
    let path = &std::path::absolute(path).map_err(|e| e.to_string())?;
    // SAFETY: loading a library runs its initialisers; these are the NVIDIA libraries the
    // install unpacked for this runtime, which the CUDA provider would load anyway.
    #[cfg(unix)]
    let library = unsafe {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        Library::open(Some(path), RTLD_NOW | RTLD_LOCAL).map(libloading::Library::from)
    };
    // SAFETY: as above. The DLL's own folder is searched for the DLLs it imports.
    #[cfg(windows)]
    let library = unsafe {
        use libloading::os::windows::{
            LOAD_LIBRARY_SEARCH_DEFAULT_DIRS, LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR, Library,
        };
        Library::load_with_flags(
            path,
            LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS,
        )
        .map(libloading::Library::from)
    };
    #[cfg(not(any(unix, windows)))]
    // SAFETY: as above.
    let library = unsafe { libloading::Library::new(path) };
    library.map_err(|e| one_line(&error_chain(&e)))
}

#[cfg(all(test, target_os = "linux"))]
mod tests;
