//! The model registry: what is in `models/`, and which file a model name in a
//! job means. Names are matched against the folder's entries, never joined
//! onto a path, so no name can reach outside the data directory.

use super::DataDir;
use super::hashes::HashCache;
use std::path::{Path, PathBuf};
use tessera_protocol::{ModelEntry, ModelKind};

/// A model file (or diffusers folder) found in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    pub kind: ModelKind,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub is_folder: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}", not_found_message(*.kind, .name, .folder, .available))]
    NotFound {
        kind: ModelKind,
        name: String,
        folder: PathBuf,
        available: Vec<String>,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn kind_word(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Checkpoint => "checkpoint",
        ModelKind::Vae => "VAE",
        ModelKind::ControlNet => "ControlNet",
        ModelKind::Upscaler => "upscaler",
        ModelKind::Lora => "LoRA",
        ModelKind::Embedding => "embedding",
    }
}

fn not_found_message(kind: ModelKind, name: &str, folder: &Path, available: &[String]) -> String {
    let what = kind_word(kind);
    let mut message = if name.is_empty() {
        format!("there is no {what} in {}", folder.display())
    } else {
        format!(
            "there is no {what} named \"{name}\" in {}",
            folder.display()
        )
    };
    if available.is_empty() {
        message.push_str(
            "; put a model file there (or run tessera-install to get the default models)",
        );
    } else {
        message.push_str(&format!("; available: {}", available.join(", ")));
    }
    message
}

/// File extensions that each kind of model comes in, most preferred first
/// (safetensors before pickles: they cannot carry code).
pub fn extensions(kind: ModelKind) -> &'static [&'static str] {
    match kind {
        ModelKind::Upscaler => &["safetensors", "pth", "pt"],
        ModelKind::Checkpoint => &["safetensors", "ckpt"],
        ModelKind::Vae => &["safetensors", "pt", "ckpt", "bin"],
        ModelKind::ControlNet => &["safetensors", "pth", "bin"],
        ModelKind::Lora => &["safetensors", "pt"],
        ModelKind::Embedding => &["safetensors", "pt", "bin"],
    }
}

/// Longer names cannot name a file (the usual file-name limit).
const MAX_NAME_BYTES: usize = 255;

/// Diffusers-style folders are models too (for the kinds that have them).
fn accepts_folders(kind: ModelKind) -> bool {
    matches!(
        kind,
        ModelKind::Checkpoint | ModelKind::Vae | ModelKind::ControlNet
    )
}

/// Every model of `kind`, sorted by name.
pub fn list(dir: &DataDir, kind: ModelKind) -> Result<Vec<ModelFile>, RegistryError> {
    let folder = dir.models(kind);
    let io_error = |source| RegistryError::Io {
        path: folder.clone(),
        source,
    };
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        // Follow symlinks: users link models shared with other tools.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if accepts_folders(kind) {
                found.push(ModelFile {
                    kind,
                    name: file_name.to_owned(),
                    size: folder_size(&path),
                    path,
                    is_folder: true,
                });
            }
            continue;
        }
        let Some((stem, ext)) = file_name.rsplit_once('.') else {
            continue;
        };
        if extensions(kind).contains(&ext.to_ascii_lowercase().as_str()) {
            found.push(ModelFile {
                kind,
                name: stem.to_owned(),
                size: meta.len(),
                path,
                is_folder: false,
            });
        }
    }
    found.sort_by(|a, b| (a.name.as_str(), preference(a)).cmp(&(b.name.as_str(), preference(b))));
    Ok(found)
}

/// Rank of a file's extension in [`extensions`] (folders first).
fn preference(model: &ModelFile) -> usize {
    if model.is_folder {
        return 0;
    }
    let ext = model
        .path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    1 + extensions(model.kind)
        .iter()
        .position(|e| *e == ext)
        .unwrap_or(usize::MAX - 1)
}

fn folder_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Finds the model a job names: the exact file name, else the name without
/// extension (preferring safetensors when several files share it), else the
/// same ignoring case.
pub fn resolve(dir: &DataDir, kind: ModelKind, name: &str) -> Result<ModelFile, RegistryError> {
    let models = list(dir, kind)?;
    if name.len() > MAX_NAME_BYTES {
        // No file has such a name; and the name is not echoed whole into messages and logs.
        let shown: String = name.chars().take(48).collect();
        return Err(RegistryError::NotFound {
            kind,
            name: format!("{shown}… ({} bytes)", name.len()),
            folder: dir.models(kind),
            available: available_names(&models),
        });
    }
    let file_name = |m: &ModelFile| {
        m.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let found = models
        .iter()
        .find(|m| file_name(m) == name)
        .or_else(|| models.iter().find(|m| m.name == name))
        .or_else(|| {
            models.iter().find(|m| {
                file_name(m).eq_ignore_ascii_case(name) || m.name.eq_ignore_ascii_case(name)
            })
        });
    match found {
        Some(model) => Ok(model.clone()),
        None => Err(RegistryError::NotFound {
            kind,
            name: name.to_owned(),
            folder: dir.models(kind),
            available: available_names(&models),
        }),
    }
}

/// The model to use when a job names none: `preferred` if present, else the
/// first one in name order.
pub fn resolve_default(
    dir: &DataDir,
    kind: ModelKind,
    preferred: &str,
) -> Result<ModelFile, RegistryError> {
    match resolve(dir, kind, preferred) {
        Ok(model) => Ok(model),
        Err(RegistryError::NotFound { .. }) => {
            let models = list(dir, kind)?;
            models
                .into_iter()
                .next()
                .ok_or_else(|| RegistryError::NotFound {
                    kind,
                    name: String::new(),
                    folder: dir.models(kind),
                    available: Vec::new(),
                })
        }
        Err(e) => Err(e),
    }
}

fn available_names(models: &[ModelFile]) -> Vec<String> {
    let mut names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    names.dedup();
    names
}

/// Every model of every kind, as the protocol lists them; with `hashes`, the
/// SHA-256 of each file (cached by size and modification time).
pub fn entries(dir: &DataDir, hashes: bool) -> Result<Vec<ModelEntry>, RegistryError> {
    let mut cache = hashes.then(|| HashCache::load(dir));
    let mut out = Vec::new();
    for kind in ModelKind::ALL {
        for model in list(dir, kind)? {
            let sha256 = match cache.as_mut() {
                Some(cache) if !model.is_folder => Some(cache.sha256(&model.path).map_err(
                    |source| RegistryError::Io {
                        path: model.path.clone(),
                        source,
                    },
                )?),
                _ => None,
            };
            let relative = model
                .path
                .strip_prefix(dir.models_root())
                .unwrap_or(&model.path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push(ModelEntry {
                kind,
                name: model.name,
                file: relative,
                size: model.size,
                sha256,
            });
        }
    }
    if let Some(cache) = cache {
        cache.save();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> (tempfile::TempDir, DataDir) {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path()).unwrap();
        (temp, dir)
    }

    #[test]
    fn names_resolve_with_or_without_extension_preferring_safetensors() {
        let (_t, dir) = data_dir();
        let up = dir.models(ModelKind::Upscaler);
        std::fs::write(up.join("4x-Ultra.pth"), b"p").unwrap();
        std::fs::write(up.join("4x-Ultra.safetensors"), b"s").unwrap();
        std::fs::write(up.join("notes.txt"), b"n").unwrap();
        assert!(
            resolve(&dir, ModelKind::Upscaler, "4x-Ultra")
                .unwrap()
                .path
                .ends_with("4x-Ultra.safetensors")
        );
        assert!(
            resolve(&dir, ModelKind::Upscaler, "4x-Ultra.pth")
                .unwrap()
                .path
                .ends_with("4x-Ultra.pth")
        );
        assert!(resolve(&dir, ModelKind::Upscaler, "4X-ULTRA").is_ok());
        let missing = resolve(&dir, ModelKind::Upscaler, "notes")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("no upscaler named \"notes\"") && missing.contains("4x-Ultra"),
            "{missing}"
        );
    }

    #[test]
    fn names_cannot_escape_the_models_folder() {
        let (_t, dir) = data_dir();
        std::fs::write(dir.root().join("secret.pth"), b"x").unwrap();
        for name in ["../secret", "../secret.pth", "/etc/passwd", "..\\secret"] {
            assert!(resolve(&dir, ModelKind::Upscaler, name).is_err(), "{name}");
        }
        let long = "../".repeat(1000);
        let message = resolve(&dir, ModelKind::Upscaler, &long)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("(3000 bytes)") && message.len() < 400,
            "{message}"
        );
    }

    #[test]
    fn the_default_falls_back_to_the_first_model() {
        let (_t, dir) = data_dir();
        assert!(
            resolve_default(&dir, ModelKind::Upscaler, "RealESRGAN_x4plus")
                .unwrap_err()
                .to_string()
                .contains("there is no upscaler in")
        );
        std::fs::write(dir.models(ModelKind::Upscaler).join("b.pth"), b"b").unwrap();
        std::fs::write(dir.models(ModelKind::Upscaler).join("a.pth"), b"a").unwrap();
        assert_eq!(
            resolve_default(&dir, ModelKind::Upscaler, "RealESRGAN_x4plus")
                .unwrap()
                .name,
            "a"
        );
    }

    #[test]
    fn entries_carry_sizes_and_hashes() {
        let (_t, dir) = data_dir();
        std::fs::write(
            dir.models(ModelKind::Lora).join("detail.safetensors"),
            b"abc",
        )
        .unwrap();
        std::fs::create_dir(dir.models(ModelKind::Checkpoint).join("sd15")).unwrap();
        std::fs::write(
            dir.models(ModelKind::Checkpoint).join("sd15").join("x.bin"),
            b"12345",
        )
        .unwrap();
        let all = entries(&dir, true).unwrap();
        let lora = all.iter().find(|e| e.kind == ModelKind::Lora).unwrap();
        assert_eq!(lora.file, "loras/detail.safetensors");
        assert_eq!(lora.size, 3);
        assert_eq!(
            lora.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let folder = all
            .iter()
            .find(|e| e.kind == ModelKind::Checkpoint)
            .unwrap();
        assert_eq!(
            (folder.name.as_str(), folder.size, folder.sha256.as_deref()),
            ("sd15", 5, None)
        );
    }
}
