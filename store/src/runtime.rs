//! Getting the ONNX Runtime library without a system install: fetch the
//! `onnxruntime` wheel with the user's own `pip download`, take the shared
//! libraries out of it, and record what was installed in `runtime/runtime.toml`.
//! A GPU wheel also gets the CUDA and cuDNN libraries its metadata asks for (see `cuda`).

use super::cuda::{self, CudaLibraries};
use super::hashes::sha256_file;
use super::space::Shortfall;
use super::{DataDir, pip, write_atomically};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The ONNX Runtime release this build is tested with.
pub const DEFAULT_VERSION: &str = "1.32.0";

/// The DirectML library the DirectML wheel carries beside `onnxruntime.dll`.
pub const DIRECTML_DLL: &str = "DirectML.dll";

/// The newest `onnxruntime-gpu` release published as a wheel (1.32.0 is not), and the oldest
/// this build accepts (it needs ONNX Runtime API 31).
pub const GPU_VERSION: &str = "1.31.1";

/// The release to install of `package` when none is asked for.
pub fn default_version(package: &str) -> &'static str {
    match package {
        "onnxruntime-gpu" => GPU_VERSION,
        _ => DEFAULT_VERSION,
    }
}

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
    /// Whether the wheel's metadata was read for CUDA libraries (records written before
    /// Tessera did so have `false`, and the next install reads it).
    #[serde(default)]
    pub dependencies_read: bool,
    /// The CUDA and cuDNN libraries installed into `runtime/cuda/` for a GPU wheel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaLibraries>,
    /// Plugin execution providers installed into `runtime/plugins/` (`store/plugins.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<super::plugins::InstalledPlugin>,
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
    /// The package index pip uses instead of the configured one (for tests and mirrors).
    pub index_url: Option<String>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            package: "onnxruntime".into(),
            version: DEFAULT_VERSION.into(),
            wheel: None,
            force: false,
            index_url: None,
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
    #[error(
        "fetching the {label} libraries needs Python 3 with pip, and none was found ({tried}); install Python 3 and run the install again (ONNX Runtime itself is installed and runs on the CPU)"
    )]
    NoPythonForCuda { tried: String, label: String },
    #[error("pip could not download {package}=={version}: {detail}")]
    Pip {
        package: String,
        version: String,
        detail: String,
    },
    #[error(
        "pip could not download the {label} libraries ({requirements}): {detail}; the CPU still works, and `tessera runtime install --package onnxruntime-gpu` tries again"
    )]
    CudaPip {
        label: String,
        requirements: String,
        detail: String,
    },
    #[error("{} is not usable: {detail}", .wheel.display())]
    BadWheel { wheel: PathBuf, detail: String },
    #[error(
        "not enough free space for {what}: {shortfall} (or choose another data directory with --data-dir) and run the install again"
    )]
    NoSpace { what: String, shortfall: Shortfall },
    #[error(
        "not enough free space to download {what} into {}: {detail}; free space there (or choose another data directory with --data-dir) and run the install again",
        .folder.display()
    )]
    DiskFull {
        what: String,
        folder: PathBuf,
        detail: String,
    },
    #[error("cannot write the runtime into {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The runtime recorded in `runtime/runtime.toml`, if its library is still there.
pub fn installed(dir: &DataDir) -> Option<InstalledRuntime> {
    let record = read_record(&dir.runtime())?;
    record.library_path(dir).is_file().then_some(record)
}

/// The record in a runtime folder, whatever is left of what it lists.
pub fn read_record(runtime_dir: &Path) -> Option<InstalledRuntime> {
    let text = std::fs::read_to_string(runtime_dir.join(RECORD)).ok()?;
    toml::from_str(&text).ok()
}

/// Installs the library (and, for a GPU wheel, its CUDA libraries), reusing a wheel already in
/// `cache/wheels/` and doing nothing when the same version is installed and intact.
pub fn install(
    dir: &DataDir,
    options: &InstallOptions,
) -> Result<InstalledRuntime, RuntimeInstallError> {
    let current = installed(dir);
    if !options.force
        && options.wheel.is_none()
        && let Some(current) = &current
        && current.package == options.package
        && current.version == options.version
        && current.dependencies_read
        && sha256_file(&current.library_path(dir)).ok().as_deref() == Some(current.sha256.as_str())
    {
        return match &current.cuda {
            Some(libraries) if !libraries.intact(&dir.runtime()) => {
                // Fetch again what the record says the wheel needs.
                let mut record = current.clone();
                record.cuda = Some(libraries.fetch(dir, options.index_url.as_deref())?);
                cuda::remove_stale(&dir.runtime(), current.cuda.as_ref(), record.cuda.as_ref());
                write_record(dir, &record)?;
                Ok(record)
            }
            _ => Ok(current.clone()),
        };
    }
    let wheel = match &options.wheel {
        Some(wheel) => wheel.clone(),
        None => download_wheel(dir, options)?,
    };
    let needed = CudaLibraries::needed_by(&wheel)?;
    let mut record = unpack(dir, &wheel, &options.package, &options.version)?;
    let earlier = read_record(&dir.runtime());
    // Plugins load into any ONNX Runtime of a recent enough version: they stay.
    record.plugins = earlier
        .as_ref()
        .map(|r| r.plugins.clone())
        .unwrap_or_default();
    let previous = earlier.and_then(|c| c.cuda);
    // Recorded now, with the libraries still in place, as not checked for CUDA: should fetching
    // fail, the next run tries again (and knows what to replace).
    record.cuda = previous.clone();
    write_record(dir, &record)?;
    let reusable = previous.as_ref().filter(|p| {
        needed
            .as_ref()
            .is_some_and(|n| n.requirements == p.requirements && n.platforms == p.platforms)
            && !options.force
            && p.intact(&dir.runtime())
    });
    record.cuda = match (needed, reusable) {
        (Some(_), Some(previous)) => Some(previous.clone()),
        (Some(needed), None) => Some(needed.fetch(dir, options.index_url.as_deref())?),
        (None, _) => None,
    };
    cuda::remove_stale(&dir.runtime(), previous.as_ref(), record.cuda.as_ref());
    record.dependencies_read = true;
    write_record(dir, &record)?;
    Ok(record)
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
        dependencies_read: true,
        cuda: None,
        plugins: Vec::new(),
    };
    // CUDA libraries installed for an earlier runtime belong to that one; plugins stay.
    let earlier = read_record(&dir.runtime());
    let mut record = record;
    record.plugins = earlier
        .as_ref()
        .map(|r| r.plugins.clone())
        .unwrap_or_default();
    let previous = earlier.and_then(|r| r.cuda);
    cuda::remove_stale(&dir.runtime(), previous.as_ref(), None);
    write_record(dir, &record)?;
    Ok(record)
}

fn download_wheel(dir: &DataDir, options: &InstallOptions) -> Result<PathBuf, RuntimeInstallError> {
    cached_wheel(
        dir,
        &options.package,
        &options.version,
        options.index_url.as_deref(),
    )
}

/// `package==version`'s wheel in the data directory's `cache/wheels/`, downloaded with the user's
/// pip unless it is there already.
pub(crate) fn cached_wheel(
    dir: &DataDir,
    package: &str,
    version: &str,
    index_url: Option<&str>,
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
    tracing::info!("downloading {package}=={version} with pip");
    let pip_error = |detail: String| RuntimeInstallError::Pip {
        package: package.to_owned(),
        version: version.to_owned(),
        detail,
    };
    pip::Download {
        requirements: &[format!("{package}=={version}")],
        index_url,
        ..pip::Download::default()
    }
    .run(&wheels)
    .map_err(|error| match error {
        pip::PipError::NoPython { tried } => RuntimeInstallError::NoPython {
            tried,
            package: package.to_owned(),
        },
        pip::PipError::NoSpace { detail } => RuntimeInstallError::DiskFull {
            what: format!("{package} {version}"),
            folder: wheels.clone(),
            detail,
        },
        pip::PipError::Failed { detail } => pip_error(detail),
        pip::PipError::Io(source) => io(source),
    })?;
    find_wheel(&wheels, package, version)
        .map_err(io)?
        .ok_or_else(|| pip_error("pip reported success but left no wheel".into()))
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

/// True for the shared libraries a wheel's `onnxruntime/capi/` carries
/// (the main library, its execution-provider plug-ins, and the DirectML wheel's own
/// `DirectML.dll`, newer than the one Windows ships), false for the
/// Python extension module and everything else.
fn is_runtime_library(file_name: &str) -> bool {
    if file_name.eq_ignore_ascii_case(DIRECTML_DLL) {
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
        && !file_name.eq_ignore_ascii_case(DIRECTML_DLL)
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
        providers: super::accelerator::providers_for(package, super::Platform::current()),
        dependencies_read: false,
        cuda: None,
        plugins: Vec::new(),
    };
    Ok(record)
}

pub(crate) fn write_record(
    dir: &DataDir,
    record: &InstalledRuntime,
) -> Result<(), RuntimeInstallError> {
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
                (
                    "onnxruntime-9.9.9.dist-info/METADATA",
                    b"Name: onnxruntime\nVersion: 9.9.9\nRequires-Dist: numpy\n",
                ),
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
        fake_wheel(
            &wheel,
            &[
                ("onnxruntime/__init__.py", b""),
                (
                    "onnxruntime-1.0.0.dist-info/METADATA",
                    b"Name: onnxruntime\n",
                ),
            ],
        );
        let options = InstallOptions {
            wheel: Some(wheel),
            ..InstallOptions::default()
        };
        let err = install(&dir, &options).unwrap_err().to_string();
        assert!(err.contains("holds no onnxruntime/capi library"), "{err}");
        assert_eq!(installed(&dir), None);
    }

    /// A CPU wheel in `cache/wheels/`, as `download_wheel` leaves it.
    fn cached_cpu_wheel(dir: &DataDir) -> PathBuf {
        let wheels = dir.cache().join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        let wheel = wheels.join("onnxruntime-9.9.9-cp311-cp311-manylinux_2_28_x86_64.whl");
        fake_wheel(
            &wheel,
            &[
                ("onnxruntime/capi/libonnxruntime.so.9.9.9", b"main"),
                (
                    "onnxruntime-9.9.9.dist-info/METADATA",
                    b"Name: onnxruntime\nVersion: 9.9.9\n",
                ),
            ],
        );
        wheel
    }

    #[test]
    fn a_record_older_than_the_cuda_step_reads_its_wheel_again() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path().join("data")).unwrap();
        cached_cpu_wheel(&dir);
        let options = InstallOptions {
            version: "9.9.9".into(),
            ..InstallOptions::default()
        };
        let first = install(&dir, &options).unwrap();
        assert!(first.dependencies_read);
        // As written before the CUDA step existed: no `dependencies_read`.
        let record_path = dir.runtime().join(RECORD);
        let old = std::fs::read_to_string(&record_path)
            .unwrap()
            .replace("dependencies_read = true\n", "");
        std::fs::write(&record_path, &old).unwrap();
        assert!(!read_record(&dir.runtime()).unwrap().dependencies_read);
        let again = install(&dir, &options).unwrap();
        assert!(again.dependencies_read && again.cuda.is_none());
        assert_eq!(read_record(&dir.runtime()), Some(again));
    }

    #[test]
    fn a_cpu_runtime_over_a_gpu_one_takes_its_cuda_libraries_away() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path().join("data")).unwrap();
        let cuda_dir = cuda::folder(&dir.runtime());
        std::fs::create_dir_all(&cuda_dir).unwrap();
        std::fs::write(cuda_dir.join("libcublas.so.13"), b"cublas").unwrap();
        std::fs::write(cuda_dir.join("notes.txt"), b"the user's").unwrap();
        std::fs::write(dir.runtime().join("libonnxruntime.so.9.9.8"), b"gpu").unwrap();
        let gpu = InstalledRuntime {
            package: "onnxruntime-gpu".into(),
            version: "9.9.8".into(),
            library: "libonnxruntime.so.9.9.8".into(),
            sha256: sha256_file(&dir.runtime().join("libonnxruntime.so.9.9.8")).unwrap(),
            wheel: String::new(),
            providers: vec!["cuda".into(), "cpu".into()],
            dependencies_read: true,
            cuda: Some(CudaLibraries {
                requirements: vec!["nvidia-cublas~=13.0".into()],
                libraries: vec![cuda::Library {
                    file: "libcublas.so.13".into(),
                    package: "nvidia-cublas".into(),
                    size: 6,
                    sha256: sha256_file(&cuda_dir.join("libcublas.so.13")).unwrap(),
                    modified_ns: 0,
                }],
                ..CudaLibraries::default()
            }),
            plugins: Vec::new(),
        };
        write_record(&dir, &gpu).unwrap();
        let options = InstallOptions {
            version: "9.9.9".into(),
            wheel: Some(cached_cpu_wheel(&dir)),
            ..InstallOptions::default()
        };
        let cpu = install(&dir, &options).unwrap();
        assert_eq!((cpu.package.as_str(), cpu.cuda), ("onnxruntime", None));
        assert!(!cuda_dir.join("libcublas.so.13").exists());
        assert!(
            cuda_dir.join("notes.txt").exists(),
            "what the record does not list stays"
        );
    }

    #[test]
    fn library_names_are_told_apart() {
        assert!(is_main_library("libonnxruntime.so.1.32.0"));
        assert!(is_main_library("libonnxruntime.1.32.0.dylib"));
        assert!(is_main_library("onnxruntime.dll"));
        assert!(!is_main_library("onnxruntime_providers_cuda.dll"));
        assert!(is_runtime_library("libonnxruntime_providers_cuda.so"));
        assert!(!is_runtime_library("onnxruntime_pybind11_state.pyd"));
        assert!(!is_runtime_library("__init__.py"));
        assert!(
            is_runtime_library("DirectML.dll"),
            "the wheel's own DirectML"
        );
        assert!(!is_main_library("DirectML.dll"));
    }
}
