//! Finding, checking and loading the ONNX Runtime shared library, once per process.
//!
//! `ort` with `load-dynamic` panics when it cannot load the library on its own, and it loads
//! only one library per process. So we resolve the path ourselves (`store::ort_library`, which
//! the installer shares), open it with `libloading`
//! and read its version before `ort` ever sees it: a missing file, a non-library, a library
//! without the ONNX Runtime entry point or an old version each become a one-line
//! [`EngineError`] instead of a panic. The `ort` initialisation itself runs under
//! `catch_unwind` as a last guard. The CUDA libraries installed beside a GPU runtime are loaded
//! first (see `preload`).

use std::ffi::CStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::EngineError;
use crate::store::ort_library;
pub use crate::store::ort_library::{ENV_VARS, library_name};

/// The loaded runtime: `ort`'s environment plus what we learned about the library.
pub(crate) struct Runtime {
    pub env: ort::environment::Environment,
    pub path: PathBuf,
    pub version: String,
    /// Our own handle, kept open for the life of the process so the library is never unloaded
    /// under `ort`.
    _library: libloading::Library,
}

/// The one runtime of this process (ONNX Runtime allows one environment per process).
static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// Finds the library (see [`locate`]), then loads it unless this process already has;
/// `preload_cuda`: the configuration asks for CUDA, so its libraries are loaded first.
pub(crate) fn load(
    explicit: Option<&Path>,
    data_dir: &Path,
    preload_cuda: bool,
) -> Result<Arc<Runtime>, EngineError> {
    let path = locate(explicit, data_dir)?;
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(runtime) = slot.as_ref() {
        if same_file(&runtime.path, &path) {
            return Ok(runtime.clone());
        }
        return Err(EngineError::RuntimeConflict {
            loaded: runtime.path.clone(),
            requested: path,
        });
    }
    let runtime = Arc::new(init(&path, data_dir, preload_cuda)?);
    *slot = Some(runtime.clone());
    Ok(runtime)
}

/// The library this process loaded, if any.
pub(crate) fn loaded_path() -> Option<PathBuf> {
    RUNTIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|r| r.path.clone())
}

/// The library to load (see [`ort_library::locate`]).
pub fn locate(explicit: Option<&Path>, data_dir: &Path) -> Result<PathBuf, EngineError> {
    ort_library::locate(explicit, data_dir).map_err(|e| EngineError::RuntimeNotFound {
        searched: e.searched,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Checks the library, preloads the CUDA libraries installed for it when `preload_cuda`, and
/// initialises `ort`.
fn init(path: &Path, data_dir: &Path, preload_cuda: bool) -> Result<Runtime, EngineError> {
    let unusable = |reason: String| EngineError::RuntimeUnusable {
        path: path.to_owned(),
        reason,
    };
    // The DirectML wheel's own DirectML.dll, by its full path, before onnxruntime.dll is
    // loaded at all: its import of DirectML.dll then resolves to it, not to System32's.
    if cfg!(windows)
        && let Some(Err(reason)) = super::preload::directml(path)
    {
        tracing::warn!("cannot preload DirectML.dll beside the runtime: {reason}");
    }
    // SAFETY: loading a shared library runs its initialisers; the user named this file as
    // their ONNX Runtime, which is the trust we need anyway.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| {
        unusable(format!(
            "not a loadable library ({})",
            one_line(&error_chain(&e))
        ))
    })?;
    let version = {
        // SAFETY: the symbol has this signature in every ONNX Runtime release.
        let get_base = unsafe {
            library.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase\0")
        }
        .map_err(|_| unusable("it has no OrtGetApiBase, so it is not ONNX Runtime".into()))?;
        // SAFETY: OrtGetApiBase takes no arguments and returns a static table or null.
        let base = unsafe { get_base() };
        if base.is_null() {
            return Err(unusable("OrtGetApiBase returned nothing".into()));
        }
        // SAFETY: non-null OrtApiBase pointers point at a static table whose GetVersionString
        // returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) };
        let version = version.to_string_lossy().into_owned();
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if minor < ort::MINOR_VERSION {
            return Err(EngineError::RuntimeTooOld {
                path: path.to_owned(),
                found: version,
                required: ort::MINOR_VERSION,
            });
        }
        // SAFETY: as above; GetApi returns null for API versions the library lacks.
        if unsafe { ((*base).GetApi)(ort::sys::ORT_API_VERSION) }.is_null() {
            return Err(unusable(format!(
                "version {version} does not offer API {}",
                ort::sys::ORT_API_VERSION
            )));
        }
        version
    };
    // Before ONNX Runtime starts, so that its CUDA provider finds them whenever a session asks
    // for it; not for a library that is no ONNX Runtime at all, and only when CUDA is wanted
    // (the libraries cost about 380 MB of memory once loaded).
    if preload_cuda {
        super::preload::cuda_libraries(path, data_dir);
    }

    let env = catch_unwind(AssertUnwindSafe(|| -> Result<_, String> {
        let builder = ort::init_from(path).map_err(|e| e.to_string())?;
        builder
            .with_name("tessera")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    }))
    .map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "ort panicked".into());
        unusable(one_line(&msg))
    })?
    .map_err(|e| unusable(one_line(&e)))?;

    tracing::info!(path = %path.display(), %version, "loaded ONNX Runtime");
    Ok(Runtime {
        env,
        path: path.to_owned(),
        version,
        _library: library,
    })
}

/// An error and its sources, joined (libloading keeps dlerror's text in the source).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Error texts from C libraries may span lines; the CLI prints ours on one.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
