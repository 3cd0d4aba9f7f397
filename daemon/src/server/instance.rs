//! One daemon per socket: a lock file held for the daemon's lifetime, so a
//! second `tessera serve` says so and exits, and a daemon that died without
//! cleaning up leaves nothing that blocks the next start.

use super::socket;
use crate::store::DataDir;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use tessera_protocol::paths::SocketAddress;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("a Tessera daemon is already running on {socket}{}", pid_note(.pid))]
    AlreadyRunning { socket: String, pid: Option<u32> },
    #[error("cannot use the lock file {}: {source}", .path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn pid_note(pid: &Option<u32>) -> String {
    pid.map(|p| format!(" (process {p})")).unwrap_or_default()
}

/// Held while the daemon runs; dropping it releases the lock.
pub struct Instance {
    _lock: File,
    lock_path: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

fn lock_path(address: &SocketAddress, data_dir: &DataDir) -> PathBuf {
    match address {
        SocketAddress::Path(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".lock");
            PathBuf::from(name)
        }
        // One lock per pipe, as a socket file has one beside it: another daemon may serve the
        // same data directory on a pipe of its own.
        SocketAddress::Pipe(name) => {
            let safe: String = name
                .chars()
                .map(|c| match c {
                    '<' | '>' | ':' | '"' | '/' | '\\' | '|' | '?' | '*' => '_',
                    c if c.is_control() => '_',
                    c => c,
                })
                .collect();
            data_dir.root().join(format!("{safe}.lock"))
        }
    }
}

/// Claims the socket for this process, removing a stale socket file left
/// by a daemon that died.
pub fn claim(address: &SocketAddress, data_dir: &DataDir) -> Result<Instance, InstanceError> {
    let path = lock_path(address, data_dir);
    let lock_error = |source| InstanceError::Lock {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        crate::store::create_private_dir(parent).map_err(lock_error)?;
    }
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(InstanceError::AlreadyRunning {
                socket: address.to_string(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(lock_error(e)),
    }
    // The lock alone proves no live daemon owns this socket, but a daemon of
    // an older build might not use it: ask the socket too.
    if socket::connect(address).is_ok() {
        return Err(InstanceError::AlreadyRunning {
            socket: address.to_string(),
            pid: None,
        });
    }
    file.set_len(0).map_err(lock_error)?;
    file.rewind().map_err(lock_error)?;
    write!(file, "{}", std::process::id()).map_err(lock_error)?;
    if let SocketAddress::Path(socket_path) = address
        && socket_path.exists()
    {
        tracing::info!("removing the stale socket {}", socket_path.display());
        std::fs::remove_file(socket_path).map_err(lock_error)?;
    }
    Ok(Instance {
        _lock: file,
        lock_path: path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pipe_has_a_lock_file_of_its_own() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path()).unwrap();
        let lock = |name: &str| lock_path(&SocketAddress::Pipe(name.into()), &dir);
        assert_eq!(lock("tessera-Ana"), temp.path().join("tessera-Ana.lock"));
        assert_eq!(lock("a:b*c"), temp.path().join("a_b_c.lock"));
        assert_ne!(lock("tessera-Ana"), lock("tessera-Ana-0badf00d"));
    }

    #[cfg(unix)]
    #[test]
    fn a_second_claim_is_refused_and_a_stale_socket_removed() {
        let temp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(temp.path()).unwrap();
        let address = SocketAddress::Path(temp.path().join("t.sock"));
        std::fs::write(temp.path().join("t.sock"), b"stale").unwrap();
        let first = claim(&address, &dir).unwrap();
        assert!(!temp.path().join("t.sock").exists());
        match claim(&address, &dir) {
            Err(InstanceError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("expected AlreadyRunning, got {:?}", other.err()),
        }
        drop(first);
        assert!(claim(&address, &dir).is_ok());
    }
}
