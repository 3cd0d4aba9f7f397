//! Where the daemon keeps its files and where it listens, so that the daemon,
//! the CLI and the plug-ins (which mirror these rules in Python) always agree.
//!
//! - Data directory: `$TESSERA_DATA_DIR`, else the platform's data directory
//!   (`~/.local/share/tessera` on Linux, `~/Library/Application Support/Tessera`
//!   on macOS, `%APPDATA%\Tessera\data` on Windows).
//! - Socket: `$TESSERA_SOCKET`, else, when the data directory is the platform
//!   default, `$XDG_RUNTIME_DIR/tessera.sock` if that directory exists, and
//!   `<data dir>/tessera.sock` otherwise (so that a daemon started with its own
//!   `TESSERA_DATA_DIR` gets its own socket). On Windows the default is the
//!   named pipe `tessera-<user>` (plus a hash of the data directory when it
//!   is not the default).

use std::env;
use std::path::{Path, PathBuf};

pub const DATA_DIR_ENV: &str = "TESSERA_DATA_DIR";
pub const SOCKET_ENV: &str = "TESSERA_SOCKET";
pub const SOCKET_FILE_NAME: &str = "tessera.sock";

/// Longest Unix socket path the kernel accepts (`sun_path` less its NUL).
pub const MAX_UNIX_SOCKET_PATH: usize = 103;

/// The data directory and whether it was chosen explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    pub path: PathBuf,
    pub explicit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "cannot find a home directory for the data directory; set {DATA_DIR_ENV} to a folder Tessera may use"
    )]
    NoHome,
}

/// Resolves the data directory: `override_path` (a `--data-dir` flag), then
/// `$TESSERA_DATA_DIR`, then the platform default.
pub fn data_dir(override_path: Option<&Path>) -> Result<DataDir, PathError> {
    if let Some(path) = override_path {
        return Ok(DataDir {
            path: path.to_path_buf(),
            explicit: true,
        });
    }
    if let Some(path) = env::var_os(DATA_DIR_ENV).filter(|p| !p.is_empty()) {
        return Ok(DataDir {
            path: PathBuf::from(path),
            explicit: true,
        });
    }
    let dirs = directories::ProjectDirs::from("", "", "Tessera").ok_or(PathError::NoHome)?;
    Ok(DataDir {
        path: dirs.data_dir().to_path_buf(),
        explicit: false,
    })
}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    /// A Unix domain socket file.
    Path(PathBuf),
    /// A Windows named pipe name (without the `\\.\pipe\` prefix).
    Pipe(String),
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Path(p) => write!(f, "{}", p.display()),
            SocketAddress::Pipe(name) => write!(f, r"\\.\pipe\{name}"),
        }
    }
}

/// Resolves the socket: `override_value` (a `--socket` flag), then
/// `$TESSERA_SOCKET`, then the default for `data_dir` described above.
pub fn socket_address(override_value: Option<&str>, data_dir: &DataDir) -> SocketAddress {
    let chosen = override_value
        .map(str::to_owned)
        .or_else(|| env::var(SOCKET_ENV).ok().filter(|s| !s.is_empty()));
    if let Some(value) = chosen {
        return parse_socket(&value);
    }
    default_socket(data_dir)
}

fn parse_socket(value: &str) -> SocketAddress {
    if cfg!(windows) {
        let name = value.strip_prefix(r"\\.\pipe\").unwrap_or(value);
        SocketAddress::Pipe(name.to_owned())
    } else {
        SocketAddress::Path(PathBuf::from(value))
    }
}

fn default_socket(data_dir: &DataDir) -> SocketAddress {
    if cfg!(windows) {
        let user = env::var("USERNAME").unwrap_or_else(|_| "user".into());
        let name = if data_dir.explicit {
            format!(
                "tessera-{user}-{:08x}",
                fnv1a(data_dir.path.to_string_lossy().as_bytes())
            )
        } else {
            format!("tessera-{user}")
        };
        return SocketAddress::Pipe(name);
    }
    if !data_dir.explicit
        && let Some(runtime) = env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && runtime.is_dir()
    {
        return SocketAddress::Path(runtime.join(SOCKET_FILE_NAME));
    }
    SocketAddress::Path(data_dir.path.join(SOCKET_FILE_NAME))
}

/// 32-bit FNV-1a: a stable, dependency-free hash for pipe names.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_data_dir_gets_its_own_socket() {
        let dir = DataDir {
            path: PathBuf::from("/tmp/x"),
            explicit: true,
        };
        if cfg!(unix) {
            assert_eq!(
                default_socket(&dir),
                SocketAddress::Path(PathBuf::from("/tmp/x/tessera.sock"))
            );
        }
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }
}
