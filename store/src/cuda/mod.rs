//! The CUDA and cuDNN libraries a GPU build of ONNX Runtime needs, taken from NVIDIA's runtime
//! wheels, so that a machine with only the NVIDIA driver can use the CUDA execution provider.
//!
//! The onnxruntime-gpu wheel names those wheels in its metadata (see [`metadata`]); the CUDA
//! major version is whatever they name, never assumed. pip resolves their versions (and what
//! they pull in: cuDNN needs cuBLAS) for the onnxruntime wheel's platform, into
//! `cache/wheels/cuda/`; their shared libraries are unpacked flat into `runtime/cuda/` (see
//! [`unpack`]) and the wheels deleted. The record ([`CudaLibraries`], kept in
//! `runtime/runtime.toml`) lists every library with its package, size and SHA-256: a re-run
//! checks it instead of fetching again, `tessera doctor` names what is missing, the installer's
//! uninstall removes it, and the daemon preloads the libraries by path (`engine::preload`).

pub mod metadata;
pub mod unpack;

use super::DataDir;
use super::hashes::sha256_file;
use super::pip;
use super::runtime::RuntimeInstallError;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The folder below `runtime/` that holds the libraries.
pub const FOLDER: &str = "cuda";

/// What an onnxruntime wheel needs from NVIDIA's wheels, and what was installed for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaLibraries {
    /// The `nvidia-*` requirements of the onnxruntime wheel, e.g. `nvidia-cuda-runtime~=13.0`.
    pub requirements: Vec<String>,
    /// The CUDA major version they name (13 for `nvidia-cuda-runtime~=13.0`).
    #[serde(default)]
    pub cuda_major: Option<u32>,
    /// The platform tags pip chose the wheels for (empty: the machine's own).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// The wheels pip resolved, the onnxruntime wheel's requirements and their dependencies.
    #[serde(default)]
    pub packages: Vec<Package>,
    /// The libraries in `runtime/cuda/`, in the order they were unpacked.
    #[serde(default)]
    pub libraries: Vec<Library>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Normalised name, e.g. `nvidia-cublas`.
    pub name: String,
    pub version: String,
    /// The wheel file it came from.
    pub wheel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Library {
    /// File name inside `runtime/cuda/`, e.g. `libcublasLt.so.13`.
    pub file: String,
    /// The package it came from.
    pub package: String,
    pub size: u64,
    pub sha256: String,
    /// Modification time when it was written (ns since 1970): a file with its recorded size and
    /// this time is not read again to check its hash.
    #[serde(default)]
    pub modified_ns: u64,
}

/// A file's modification time in ns since 1970 (0 when the system cannot tell).
pub fn modified_ns(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What a recorded library looks like on disk now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryState {
    Present,
    Missing,
    /// Present with another size than recorded.
    WrongSize(u64),
}

/// The oldest NVIDIA driver (its major version) that runs programs built with a CUDA major
/// version: CUDA 11 from 450, 12 from 525, 13 from 580 ("minor version compatibility").
pub fn minimum_driver(cuda_major: u32) -> Option<u32> {
    match cuda_major {
        11 => Some(450),
        12 => Some(525),
        13 => Some(580),
        _ => None,
    }
}

/// Whether the driver described by `accelerator::detect_nvidia` (`NVIDIA driver 550.54.14 (…)`,
/// `NVIDIA GeForce RTX 3080, 550.54.14 (nvidia-smi)`) runs CUDA `cuda_major`: `Err` with the
/// reason when it is too old, `Ok(None)` when either version is unknown.
pub fn driver_supports(driver: &str, cuda_major: u32) -> Result<Option<u32>, String> {
    let Some(minimum) = minimum_driver(cuda_major) else {
        return Ok(None);
    };
    let version = driver
        .split(|c: char| c.is_whitespace() || c == ',')
        .find(|word| {
            let mut parts = word.split('.');
            parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
                && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
        });
    let Some(major) = version.and_then(|v| v.split('.').next()?.parse::<u32>().ok()) else {
        return Ok(None);
    };
    if major < minimum {
        return Err(format!(
            "the NVIDIA driver {} is older than CUDA {cuda_major} needs ({minimum} or newer)",
            version.unwrap_or_default()
        ));
    }
    Ok(Some(minimum))
}

/// `runtime/cuda/` of a runtime folder.
pub fn folder(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(FOLDER)
}

impl CudaLibraries {
    /// What the onnxruntime wheel at `wheel` needs: `None` when its metadata names no NVIDIA
    /// wheel (a CPU or DirectML build, or a GPU build that relies on a system CUDA).
    pub fn needed_by(wheel: &Path) -> Result<Option<CudaLibraries>, RuntimeInstallError> {
        let bad = |detail: String| RuntimeInstallError::BadWheel {
            wheel: wheel.to_path_buf(),
            detail,
        };
        let file = std::fs::File::open(wheel).map_err(|e| bad(e.to_string()))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        let Some(index) = (0..archive.len()).find(|&i| {
            archive
                .name_for_index(i)
                .and_then(Result::ok)
                .is_some_and(|name| {
                    name.ends_with("/METADATA")
                        && name.matches('/').count() == 1
                        && name
                            .split('/')
                            .next()
                            .is_some_and(|d| d.ends_with(".dist-info"))
                })
        }) else {
            return Err(bad("it has no *.dist-info/METADATA".into()));
        };
        let mut text = String::new();
        archive
            .by_index(index)
            .map_err(|e| bad(e.to_string()))?
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("METADATA: {e}")))?;
        let requirements = metadata::requirements(&text);
        if requirements.is_empty() {
            return Ok(None);
        }
        let file_name = wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let platforms = metadata::WheelName::parse(&file_name)
            .map(|w| metadata::platform_tags(&w.platforms))
            .unwrap_or_default();
        Ok(Some(CudaLibraries {
            cuda_major: metadata::cuda_major(&requirements),
            requirements,
            platforms,
            ..CudaLibraries::default()
        }))
    }

    /// `CUDA 13` or, when the names do not say, `CUDA`.
    pub fn label(&self) -> String {
        match self.cuda_major {
            Some(major) => format!("CUDA {major}"),
            None => "CUDA".into(),
        }
    }

    /// `CUDA 13 libraries: 19 files, 2.13 GB in …/runtime/cuda (nvidia-cublas 13.1.0.3, …)`.
    pub fn summary(&self, runtime_dir: &Path) -> String {
        let packages: Vec<String> = self
            .packages
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect();
        format!(
            "{} libraries: {} files, {} in {} ({})",
            self.label(),
            self.libraries.len(),
            crate::space::size_text(self.size()),
            folder(runtime_dir).display(),
            packages.join(", ")
        )
    }

    /// The libraries' paths, in recorded order.
    pub fn paths(&self, runtime_dir: &Path) -> Vec<PathBuf> {
        let folder = folder(runtime_dir);
        self.libraries
            .iter()
            .map(|l| folder.join(&l.file))
            .collect()
    }

    /// Total size of the libraries.
    pub fn size(&self) -> u64 {
        self.libraries.iter().map(|l| l.size).sum()
    }

    /// Each library with what is on disk (sizes only: quick enough for `tessera doctor`).
    pub fn states(&self, runtime_dir: &Path) -> Vec<(&Library, LibraryState)> {
        let folder = folder(runtime_dir);
        self.libraries
            .iter()
            .map(|library| {
                let state = match std::fs::metadata(folder.join(&library.file)) {
                    Ok(m) if m.len() == library.size => LibraryState::Present,
                    Ok(m) => LibraryState::WrongSize(m.len()),
                    Err(_) => LibraryState::Missing,
                };
                (library, state)
            })
            .collect()
    }

    /// True when every library is there with its recorded size and SHA-256; a file whose
    /// modification time is still the recorded one is taken as unchanged without reading it.
    pub fn intact(&self, runtime_dir: &Path) -> bool {
        let folder = folder(runtime_dir);
        self.libraries.iter().all(|library| {
            let path = folder.join(&library.file);
            std::fs::metadata(&path).is_ok_and(|m| m.len() == library.size)
                && ((library.modified_ns != 0 && modified_ns(&path) == library.modified_ns)
                    || sha256_file(&path).is_ok_and(|sha| sha == library.sha256))
        })
    }

    /// Fetches the wheels these requirements resolve to with pip and unpacks their libraries
    /// into `runtime/cuda/`; returns the record (this one, with packages and libraries).
    pub fn fetch(
        &self,
        dir: &DataDir,
        index_url: Option<&str>,
    ) -> Result<CudaLibraries, RuntimeInstallError> {
        let staging = dir.cache().join("wheels").join(FOLDER);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeInstallError::Io { path, source }
        };
        // Wheels of an earlier, interrupted run may be of another resolution: start empty.
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let result = self.fetch_into(dir, &staging, index_url);
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            tracing::warn!("cannot remove {}: {e}", staging.display());
        }
        result
    }

    fn fetch_into(
        &self,
        dir: &DataDir,
        staging: &Path,
        index_url: Option<&str>,
    ) -> Result<CudaLibraries, RuntimeInstallError> {
        tracing::info!(
            "downloading the {} libraries ({}) with pip",
            self.label(),
            self.requirements.join(", ")
        );
        let download = pip::Download {
            requirements: &self.requirements,
            index_url,
            platforms: &self.platforms,
            with_dependencies: true,
            no_cache: true,
        };
        download.run(staging).map_err(|error| match error {
            pip::PipError::NoPython { tried } => RuntimeInstallError::NoPythonForCuda {
                tried,
                label: self.label(),
            },
            pip::PipError::NoSpace { detail } => RuntimeInstallError::DiskFull {
                what: format!("the {} wheels", self.label()),
                folder: staging.to_path_buf(),
                detail,
            },
            pip::PipError::Failed { detail } => RuntimeInstallError::CudaPip {
                label: self.label(),
                requirements: self.requirements.join(", "),
                detail,
            },
            pip::PipError::Io(source) => RuntimeInstallError::Io {
                path: staging.to_path_buf(),
                source,
            },
        })?;
        let mut wheels: Vec<PathBuf> = std::fs::read_dir(staging)
            .map_err(|source| RuntimeInstallError::Io {
                path: staging.to_path_buf(),
                source,
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "whl"))
            .collect();
        wheels.sort();
        let (packages, libraries) =
            unpack::unpack(&wheels, &folder(&dir.runtime())).map_err(|e| match e {
                unpack::UnpackError::BadWheel { wheel, detail } => {
                    RuntimeInstallError::BadWheel { wheel, detail }
                }
                unpack::UnpackError::NoRoom(shortfall) => RuntimeInstallError::NoSpace {
                    what: format!("the {} libraries", self.label()),
                    shortfall,
                },
                unpack::UnpackError::Io { path, source } => {
                    RuntimeInstallError::Io { path, source }
                }
            })?;
        if libraries.is_empty() {
            return Err(RuntimeInstallError::CudaPip {
                label: self.label(),
                requirements: self.requirements.join(", "),
                detail: "the wheels pip chose hold no shared library below nvidia/".into(),
            });
        }
        Ok(CudaLibraries {
            packages,
            libraries,
            ..self.clone()
        })
    }
}

/// Deletes the libraries `old` recorded that `new` does not have (all of them when `new` is
/// `None`), and `runtime/cuda/` once it is empty.
pub fn remove_stale(runtime_dir: &Path, old: Option<&CudaLibraries>, new: Option<&CudaLibraries>) {
    let Some(old) = old else { return };
    let folder = folder(runtime_dir);
    for library in &old.libraries {
        let kept = new.is_some_and(|n| n.libraries.iter().any(|l| l.file == library.file));
        if !kept {
            let path = folder.join(&library.file);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
            }
        }
    }
    if new.is_none() {
        let _ = std::fs::remove_dir(&folder);
    }
}

#[cfg(test)]
mod tests;
