//! What `tessera-install` added to this machine, kept in `<data dir>/install.toml`, so that
//! `--uninstall` removes exactly that (and nothing else) and `tessera doctor` can check it.
//!
//! Folders are recorded only when the installer created them, files with the SHA-256 they had,
//! and settings written into other programs' files (`kritarc`) with the value they had before.

use crate::{DataDir, write_atomically};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's file name inside the data directory.
pub const FILE_NAME: &str = "install.toml";

/// What a recorded file is, for reports and for `--remove-models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Item {
    /// The `tessera` program.
    Program,
    /// ONNX Runtime libraries and their record.
    Runtime,
    /// A wheel kept in the cache.
    Wheel,
    /// A file of an editor plug-in.
    Plugin,
    /// The login service (unit, agent or startup entry).
    Service,
    /// A model fetched or imported by the installer.
    Model,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: PathBuf,
    pub item: Item,
    pub sha256: String,
}

/// A `key=value` line the installer wrote into an INI-style file of another program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IniEntry {
    pub path: PathBuf,
    pub group: String,
    pub key: String,
    /// The value before the installer touched it; none when the key was absent.
    pub previous: Option<String>,
    /// The file did not exist before.
    pub created_file: bool,
    /// The `[group]` did not exist before.
    #[serde(default)]
    pub created_group: bool,
}

/// How `tessera serve` was registered to start at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// `systemd`, `launchd` or `startup`.
    pub kind: String,
    /// The unit, agent or startup file.
    pub path: PathBuf,
    /// Whether the service manager was told (`systemctl --user enable`, `launchctl load`).
    pub activated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// Folders the installer created, parents before children.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub ini: Vec<IniEntry>,
    #[serde(default)]
    pub service: Option<ServiceEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read the install record {}: {message}", .path.display())]
    Read { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InstallRecord {
    pub fn path(dir: &DataDir) -> PathBuf {
        dir.root().join(FILE_NAME)
    }

    /// The record, or an empty one when nothing was installed yet.
    pub fn load(dir: &DataDir) -> Result<InstallRecord, RecordError> {
        let path = Self::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| RecordError::Read {
                path,
                message: e.message().to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstallRecord::default()),
            Err(e) => Err(RecordError::Read {
                path,
                message: e.to_string(),
            }),
        }
    }

    pub fn save(&self, dir: &DataDir) -> Result<(), RecordError> {
        let path = Self::path(dir);
        let text = toml::to_string(self).expect("the record serialises");
        write_atomically(&path, text.as_bytes())
            .map_err(|source| RecordError::Write { path, source })
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
            && self.files.is_empty()
            && self.ini.is_empty()
            && self.service.is_none()
    }

    /// Creates `path` and its missing parents, recording each folder it made.
    pub fn create_dir_all(&mut self, path: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut cursor = Some(path);
        while let Some(p) = cursor {
            if p.as_os_str().is_empty() || p.exists() {
                break;
            }
            missing.push(p.to_path_buf());
            cursor = p.parent();
        }
        for folder in missing.into_iter().rev() {
            std::fs::create_dir(&folder)?;
            self.note_dir(&folder);
        }
        Ok(())
    }

    /// Records a folder the installer created (once).
    pub fn note_dir(&mut self, path: &Path) {
        if !self.dirs.iter().any(|d| d == path) {
            self.dirs.push(path.to_path_buf());
        }
    }

    /// Records a file the installer wrote, replacing an older entry for the same path.
    pub fn note_file(&mut self, path: &Path, item: Item, sha256: String) {
        let entry = FileEntry {
            path: path.to_path_buf(),
            item,
            sha256,
        };
        match self.files.iter_mut().find(|f| f.path == path) {
            Some(known) => *known = entry,
            None => self.files.push(entry),
        }
    }

    pub fn file(&self, path: &Path) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Records an INI key; the first record wins, so a re-install keeps the user's old value.
    pub fn note_ini(&mut self, entry: IniEntry) {
        let known = self
            .ini
            .iter()
            .any(|e| e.path == entry.path && e.group == entry.group && e.key == entry.key);
        if !known {
            self.ini.push(entry);
        }
    }

    pub fn files_of(&self, item: Item) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(move |f| f.item == item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_keep_first_ini_values() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path().join("data")).unwrap();
        assert!(InstallRecord::load(&dir).unwrap().is_empty());
        let mut record = InstallRecord::default();
        let deep = temp.path().join("a/b/c");
        record.create_dir_all(&deep).unwrap();
        assert_eq!(
            record.dirs,
            [
                temp.path().join("a"),
                temp.path().join("a/b"),
                temp.path().join("a/b/c")
            ]
        );
        record.create_dir_all(&deep).unwrap();
        assert_eq!(record.dirs.len(), 3, "existing folders are not recorded");
        record.note_file(&deep.join("f"), Item::Plugin, "1".into());
        record.note_file(&deep.join("f"), Item::Plugin, "2".into());
        assert_eq!(record.files.len(), 1);
        assert_eq!(record.file(&deep.join("f")).unwrap().sha256, "2");
        let ini = |previous: Option<&str>| IniEntry {
            path: "/k".into(),
            group: "python".into(),
            key: "enable_x".into(),
            previous: previous.map(String::from),
            created_file: false,
            created_group: false,
        };
        record.note_ini(ini(Some("false")));
        record.note_ini(ini(Some("true")));
        assert_eq!(record.ini, [ini(Some("false"))]);
        record.service = Some(ServiceEntry {
            kind: "systemd".into(),
            path: "/u".into(),
            activated: true,
        });
        record.save(&dir).unwrap();
        assert_eq!(InstallRecord::load(&dir).unwrap(), record);
        std::fs::write(InstallRecord::path(&dir), "files = 3").unwrap();
        assert!(InstallRecord::load(&dir).is_err());
    }
}
