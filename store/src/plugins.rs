//! Installing plugin execution providers: the provider's wheel (`onnxruntime-ep-openvino`,
//! `onnxruntime-ep-webgpu`, …) fetched with the user's pip into `cache/wheels/`, its shared
//! libraries (the plugin and what it brings: OpenVINO's runtime and device plugins, TBB) and
//! data files unpacked into `runtime/plugins/<name>/`, and a record of each file (size and
//! SHA-256) kept with the runtime's in `runtime/runtime.toml`, so that a re-run checks instead
//! of fetching again, `tessera doctor` names what is missing, and uninstalling removes it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::hashes::sha256_file;
use super::plugin_providers::{self as plugins, PluginProvider};
use super::runtime::RuntimeInstallError;
use super::{DataDir, write_atomically};

/// The release of each plugin's wheel this build is tested with (OpenVINO and WebGPU load into
/// ONNX Runtime 1.32.0 here; TensorRT-RTX is not tested without an RTX card).
pub fn default_version(provider: PluginProvider) -> &'static str {
    match provider {
        PluginProvider::OpenVino => "1.8.1",
        PluginProvider::WebGpu => "0.4.0",
        PluginProvider::TensorRtRtx => "0.5.0",
    }
}

/// The package pip is asked for: TensorRT-RTX comes per CUDA major, its meta-package only
/// picks one; CUDA 13 is the meta-package's default.
fn package(provider: PluginProvider) -> &'static str {
    match provider {
        PluginProvider::TensorRtRtx => "onnxruntime-ep-nv-tensorrt-rtx-cu13",
        other => other.package(),
    }
}

/// One installed plugin, as `runtime.toml` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPlugin {
    /// `openvino`, `webgpu`, `tensorrt-rtx`.
    pub provider: String,
    pub package: String,
    pub version: String,
    /// The wheel it came from.
    pub wheel: String,
    /// The files in `runtime/plugins/<provider>/`.
    pub files: Vec<PluginFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginFile {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

impl InstalledPlugin {
    pub fn provider(&self) -> Option<PluginProvider> {
        PluginProvider::ALL
            .into_iter()
            .find(|p| p.config_name() == self.provider)
    }

    /// The folder its files are in.
    pub fn folder(&self, dir: &DataDir) -> PathBuf {
        dir.runtime().join("plugins").join(&self.provider)
    }

    /// The recorded files that are missing or of another size now.
    pub fn damaged(&self, dir: &DataDir) -> Vec<&PluginFile> {
        let folder = self.folder(dir);
        self.files
            .iter()
            .filter(|f| std::fs::metadata(folder.join(&f.file)).map_or(true, |m| m.len() != f.size))
            .collect()
    }

    /// Its total size in bytes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What to install.
#[derive(Debug, Clone)]
pub struct PluginInstallOptions {
    pub version: Option<String>,
    /// Use this wheel instead of downloading one.
    pub wheel: Option<PathBuf>,
    pub force: bool,
    pub index_url: Option<String>,
}

/// Installs `provider`'s plugin into `runtime/plugins/<name>/`, unless the same version is
/// recorded there intact (`previous`). Files of an earlier install that the new one lacks are
/// removed.
pub fn install(
    dir: &DataDir,
    provider: PluginProvider,
    previous: Option<&InstalledPlugin>,
    options: &PluginInstallOptions,
) -> Result<InstalledPlugin, RuntimeInstallError> {
    let version = options
        .version
        .clone()
        .unwrap_or_else(|| default_version(provider).to_owned());
    let package = package(provider);
    if !options.force
        && options.wheel.is_none()
        && let Some(previous) = previous
        && previous.version == version
        && previous.package == package
        && previous.damaged(dir).is_empty()
    {
        return Ok(previous.clone());
    }
    let wheel = match &options.wheel {
        Some(wheel) => wheel.clone(),
        None => super::runtime::cached_wheel(dir, package, &version, options.index_url.as_deref())?,
    };
    let folder = plugins::folder(dir.root(), provider);
    let files = unpack(&wheel, &folder)?;
    if let Some(previous) = previous {
        for old in &previous.files {
            if !files.iter().any(|f| f.file == old.file) {
                let _ = std::fs::remove_file(folder.join(&old.file));
            }
        }
    }
    if !files.iter().any(|f| f.file == provider.library_name()) {
        return Err(RuntimeInstallError::BadWheel {
            wheel,
            detail: format!("it holds no {}", provider.library_name()),
        });
    }
    Ok(InstalledPlugin {
        provider: provider.config_name().to_owned(),
        package: package.to_owned(),
        version,
        wheel: wheel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        files,
    })
}

/// Whether a wheel entry is one the plugin needs at run time: everything in its package folder
/// but Python code and the package's read-me.
fn wanted(name: &str) -> Option<&str> {
    let (folder, file) = name.split_once('/')?;
    if folder.ends_with(".dist-info") || file.contains('/') || file.is_empty() {
        return None;
    }
    let skip = file.ends_with(".py") || file.ends_with(".pyc") || file == "README.md";
    (!skip).then_some(file)
}

/// Unpacks the plugin's files into `folder`, each written whole then renamed into place.
fn unpack(wheel: &Path, folder: &Path) -> Result<Vec<PluginFile>, RuntimeInstallError> {
    let bad = |detail: String| RuntimeInstallError::BadWheel {
        wheel: wheel.to_path_buf(),
        detail,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeInstallError::Io { path, source }
    };
    let file = std::fs::File::open(wheel).map_err(|e| bad(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(folder).map_err(io(folder))?;
    let mut files = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().map_err(|e| bad(e.to_string()))?.into_owned();
        let Some(file_name) = wanted(&name) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{file_name}: {e}")))?;
        let target = folder.join(file_name);
        write_atomically(&target, &bytes).map_err(io(&target))?;
        #[cfg(unix)]
        if file_name.contains(".so") {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
        }
        files.push(PluginFile {
            file: file_name.to_owned(),
            size: bytes.len() as u64,
            sha256: sha256_file(&target).map_err(io(&target))?,
        });
    }
    Ok(files)
}

/// Installs the plugins among `providers` (configuration names, e.g. `openvino:gpu`) for the
/// runtime recorded in `dir`, and records them with it, `providers` (the CPU appended) becoming
/// the list the daemon uses. Plugins recorded before and not named now are removed.
pub fn install_for(
    dir: &DataDir,
    providers: &[String],
    options: &PluginInstallOptions,
) -> Result<super::runtime::InstalledRuntime, RuntimeInstallError> {
    let runtime_dir = dir.runtime();
    let mut record =
        super::runtime::read_record(&runtime_dir).ok_or_else(|| RuntimeInstallError::Io {
            path: runtime_dir.join("runtime.toml"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no ONNX Runtime is installed yet",
            ),
        })?;
    let wanted: Vec<PluginProvider> = plugin_providers(providers);
    let mut installed = Vec::new();
    for provider in &wanted {
        let previous = record
            .plugins
            .iter()
            .find(|p| p.provider() == Some(*provider));
        installed.push(install(dir, *provider, previous, options)?);
    }
    for old in &record.plugins {
        if !installed.iter().any(|p| p.provider == old.provider) {
            remove(dir, old);
        }
    }
    record.plugins = installed;
    let mut list: Vec<String> = providers.to_vec();
    if !list.iter().any(|p| p == "cpu") {
        list.push("cpu".into());
    }
    record.providers = list;
    super::runtime::write_record(dir, &record)?;
    Ok(record)
}

/// The plugin providers named in a provider list, each once, in order.
pub fn plugin_providers(providers: &[String]) -> Vec<PluginProvider> {
    let mut out: Vec<PluginProvider> = Vec::new();
    for name in providers {
        if let Some(Ok(ep)) = plugins::PluginEp::parse(name)
            && !out.contains(&ep.provider)
        {
            out.push(ep.provider);
        }
    }
    out
}

/// Removes the files `plugin` recorded, and its folder when nothing else is left in it.
pub fn remove(dir: &DataDir, plugin: &InstalledPlugin) {
    let folder = plugin.folder(dir);
    for file in &plugin.files {
        let _ = std::fs::remove_file(folder.join(&file.file));
    }
    let _ = std::fs::remove_dir(&folder);
}

#[cfg(test)]
mod tests;
