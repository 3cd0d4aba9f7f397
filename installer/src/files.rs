//! Writing a file the installer owns: parents created (and recorded when new), content written
//! to a temporary file in the same folder and renamed over the target (so an editor or a
//! service manager never sees half a file), mode set, SHA-256 recorded.

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use tessera_store::setup::record::{InstallRecord, Item};

/// Writes `bytes` to `path` and records it as `item`.
pub fn install(
    record: &mut InstallRecord,
    path: &Path,
    bytes: &[u8],
    executable: bool,
    item: Item,
) -> anyhow::Result<()> {
    let folder = path.parent().context("a file to install has a folder")?;
    record
        .create_dir_all(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(folder)
        .with_context(|| format!("cannot write into {}", folder.display()))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = executable;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    record.note_file(path, item, sha256(bytes));
    Ok(())
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes recorded files of `item` below `folder` that are not in `keep` (left over from an
/// older version of the same plug-in).
pub fn remove_stale(
    record: &mut InstallRecord,
    item: Item,
    folder: &Path,
    keep: &[std::path::PathBuf],
) {
    let stale: Vec<_> = record
        .files_of(item)
        .filter(|f| f.path.starts_with(folder) && !keep.contains(&f.path))
        .map(|f| f.path.clone())
        .collect();
    for path in stale {
        let _ = std::fs::remove_file(&path);
        record.files.retain(|f| f.path != path);
    }
}
