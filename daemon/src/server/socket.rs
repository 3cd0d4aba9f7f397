//! The local socket itself: turning a [`SocketAddress`] into an
//! `interprocess` name, binding it for the daemon (owner-only) and
//! connecting to it as a client.

use interprocess::local_socket::{
    GenericFilePath, GenericNamespaced, ListenerOptions, Name, Stream, ToFsName, ToNsName,
    prelude::*,
};
use std::io::{self, Read, Write};
use std::sync::Arc;
use tessera_protocol::paths::{MAX_UNIX_SOCKET_PATH, SocketAddress};

pub fn name(address: &SocketAddress) -> io::Result<Name<'static>> {
    match address {
        SocketAddress::Path(path) => {
            let len = path.as_os_str().len();
            if len > MAX_UNIX_SOCKET_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the socket path {} is {len} bytes long, more than the {MAX_UNIX_SOCKET_PATH} the OS allows; \
                         set TESSERA_SOCKET to a shorter path",
                        path.display()
                    ),
                ));
            }
            path.clone().to_fs_name::<GenericFilePath>()
        }
        SocketAddress::Pipe(pipe) => pipe.clone().to_ns_name::<GenericNamespaced>(),
    }
}

/// Connects to a daemon.
pub fn connect(address: &SocketAddress) -> io::Result<Stream> {
    Stream::connect(name(address)?)
}

/// Binds the daemon's listener, reachable only by this user: mode 0600 on
/// Unix (set before `bind`, so there is no window where it is open).
pub fn bind(address: &SocketAddress) -> io::Result<interprocess::local_socket::Listener> {
    let options = ListenerOptions::new()
        .name(name(address)?)
        .reclaim_name(true);
    #[cfg(unix)]
    let options = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        options.mode(0o600)
    };
    match options.create_sync() {
        #[cfg(unix)]
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            // Some Unixes cannot set the mode before bind; the socket then sits in
            // an owner-only folder and gets its mode right after.
            let listener = ListenerOptions::new()
                .name(name(address)?)
                .reclaim_name(true)
                .create_sync()?;
            if let SocketAddress::Path(path) = address {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(listener)
        }
        other => other,
    }
}

/// Whether a peer runs as this same user (where the OS can tell).
pub fn peer_is_same_user(stream: &Stream) -> bool {
    #[cfg(unix)]
    {
        match stream.peer_creds() {
            // SAFETY: geteuid has no preconditions and cannot fail.
            Ok(creds) => creds
                .euid()
                .is_none_or(|uid| uid == unsafe { libc::geteuid() }),
            Err(_) => true,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = stream;
        true
    }
}

/// A connected socket that one thread reads while another writes; it
/// closes when the last clone is dropped.
#[derive(Clone)]
pub struct SharedStream(Arc<Stream>);

impl SharedStream {
    pub fn new(stream: Stream) -> SharedStream {
        SharedStream(Arc::new(stream))
    }

    /// Bounds how long one read waits for data (`None`: forever).
    pub fn set_recv_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.0.set_recv_timeout(timeout)
    }
}

impl Read for SharedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}
