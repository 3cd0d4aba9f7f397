//! Whether a disk has room for what is about to be written on it, checked before a large
//! download or unpack starts (a 4 GB write that fails at 90 % helps nobody). Shared by the model
//! step of `tessera-install` and the runtime install (ONNX Runtime, CUDA and cuDNN libraries).

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

/// A byte count for people, in the decimal units model hosts show: `4.17 GB`, `335 MB`, `13.3 kB`.
pub fn size_text(bytes: u64) -> String {
    for (unit, name) in [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")] {
        let value = bytes as f64 / unit;
        if value >= 1.0 {
            return match value {
                v if v >= 99.95 => format!("{v:.0} {name}"),
                v if v >= 9.995 => format!("{v:.1} {name}"),
                v => format!("{v:.2} {name}"),
            };
        }
    }
    format!("{bytes} bytes")
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

    #[test]
    fn sizes_read_in_three_figures() {
        let cases = [
            (0, "0 bytes"),
            (999, "999 bytes"),
            (13_339, "13.3 kB"),
            (9_547_795, "9.55 MB"),
            (67_040_989, "67.0 MB"),
            (334_641_190, "335 MB"),
            (2_132_653_060, "2.13 GB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(size_text(bytes), text, "{bytes}");
        }
    }
}
