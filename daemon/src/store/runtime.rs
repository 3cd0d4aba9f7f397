//! Getting the ONNX Runtime library without a system install: fetch the
//! `onnxruntime` wheel with the user's own `pip download`, take the shared
//! libraries out of it, and record what was installed in `runtime/runtime.toml`.

use super::hashes::sha256_file;
use super::{DataDir, write_atomically};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime release this build is tested with.
pub const DEFAULT_VERSION: &str = "1.32.0";

/// The file that records the installed library.
const RECORD: &str = "runtime.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledRuntime {
    /// PyPI package the library came from (`onnxruntime`, `onnxruntime-gpu`, …).
    pub package: String,
    pub version: String,
    /// File name of the main library inside `runtime/`.
    pub library: String,
    pub sha256: String,
    /// The wheel it was taken from.
    pub wheel: String,
    /// Execution providers the package carries, best first (see `accelerator`); the daemon
    /// uses them unless `engine.execution_providers` in `config.toml` says otherwise.
    #[serde(default = "cpu_only")]
    pub providers: Vec<String>,
}

fn cpu_only() -> Vec<String> {
    vec!["cpu".into()]
}

impl InstalledRuntime {
    pub fn library_path(&self, dir: &DataDir) -> PathBuf {
        dir.runtime().join(&self.library)
    }
}

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub package: String,
    pub version: String,
    /// Use this wheel instead of downloading one.
    pub wheel: Option<PathBuf>,
    /// Install again even when the same version is present and intact.
    pub force: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            package: "onnxruntime".into(),
            version: DEFAULT_VERSION.into(),
            wheel: None,
            force: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeInstallError {
    #[error(
        "fetching ONNX Runtime needs Python 3 with pip, and none was found ({tried}); install Python 3, \
         or download the {package} wheel yourself and pass --wheel FILE, or set TESSERA_ORT_LIB to an existing library"
    )]
    NoPython { tried: String, package: String },
    #[error("pip could not download {package}=={version}: {detail}")]
    Pip {
        package: String,
        version: String,
        detail: String,
    },
    #[error("{} is not an ONNX Runtime wheel: {detail}", .wheel.display())]
    BadWheel { wheel: PathBuf, detail: String },
    #[error("cannot write the runtime into {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The runtime recorded in `runtime/runtime.toml`, if its library is still there.
pub fn installed(dir: &DataDir) -> Option<InstalledRuntime> {
    let text = std::fs::read_to_string(dir.runtime().join(RECORD)).ok()?;
    let record: InstalledRuntime = toml::from_str(&text).ok()?;
    record.library_path(dir).is_file().then_some(record)
}

/// Installs the library, reusing a wheel already in `cache/wheels/` and
/// doing nothing when the same version is installed and intact.
pub fn install(
    dir: &DataDir,
    options: &InstallOptions,
) -> Result<InstalledRuntime, RuntimeInstallError> {
    if !options.force
        && options.wheel.is_none()
        && let Some(current) = installed(dir)
        && current.package == options.package
        && current.version == options.version
        && sha256_file(&current.library_path(dir)).ok().as_deref() == Some(current.sha256.as_str())
    {
        return Ok(current);
    }
    let wheel = match &options.wheel {
        Some(wheel) => wheel.clone(),
        None => download_wheel(dir, &options.package, &options.version)?,
    };
    unpack(dir, &wheel, &options.package, &options.version)
}

/// Makes a library the user already has the data directory's runtime: linked (copied on
/// Windows) into `runtime/` and recorded, so that every daemon started for this data directory
/// (by the login service, an editor or the CLI) finds it. Returns the record and the path of
/// the link.
pub fn adopt(dir: &DataDir, library: &Path) -> Result<InstalledRuntime, RuntimeInstallError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeInstallError::Io { path, source }
    };
    let source = library.canonicalize().map_err(io(library))?;
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !is_main_library(&name) {
        return Err(RuntimeInstallError::BadWheel {
            wheel: source.clone(),
            detail: "this is not an ONNX Runtime library file name (libonnxruntime.so…, libonnxruntime…dylib, onnxruntime.dll)".into(),
        });
    }
    let link = dir.runtime().join(&name);
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).map_err(io(&link))?;
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(&source, &link).map_err(io(&link))?;
    #[cfg(not(unix))]
    std::fs::copy(&source, &link)
        .map(|_| ())
        .map_err(io(&link))?;
    let version = name
        .trim_start_matches("lib")
        .trim_start_matches("onnxruntime")
        .trim_matches(|c: char| !c.is_ascii_digit())
        .to_owned();
    let record = InstalledRuntime {
        package: "local".into(),
        version: if version.is_empty() {
            "unknown".into()
        } else {
            version
        },
        sha256: sha256_file(&source).map_err(io(&source))?,
        library: name,
        wheel: String::new(),
        providers: cpu_only(),
    };
    write_record(dir, &record)?;
    Ok(record)
}

fn download_wheel(
    dir: &DataDir,
    package: &str,
    version: &str,
) -> Result<PathBuf, RuntimeInstallError> {
    let wheels = dir.cache().join("wheels");
    let io = |source| RuntimeInstallError::Io {
        path: wheels.clone(),
        source,
    };
    std::fs::create_dir_all(&wheels).map_err(io)?;
    if let Some(cached) = find_wheel(&wheels, package, version).map_err(io)? {
        return Ok(cached);
    }
    let python = find_python().ok_or_else(|| RuntimeInstallError::NoPython {
        tried: PYTHONS
            .iter()
            .map(|p| p.join(" "))
            .collect::<Vec<_>>()
            .join(", "),
        package: package.to_owned(),
    })?;
    tracing::info!("downloading {package}=={version} with pip");
    let output = Command::new(python[0])
        .args(&python[1..])
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .arg(format!("{package}=={version}"))
        .arg("-d")
        .arg(&wheels)
        .output()
        .map_err(io)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("pip failed without a message")
            .trim()
            .to_owned();
        return Err(RuntimeInstallError::Pip {
            package: package.to_owned(),
            version: version.to_owned(),
            detail,
        });
    }
    find_wheel(&wheels, package, version)
        .map_err(io)?
        .ok_or_else(|| RuntimeInstallError::Pip {
            package: package.to_owned(),
            version: version.to_owned(),
            detail: "pip reported success but left no wheel".into(),
        })
}

/// Wheel names spell the package with underscores: `onnxruntime_gpu-1.32.0-…`.
fn find_wheel(folder: &Path, package: &str, version: &str) -> std::io::Result<Option<PathBuf>> {
    let prefix = format!("{}-{version}-", package.replace('-', "_"));
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

const PYTHONS: &[&[&str]] = &[&["python3"], &["python"], &["py", "-3"]];

fn find_python() -> Option<&'static [&'static str]> {
    PYTHONS.iter().copied().find(|candidate| {
        Command::new(candidate[0])
            .args(&candidate[1..])
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// True for the shared libraries a wheel's `onnxruntime/capi/` carries
/// (the main library, its execution-provider plug-ins, and `DirectML.dll`, which
/// `onnxruntime-directml`'s library loads from its own folder), false for the
/// Python extension module and everything else.
fn is_runtime_library(file_name: &str) -> bool {
    if file_name.eq_ignore_ascii_case("DirectML.dll") {
        return true;
    }
    if !file_name.starts_with("libonnxruntime") && !file_name.starts_with("onnxruntime") {
        return false;
    }
    if file_name.contains("pybind") {
        return false;
    }
    file_name.ends_with(".dll") || file_name.ends_with(".dylib") || file_name.contains(".so")
}

/// The library `ort` loads, as opposed to provider plug-ins.
fn is_main_library(file_name: &str) -> bool {
    is_runtime_library(file_name)
        && !file_name.contains("providers")
        && !file_name.eq_ignore_ascii_case("DirectML.dll")
}

fn unpack(
    dir: &DataDir,
    wheel: &Path,
    package: &str,
    version: &str,
) -> Result<InstalledRuntime, RuntimeInstallError> {
    let bad = |detail: String| RuntimeInstallError::BadWheel {
        wheel: wheel.to_path_buf(),
        detail,
    };
    let file = std::fs::File::open(wheel).map_err(|e| bad(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let runtime = dir.runtime();
    let mut main_library = None;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().map_err(|e| bad(e.to_string()))?.into_owned();
        let Some((folder, file_name)) = name.rsplit_once('/') else {
            continue;
        };
        if !folder.ends_with("onnxruntime/capi") || !is_runtime_library(file_name) {
            continue;
        }
        let file_name = file_name.to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{file_name}: {e}")))?;
        let target = runtime.join(&file_name);
        write_atomically(&target, &bytes).map_err(|source| RuntimeInstallError::Io {
            path: target.clone(),
            source,
        })?;
        if is_main_library(&file_name) {
            main_library = Some(file_name);
        }
    }
    let library = main_library.ok_or_else(|| bad("it holds no onnxruntime/capi library".into()))?;
    let library_path = runtime.join(&library);
    let io = |source| RuntimeInstallError::Io {
        path: library_path.clone(),
        source,
    };
    let record = InstalledRuntime {
        package: package.to_owned(),
        version: version.to_owned(),
        sha256: sha256_file(&library_path).map_err(io)?,
        library,
        wheel: wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        providers: super::accelerator::providers_for(
            package,
            crate::setup::places::Platform::current(),
        ),
    };
    write_record(dir, &record)?;
    Ok(record)
}

fn write_record(dir: &DataDir, record: &InstalledRuntime) -> Result<(), RuntimeInstallError> {
    let text = toml::to_string(record).expect("plain record serialises");
    let record_path = dir.runtime().join(RECORD);
    write_atomically(&record_path, text.as_bytes()).map_err(|source| RuntimeInstallError::Io {
        path: record_path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_wheel(path: &Path, files: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, bytes) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn a_wheel_is_unpacked_and_recorded() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path().join("data")).unwrap();
        let wheel = temp.path().join("onnxruntime-9.9.9-cp311-none-any.whl");
        fake_wheel(
            &wheel,
            &[
                ("onnxruntime/capi/libonnxruntime.so.9.9.9", b"main"),
                (
                    "onnxruntime/capi/libonnxruntime_providers_shared.so",
                    b"providers",
                ),
                (
                    "onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so",
                    b"py",
                ),
                ("onnxruntime/__init__.py", b""),
            ],
        );
        let options = InstallOptions {
            version: "9.9.9".into(),
            wheel: Some(wheel),
            ..InstallOptions::default()
        };
        let record = install(&dir, &options).unwrap();
        assert_eq!(record.library, "libonnxruntime.so.9.9.9");
        assert_eq!(record.providers, ["cpu"]);
        assert_eq!(
            record.sha256,
            sha256_file(&dir.runtime().join("libonnxruntime.so.9.9.9")).unwrap()
        );
        assert!(
            dir.runtime()
                .join("libonnxruntime_providers_shared.so")
                .is_file()
        );
        let mut names: Vec<_> = std::fs::read_dir(dir.runtime())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "libonnxruntime.so.9.9.9",
                "libonnxruntime_providers_shared.so",
                "runtime.toml"
            ]
        );
        assert_eq!(installed(&dir), Some(record));
    }

    #[test]
    fn a_wheel_without_a_library_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path().join("data")).unwrap();
        let wheel = temp.path().join("onnxruntime-1.0.0-py3-none-any.whl");
        fake_wheel(&wheel, &[("onnxruntime/__init__.py", b"")]);
        let options = InstallOptions {
            wheel: Some(wheel),
            ..InstallOptions::default()
        };
        let err = install(&dir, &options).unwrap_err().to_string();
        assert!(err.contains("holds no onnxruntime/capi library"), "{err}");
        assert_eq!(installed(&dir), None);
    }

    #[test]
    fn library_names_are_told_apart() {
        assert!(is_main_library("libonnxruntime.so.1.32.0"));
        assert!(is_main_library("libonnxruntime.1.32.0.dylib"));
        assert!(is_main_library("onnxruntime.dll"));
        assert!(!is_main_library("onnxruntime_providers_cuda.dll"));
        assert!(is_runtime_library("libonnxruntime_providers_cuda.so"));
        assert!(is_runtime_library("DirectML.dll") && !is_main_library("DirectML.dll"));
        assert!(!is_runtime_library("onnxruntime_pybind11_state.pyd"));
        assert!(!is_runtime_library("__init__.py"));
    }
}
