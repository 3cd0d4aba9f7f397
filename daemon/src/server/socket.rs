//! The daemon's side of the local socket: binding it (owner-only: a Unix socket's mode, a
//! named pipe's DACL, see `pipe`), checking who connects, and cutting a silent connection's
//! reads short. Naming and connecting, and the connection shared by a reader and a writer, are
//! the protocol crate's (`tessera_protocol::socket`), re-exported here.

#[cfg(unix)]
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{ListenerOptions, Stream};
use std::io;
#[cfg(windows)]
use std::sync::Arc;
#[cfg(windows)]
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tessera_protocol::paths::SocketAddress;
pub use tessera_protocol::socket::{SharedStream, connect, name};

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

/// A limit on how long a connection's reads may wait.
pub trait ReadDeadlineExt {
    /// Ends this connection's reads once `timeout` has passed, unless the returned
    /// deadline is met first. A read cut short fails, with `WouldBlock` or `TimedOut` on Unix
    /// (a receive timeout); on Windows, whose named pipes have no read timeout, a watchdog
    /// thread disconnects the pipe instead, and [`ReadDeadline::expired`] tells the two
    /// failures apart.
    fn read_deadline(&self, timeout: Duration) -> io::Result<ReadDeadline>;
}

impl ReadDeadlineExt for SharedStream {
    fn read_deadline(&self, timeout: Duration) -> io::Result<ReadDeadline> {
        #[cfg(unix)]
        {
            self.stream().set_recv_timeout(Some(timeout))?;
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
                        super::pipe::disconnect(stream.stream());
                    }
                })?;
            Ok(ReadDeadline { _met: met, expired })
        }
    }
}

/// A pending limit on a connection's reads (see [`ReadDeadlineExt::read_deadline`]).
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
            self.stream.stream().set_recv_timeout(None)
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
