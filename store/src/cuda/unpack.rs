//! Taking the shared libraries out of NVIDIA's runtime wheels: every `.so` / `.so.N` / `.dll`
//! below `nvidia/` (`nvidia/cu13/lib/libcublas.so.13`, `nvidia/cudnn/bin/cudnn64_9.dll`), written
//! flat into one folder; headers, static libraries and Python files stay in the wheel. The
//! space the libraries take is checked against the disk before the first byte is written.

use super::metadata::WheelName;
use super::{Library, Package};
use crate::space;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why the libraries could not be unpacked.
#[derive(Debug)]
pub enum UnpackError {
    BadWheel {
        wheel: PathBuf,
        detail: String,
    },
    NoRoom(space::Shortfall),
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// True for a shared library of an NVIDIA wheel, by its path inside the wheel.
pub fn is_shared_library(path_in_wheel: &str) -> bool {
    if !path_in_wheel.starts_with("nvidia/") || path_in_wheel.ends_with('/') {
        return false;
    }
    let name = path_in_wheel.rsplit('/').next().unwrap_or_default();
    if name.to_ascii_lowercase().ends_with(".dll") || name.ends_with(".so") {
        return true;
    }
    // libcublas.so.13, libnvrtc-builtins.so.13.5
    name.split_once(".so.").is_some_and(|(_, version)| {
        !version.is_empty() && version.split('.').all(|p| p.parse::<u32>().is_ok())
    })
}

/// One library to write: which wheel and entry it comes from.
struct Planned {
    wheel: usize,
    entry: usize,
    file: String,
    size: u64,
}

/// Unpacks the shared libraries of `wheels` into `folder` (created if needed). Returns the
/// packages and the libraries, in wheel order.
pub fn unpack(
    wheels: &[PathBuf],
    folder: &Path,
) -> Result<(Vec<Package>, Vec<Library>), UnpackError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Io { path, source }
    };
    std::fs::create_dir_all(folder).map_err(io(folder))?;
    let mut archives = Vec::new();
    let mut packages = Vec::new();
    let mut planned: Vec<Planned> = Vec::new();
    for (index, wheel) in wheels.iter().enumerate() {
        let bad = |detail: String| UnpackError::BadWheel {
            wheel: wheel.clone(),
            detail,
        };
        let file_name = wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name =
            WheelName::parse(&file_name).ok_or_else(|| bad("not a wheel file name".into()))?;
        let file = std::fs::File::open(wheel).map_err(io(wheel))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        for entry in 0..archive.len() {
            let zipped = archive
                .by_index_raw(entry)
                .map_err(|e| bad(e.to_string()))?;
            let path_in_wheel = zipped.name().map_err(|e| bad(e.to_string()))?;
            if !is_shared_library(&path_in_wheel) {
                continue;
            }
            let file = path_in_wheel
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(first) = planned.iter().find(|p| p.file == file) {
                tracing::warn!(
                    "{file} is in {} and in {}; the first is kept",
                    wheels[first.wheel].display(),
                    wheel.display()
                );
                continue;
            }
            planned.push(Planned {
                wheel: index,
                entry,
                file,
                size: zipped.size(),
            });
        }
        packages.push(Package {
            name: name.name,
            version: name.version,
            wheel: file_name,
        });
        archives.push(archive);
    }

    // Each file replaces one of the same name (if any) once it is whole; at most one is
    // written but not yet in place.
    let replaced: u64 = planned
        .iter()
        .filter_map(|p| std::fs::metadata(folder.join(&p.file)).ok())
        .map(|m| m.len())
        .sum();
    let total: u64 = planned.iter().map(|p| p.size).sum();
    let largest = planned.iter().map(|p| p.size).max().unwrap_or(0);
    let needed = total.saturating_sub(replaced).saturating_add(largest);
    space::ensure_room(folder, needed).map_err(UnpackError::NoRoom)?;

    let mut libraries = Vec::with_capacity(planned.len());
    for p in &planned {
        let bad = |detail: String| UnpackError::BadWheel {
            wheel: wheels[p.wheel].clone(),
            detail,
        };
        let mut entry = archives[p.wheel]
            .by_index(p.entry)
            .map_err(|e| bad(format!("{}: {e}", p.file)))?;
        let target = folder.join(&p.file);
        let (size, sha256) = write_streamed(&mut entry, &target).map_err(io(&target))?;
        libraries.push(Library {
            file: p.file.clone(),
            package: packages[p.wheel].name.clone(),
            size,
            sha256,
            modified_ns: super::modified_ns(&target),
        });
    }
    Ok((packages, libraries))
}

/// Copies `reader` to `target` through a temporary file in the same folder (a library is never
/// seen half written), hashing it on the way.
fn write_streamed(reader: &mut impl Read, target: &Path) -> std::io::Result<(u64, String)> {
    let folder = target.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(folder)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        temp.write_all(&buffer[..n])?;
        size += n as u64;
    }
    temp.as_file().sync_all()?;
    temp.persist(target).map_err(|e| e.error)?;
    Ok((size, crate::hashes::hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shared_libraries_below_nvidia_count() {
        for yes in [
            "nvidia/cu13/lib/libcublas.so.13",
            "nvidia/cu13/lib/libnvrtc-builtins.so.13.5",
            "nvidia/cuda_nvrtc/lib/libnvrtc.alt.so.12",
            "nvidia/cudnn/lib/libcudnn.so.9",
            "nvidia/cu13/bin/x86_64/cublasLt64_13.dll",
            "nvidia/cudnn/bin/cudnn64_9.DLL",
            "nvidia/nccl/lib/libnccl.so",
        ] {
            assert!(is_shared_library(yes), "{yes}");
        }
        for no in [
            "nvidia/cu13/lib/libcudart_static.a",
            "nvidia/cu13/include/cublas_v2.h",
            "nvidia/cu13/lib/",
            "nvidia/__init__.py",
            "nvidia/cu13/lib/x64/cublas.lib",
            "nvidia/cu13/lib/libfoo.so.txt",
            "nvidia_cublas-13.1.0.3.dist-info/METADATA",
            "other/libcublas.so.13",
        ] {
            assert!(!is_shared_library(no), "{no}");
        }
    }
}
