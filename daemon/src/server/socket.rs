//! The local socket itself: turning a [`SocketAddress`] into an
//! `interprocess` name, binding it for the daemon (owner-only: a Unix socket's
//! mode, a named pipe's DACL, see `pipe`) and connecting to it as a client.

use interprocess::local_socket::{
    GenericFilePath, GenericNamespaced, ListenerOptions, Name, Stream, ToFsName, ToNsName,
    prelude::*,
};
use std::io::{self, Read, Write};
use std::sync::Arc;
#[cfg(windows)]
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
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
/// Unix (set before `bind`, so there is no window where it is open), a DACL
/// that grants this user alone on Windows (given to every instance of the pipe
/// as it is created).
pub fn bind(address: &SocketAddress) -> io::Result<interprocess::local_socket::Listener> {
    let options = ListenerOptions::new()
        .name(name(address)?)
        .reclaim_name(true);
    #[cfg(unix)]
    let options = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        options.mode(0o600)
    };
    #[cfg(windows)]
    let options = {
        use interprocess::os::windows::local_socket::ListenerOptionsExt;
        options.security_descriptor(super::pipe::owner_only_descriptor()?)
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
    #[cfg(windows)]
    {
        super::pipe::peer_is_same_user(stream)
    }
}

/// A connected socket that one thread reads while another writes; it
/// closes when the last clone is dropped (at once, on Windows too: see
/// `pipe::close_without_flush`).
#[derive(Clone)]
pub struct SharedStream(Arc<Stream>);

impl Drop for SharedStream {
    fn drop(&mut self) {
        #[cfg(windows)]
        super::pipe::close_without_flush(&self.0);
    }
}

impl SharedStream {
    pub fn new(stream: Stream) -> SharedStream {
        SharedStream(Arc::new(stream))
    }

    /// Ends this connection's reads once `timeout` has passed, unless the returned
    /// deadline is met first. A read cut short fails, with `WouldBlock` or `TimedOut` on Unix
    /// (a receive timeout); on Windows, whose named pipes have no read timeout, a watchdog
    /// thread disconnects the pipe instead, and [`ReadDeadline::expired`] tells the two
    /// failures apart.
    pub fn read_deadline(&self, timeout: Duration) -> io::Result<ReadDeadline> {
        #[cfg(unix)]
        {
            self.0.set_recv_timeout(Some(timeout))?;
            Ok(ReadDeadline {
                stream: self.clone(),
            })
        }
        #[cfg(windows)]
        {
            let (met, wait) = crossbeam_channel::bounded::<()>(0);
            let expired = Arc::new(AtomicBool::new(false));
            let stream = self.clone();
            let flag = expired.clone();
            std::thread::Builder::new()
                .name("read-deadline".into())
                .spawn(move || {
                    if let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                        wait.recv_timeout(timeout)
                    {
                        flag.store(true, Ordering::SeqCst);
                        super::pipe::disconnect(&stream.0);
                    }
                })?;
            Ok(ReadDeadline { _met: met, expired })
        }
    }
}

/// A pending limit on a connection's reads (see [`SharedStream::read_deadline`]).
pub struct ReadDeadline {
    #[cfg(unix)]
    stream: SharedStream,
    /// Dropped when the deadline is met or abandoned, which wakes the watchdog.
    #[cfg(windows)]
    _met: crossbeam_channel::Sender<()>,
    #[cfg(windows)]
    expired: Arc<AtomicBool>,
}

impl ReadDeadline {
    /// Lifts the limit: reads wait as long as they need from now on.
    pub fn meet(self) -> io::Result<()> {
        #[cfg(unix)]
        {
            self.stream.0.set_recv_timeout(None)
        }
        #[cfg(windows)]
        {
            if self.expired() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the deadline had passed",
                ));
            }
            Ok(())
        }
    }

    /// Whether the deadline passed (Windows; on Unix the failed read says so itself).
    pub fn expired(&self) -> bool {
        #[cfg(unix)]
        {
            false
        }
        #[cfg(windows)]
        {
            self.expired.load(Ordering::SeqCst)
        }
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
