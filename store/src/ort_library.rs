//! Finding the ONNX Runtime library: the path given (a file, or a folder to search), else the
//! environment (`TESSERA_ORT_LIB`, then `ORT_DYLIB_PATH`), else the newest library under the
//! data directory's `runtime/`. Loading it is the engine's (`engine/runtime.rs`); finding it is
//! here so that the installer can adopt a user's library without linking ONNX Runtime.

use std::path::{Path, PathBuf};

/// Environment variables naming the library, in order of precedence.
pub const ENV_VARS: [&str; 2] = ["TESSERA_ORT_LIB", "ORT_DYLIB_PATH"];

/// No library where one was looked for; `searched` says where.
#[derive(Debug, thiserror::Error)]
#[error(
    "ONNX Runtime library not found ({searched}); run `tessera runtime install` or set TESSERA_ORT_LIB"
)]
pub struct NotFound {
    pub searched: String,
}

/// The library to load: the explicit path, else `TESSERA_ORT_LIB`, else `ORT_DYLIB_PATH`,
/// else the newest matching library under `<data dir>/runtime/`. A path that names a folder is
/// searched like `runtime/`. A path given explicitly (argument or variable) that does not
/// exist is an error, not a reason to look elsewhere.
pub fn locate(explicit: Option<&Path>, data_dir: &Path) -> Result<PathBuf, NotFound> {
    let from_env = ENV_VARS.iter().find_map(|v| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(|s| (*v, PathBuf::from(s)))
    });
    let named = match (explicit, from_env) {
        (Some(p), _) => Some(("the --ort-lib option", p.to_owned())),
        (None, Some((var, p))) => Some((var, p)),
        (None, None) => None,
    };
    if let Some((origin, path)) = named {
        if path.is_dir() {
            return search(&path).ok_or_else(|| NotFound {
                searched: format!("no {} in {} from {origin}", library_name(), path.display()),
            });
        }
        if !path.exists() {
            return Err(NotFound {
                searched: format!("{} from {origin} does not exist", path.display()),
            });
        }
        return Ok(std::path::absolute(&path).unwrap_or(path));
    }
    let runtime_dir = data_dir.join("runtime");
    search(&runtime_dir).ok_or_else(|| NotFound {
        searched: format!("no {} in {}", library_name(), runtime_dir.display()),
    })
}

/// The platform's library file name.
pub fn library_name() -> &'static str {
    if cfg!(windows) {
        "onnxruntime.dll"
    } else if cfg!(target_os = "macos") {
        "libonnxruntime.dylib"
    } else {
        "libonnxruntime.so"
    }
}

fn is_library_name(name: &str) -> bool {
    if cfg!(windows) {
        name.eq_ignore_ascii_case("onnxruntime.dll")
    } else if cfg!(target_os = "macos") {
        name.starts_with("libonnxruntime")
            && name.ends_with(".dylib")
            && !name.contains("providers")
    } else {
        name == "libonnxruntime.so" || name.starts_with("libonnxruntime.so.")
    }
}

/// Searches `dir` and up to three levels below it (the PyPI wheel keeps the library in
/// `onnxruntime/capi/`) and returns the match with the longest (most specific) version.
fn search(dir: &Path) -> Option<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_owned(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if depth < 3 {
                    stack.push((path, depth + 1));
                }
            } else if entry.file_name().to_str().is_some_and(is_library_name) {
                found.push(path);
            }
        }
    }
    found.sort_by_key(|p| (version_key(p), p.clone()));
    found.pop().map(|p| std::path::absolute(&p).unwrap_or(p))
}

fn version_key(p: &Path) -> Vec<u32> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}
