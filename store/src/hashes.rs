//! SHA-256 of model files, remembered in `cache/hashes.json` by path, size
//! and modification time, so that listing gigabytes of models is slow once.

use super::{DataDir, write_atomically};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    size: u64,
    modified_ns: u128,
    sha256: String,
}

pub(crate) struct HashCache {
    file: PathBuf,
    records: BTreeMap<String, Record>,
    changed: bool,
}

impl HashCache {
    pub(crate) fn load(dir: &DataDir) -> HashCache {
        let file = dir.cache().join("hashes.json");
        // A missing or damaged cache only costs re-hashing.
        let records = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        HashCache {
            file,
            records,
            changed: false,
        }
    }

    pub(crate) fn sha256(&mut self, path: &Path) -> io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let modified_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = path.to_string_lossy().into_owned();
        if let Some(record) = self.records.get(&key)
            && record.size == meta.len()
            && record.modified_ns == modified_ns
        {
            return Ok(record.sha256.clone());
        }
        let sha256 = sha256_file(path)?;
        self.records.insert(
            key,
            Record {
                size: meta.len(),
                modified_ns,
                sha256: sha256.clone(),
            },
        );
        self.changed = true;
        Ok(sha256)
    }

    pub(crate) fn save(self) {
        if !self.changed {
            return;
        }
        let bytes = serde_json::to_vec_pretty(&self.records).expect("plain records serialise");
        if let Err(e) = write_atomically(&self.file, &bytes) {
            tracing::warn!("cannot save the hash cache {}: {e}", self.file.display());
        }
    }
}

/// Lower-case hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
