//! Whether a disk has room for what is about to be written on it, checked before a large
//! download or unpack starts (a 4 GB write that fails at 90 % helps nobody). Shared by the model
//! step of `tessera-install` and the runtime install (ONNX Runtime, CUDA and cuDNN libraries).

use crate::setup::manifest::size_text;
use std::path::{Path, PathBuf};

/// Room kept free beyond the files themselves (records, logs, compiled graphs).
pub const MARGIN: u64 = 256 << 20;

/// A disk without room for `needed` bytes (plus [`MARGIN`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub needed: u64,
    pub free: u64,
    /// The folder whose disk was checked.
    pub folder: PathBuf,
}

impl Shortfall {
    /// How much has to be freed for the write to fit with the margin.
    pub fn to_free(&self) -> u64 {
        self.needed.saturating_add(MARGIN).saturating_sub(self.free)
    }
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} needed and {} free on the disk of {}; free {} there",
            size_text(self.needed),
            size_text(self.free),
            self.folder.display(),
            size_text(self.to_free())
        )
    }
}

/// `Err` when the disk holding `folder` has less than `needed` + [`MARGIN`] bytes free. A disk
/// whose free space cannot be read is not checked (the write itself will then say what failed).
pub fn ensure_room(folder: &Path, needed: u64) -> Result<(), Shortfall> {
    if needed == 0 {
        return Ok(());
    }
    let Ok(free) = fs4::available_space(folder) else {
        return Ok(());
    };
    if free < needed.saturating_add(MARGIN) {
        return Err(Shortfall {
            needed,
            free,
            folder: folder.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_any_disk_is_refused_and_nothing_always_fits() {
        let temp = tempfile::tempdir().unwrap();
        assert_eq!(ensure_room(temp.path(), 0), Ok(()));
        assert_eq!(ensure_room(temp.path(), 1), Ok(()));
        let short = ensure_room(temp.path(), 1 << 60).unwrap_err();
        assert_eq!(short.needed, 1 << 60);
        assert!(short.to_free() > (1 << 60) - short.free);
        let text = short.to_string();
        assert!(text.starts_with("1152921505 GB needed and "), "{text}");
        assert!(text.contains(&temp.path().display().to_string()), "{text}");
    }
}
