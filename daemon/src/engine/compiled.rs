//! The compiled-model cache: providers that compile a graph for their device (OpenVINO,
//! TensorRT-RTX, CoreML) keep what they compiled in the data directory's `cache/compiled/`, so
//! that only the first start of a model pays for it.
//!
//! One folder per graph, device and provider version:
//! `cache/compiled/<provider>-<version>/<device>/<key>/`, `key` hashing the graph, its weight
//! files (path, size, times: a converted weight file written again is another graph) and the
//! ONNX Runtime version. The provider writes its blobs there (OpenVINO's `cache_dir`,
//! CoreML's `ModelCacheDirectory`); an `entry.toml` beside them names the model and its weight
//! files. Stale entries go at the engine's start ([`remove_stale`]): those whose weight files
//! are gone or changed (their graph can never be built again), those of another version of a
//! provider that is installed now, and the least recently used beyond [`LIMIT`] bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::CompiledModel;
use crate::store::FileStamp;

/// The most the cache keeps; beyond it the least recently used entries go. An fp16 SD 1.5 UNet
/// compiles to about its weights' size (1.7 GB), so this holds a full fp16 model set twice.
pub const LIMIT: u64 = 10 << 30;

const ENTRY: &str = "entry.toml";

/// What an entry records about the graph it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub model: String,
    pub provider: String,
    pub provider_version: String,
    pub device: String,
    /// The weight files, with the stamp (hex) they had when the entry was made.
    pub weights: BTreeMap<String, String>,
    /// Seconds since 1970 of the last session built from it.
    pub used: u64,
}

/// How a session build used its cache folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// Blobs were there and the build wrote nothing new: they were loaded.
    Hit,
    /// The folder was empty and the build wrote blobs into it.
    Written,
    /// Blobs were there, and the build wrote others (the provider refused the old ones).
    Rewritten,
    /// Nothing was written (the provider compiled nothing, or keeps nothing).
    Unused,
}

impl CacheUse {
    pub fn describe(self) -> &'static str {
        match self {
            CacheUse::Hit => "compiled cache hit",
            CacheUse::Written => "compiled and cached",
            CacheUse::Rewritten => "compiled again (the cached blobs were refused)",
            CacheUse::Unused => "nothing cached",
        }
    }
}

/// One graph's folder, taken before its session is built.
#[derive(Debug)]
pub struct CacheEntry {
    pub dir: PathBuf,
    before: BTreeMap<String, u64>,
}

impl CacheEntry {
    /// How the build used the folder, judged from the files it holds now.
    pub fn outcome(&self) -> CacheUse {
        let after = blobs(&self.dir);
        match (
            self.before.is_empty(),
            after.is_empty(),
            after == self.before,
        ) {
            (_, true, _) => CacheUse::Unused,
            (false, false, true) => CacheUse::Hit,
            (true, false, _) => CacheUse::Written,
            (false, false, false) => CacheUse::Rewritten,
        }
    }
}

/// The provider's files in a folder (all but the entry record), with their sizes.
fn blobs(dir: &Path) -> BTreeMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let mut stack: Vec<(PathBuf, String)> = entries
        .flatten()
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .collect();
    while let Some((path, name)) = stack.pop() {
        if name == ENTRY {
            continue;
        }
        if path.is_dir() {
            if let Ok(inner) = std::fs::read_dir(&path) {
                stack.extend(inner.flatten().map(|e| {
                    (
                        e.path(),
                        format!("{name}/{}", e.file_name().to_string_lossy()),
                    )
                }));
            }
        } else if let Ok(meta) = path.metadata() {
            out.insert(name, meta.len());
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A name safe as one path component.
fn component(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The cache folder of the data directory.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("cache").join("compiled")
}

/// The folder for `model` compiled by `provider` (`openvino`) `provider_version` for `device`
/// (`cpu`), created, with its entry record written (or its use noted).
pub fn entry(
    root: &Path,
    model: &CompiledModel,
    runtime_version: &str,
    provider: &str,
    provider_version: &str,
    device: &str,
) -> std::io::Result<CacheEntry> {
    let mut h = Sha256::new();
    h.update(super::cache::identity(model));
    h.update(runtime_version.as_bytes());
    let key = hex(&h.finalize()[..12]);
    let dir = root
        .join(component(&format!("{provider}-{provider_version}")))
        .join(component(device))
        .join(key);
    std::fs::create_dir_all(&dir)?;
    let weights = model
        .weight_files
        .iter()
        .map(|f| {
            let stamp = FileStamp::read(f).map(|s| hex(&s.to_bytes()));
            (f.to_string_lossy().into_owned(), stamp.unwrap_or_default())
        })
        .collect();
    let record = EntryRecord {
        model: model.name.clone(),
        provider: provider.to_owned(),
        provider_version: provider_version.to_owned(),
        device: device.to_owned(),
        weights,
        used: now(),
    };
    let text = toml::to_string(&record).map_err(std::io::Error::other)?;
    crate::store::write_atomically(&dir.join(ENTRY), text.as_bytes())?;
    Ok(CacheEntry {
        before: blobs(&dir),
        dir,
    })
}

/// Why an entry is stale, if it is.
fn staleness(record: &EntryRecord, current: &BTreeMap<String, String>) -> Option<String> {
    if let Some(version) = current.get(&record.provider)
        && *version != record.provider_version
    {
        return Some(format!(
            "compiled by {} {}, {version} is installed",
            record.provider, record.provider_version
        ));
    }
    for (file, stamp) in &record.weights {
        let now = FileStamp::read(Path::new(file)).map(|s| hex(&s.to_bytes()));
        match now {
            Err(_) => return Some(format!("its weights {file} are gone")),
            Ok(now) if now != *stamp => return Some(format!("its weights {file} changed")),
            Ok(_) => {}
        }
    }
    None
}

/// Every entry folder under `root` (three levels down) with its record, if readable.
fn entries(root: &Path) -> Vec<(PathBuf, Option<EntryRecord>)> {
    let mut out = Vec::new();
    let list = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for provider in list(root) {
        for device in list(&provider) {
            for entry in list(&device) {
                let record = std::fs::read_to_string(entry.join(ENTRY))
                    .ok()
                    .and_then(|t| toml::from_str(&t).ok());
                out.push((entry, record));
            }
        }
    }
    out
}

fn size_of(dir: &Path) -> u64 {
    blobs(dir).values().sum()
}

/// Removes the stale entries under `root` (see the module docs); `current` maps each provider
/// installed now to its version. Returns what was removed, with the reason, for the log.
pub fn remove_stale(
    root: &Path,
    current: &BTreeMap<String, String>,
    limit: u64,
) -> Vec<(PathBuf, String)> {
    let mut removed = Vec::new();
    // (folder, bytes, last use) of the entries that stay.
    let mut kept: Vec<(PathBuf, u64, u64)> = Vec::new();
    for (dir, record) in entries(root) {
        let reason = match &record {
            None => Some("it has no readable entry record".to_owned()),
            Some(record) => staleness(record, current),
        };
        match (reason, record) {
            (Some(reason), _) => {
                if std::fs::remove_dir_all(&dir).is_ok() {
                    removed.push((dir, reason));
                }
            }
            (None, record) => {
                let used = record.map_or(0, |r| r.used);
                kept.push((dir.clone(), size_of(&dir), used));
            }
        }
    }
    // Least recently used first, until what is left fits.
    let mut total: u64 = kept.iter().map(|(_, size, _)| size).sum();
    kept.sort_by_key(|(_, _, used)| *used);
    for (dir, size, _) in kept {
        if total <= limit {
            break;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            total = total.saturating_sub(size);
            removed.push((dir, "the compiled cache is over its limit".into()));
        }
    }
    // Folders of devices, then of providers, left empty.
    for depth in [2usize, 1] {
        prune_empty(root, depth);
    }
    removed
}

/// Removes empty folders `depth` levels below `root`.
fn prune_empty(root: &Path, depth: usize) {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..depth {
        level = level
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(d)
                    .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .filter(|p| p.is_dir())
            .collect();
    }
    for dir in level {
        // Fails (and keeps it) unless it is empty.
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests;
