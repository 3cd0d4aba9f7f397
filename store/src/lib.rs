//! The user's data directory: where models, the ONNX Runtime library, the
//! compiled-graph cache and the logs live, and how model names map to files.
//!
//! Layout (created on first use):
//! `models/{checkpoints,vae,controlnet,upscalers,loras,embeddings}/`,
//! `runtime/` (ONNX Runtime library; `runtime/cuda/` the CUDA and cuDNN libraries of a GPU
//! runtime; `runtime/plugins/<name>/` plugin execution providers), `cache/` (converted
//! weights, hashes; `cache/compiled/` what compiling providers made of the graphs),
//! `logs/`, and an optional `config.toml`.
//!
//! Below everything else in the daemon (which re-exports this crate as `tessera::store`): it
//! also knows the model manifest (`manifest`, what can be installed), the platform, what a
//! runtime install puts where, the execution providers' names and where the ONNX Runtime
//! library is found, and what the installer puts where (`setup`, re-exported as
//! `tessera::setup`). The daemon's `engine`, `weights` and `cli` and the installer
//! (`tessera-install`) build on it; it links neither ONNX Runtime nor the image codecs, so the
//! installer does not either.

pub mod accelerator;
pub mod cuda;
pub mod defaults;
mod error_line;
pub mod execution_providers;
pub mod hashes;
pub mod manifest;
pub mod ort_library;
pub mod pip;
pub mod plugin_providers;
pub mod plugins;
pub mod registry;
pub mod runtime;
pub mod setup;
pub mod space;
pub mod stamp;

use std::io;
use std::path::{Path, PathBuf};
use tessera_protocol::ModelKind;

pub use error_line::one_line;
pub use registry::{ModelFile, RegistryError};
pub use stamp::FileStamp;

/// The platforms Tessera knows: where files go, which runtime wheel fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Linux,
    MacOs,
    Windows,
}

impl Platform {
    pub fn current() -> Platform {
        if cfg!(windows) {
            Platform::Windows
        } else if cfg!(target_os = "macos") {
            Platform::MacOs
        } else {
            Platform::Linux
        }
    }
}

/// The data directory of one daemon.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Uses `root` as the data directory, creating its folders if needed.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<DataDir> {
        let dir = DataDir { root: root.into() };
        create_private_dir(&dir.root)?;
        for kind in ModelKind::ALL {
            std::fs::create_dir_all(dir.models(kind))?;
        }
        for sub in [dir.runtime(), dir.cache(), dir.logs()] {
            std::fs::create_dir_all(sub)?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models/` itself.
    pub fn models_root(&self) -> PathBuf {
        self.root.join("models")
    }

    /// The folder for one kind of model, e.g. `models/upscalers/`.
    pub fn models(&self, kind: ModelKind) -> PathBuf {
        self.models_root().join(kind.folder())
    }

    pub fn runtime(&self) -> PathBuf {
        self.root.join("runtime")
    }

    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }
}

/// Creates a directory readable only by its owner (where the OS has modes):
/// the data directory may hold the daemon's socket.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Writes `bytes` to `path` so that readers see either the old file or the
/// whole new one, never a partial write (temp file in the same folder, fsync,
/// rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(folder)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_creates_the_layout() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path().join("data")).unwrap();
        for kind in ModelKind::ALL {
            assert!(dir.models(kind).is_dir(), "{kind:?}");
        }
        assert!(dir.runtime().is_dir() && dir.cache().is_dir() && dir.logs().is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.root()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("f.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 1);
    }
}
