//! Telling whether a file changed without reading it: size, modification time, and on Unix
//! the inode and its change time. The modification time alone is not enough: copies that keep
//! times (`cp -p`, `rsync -t`, unpacking an archive) can replace a model by another of the
//! same size with the old time. The change time cannot be set by users and moves with every
//! write, and a file replaced by a rename has a new inode.

use std::path::Path;
use std::time::UNIX_EPOCH;

/// One version of a file, as far as its metadata tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    len: u64,
    modified_ns: u128,
    changed_ns: i128,
    inode: u64,
    device: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        #[cfg(unix)]
        let (changed_ns, inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (
                i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
                meta.ino(),
                meta.dev(),
            )
        };
        #[cfg(not(unix))]
        let (changed_ns, inode, device) = (0, 0, 0);
        FileStamp {
            len: meta.len(),
            modified_ns,
            changed_ns,
            inode,
            device,
        }
    }

    /// The stamp of the file at `path` (following symlinks).
    pub fn read(path: &Path) -> std::io::Result<FileStamp> {
        std::fs::metadata(path).map(|meta| FileStamp::of(&meta))
    }

    pub fn size(&self) -> u64 {
        self.len
    }

    /// The stamp as bytes, for hashing into cache keys.
    pub fn to_bytes(&self) -> Vec<u8> {
        [
            &self.len.to_le_bytes()[..],
            &self.modified_ns.to_le_bytes(),
            &self.changed_ns.to_le_bytes(),
            &self.inode.to_le_bytes(),
            &self.device.to_le_bytes(),
        ]
        .concat()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_with_the_old_size_and_time_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"first").unwrap();
        let before = FileStamp::read(&path).unwrap();
        assert_eq!(
            before,
            FileStamp::read(&path).unwrap(),
            "stable when untouched"
        );
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Let the clock move past the file system's time granularity.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"other").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        let after = FileStamp::read(&path).unwrap();
        assert_eq!(after.size(), before.size());
        assert_ne!(before, after);
    }
}
