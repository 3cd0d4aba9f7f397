//! The client's side of the local socket: turning a [`SocketAddress`] into an `interprocess`
//! name, connecting to it, and a connection that one thread reads while another writes. The
//! daemon's side (binding owner-only, checking peers, read deadlines) is the daemon's
//! `server/socket.rs`, which builds on this.

use interprocess::local_socket::{
    GenericFilePath, GenericNamespaced, Name, Stream, ToFsName, ToNsName, prelude::*,
};
use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::paths::{MAX_UNIX_SOCKET_PATH, SocketAddress};

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

/// A connected socket that one thread reads while another writes; it closes when the last
/// clone is dropped (at once, on Windows too: see [`close_without_flush`]).
#[derive(Clone)]
pub struct SharedStream(Arc<Stream>);

impl Drop for SharedStream {
    fn drop(&mut self) {
        #[cfg(windows)]
        close_without_flush(&self.0);
    }
}

impl SharedStream {
    pub fn new(stream: Stream) -> SharedStream {
        SharedStream(Arc::new(stream))
    }

    /// The connection itself, for what the OS offers beyond reading and writing (timeouts,
    /// the peer's credentials).
    pub fn stream(&self) -> &Stream {
        &self.0
    }
}

/// Lets the pipe close as soon as the last owner of `stream` drops it. Left to itself,
/// `interprocess` hands a pipe that was written to a background thread that first waits
/// (`FlushFileBuffers`) until the other end has read everything; a peer that is itself blocked
/// writing to us (an oversized frame the daemon refused, say) never does, so both would wait
/// for ever, and the connections closed after it would queue behind it. What was written
/// stays readable by the other end after the close.
#[cfg(windows)]
fn close_without_flush(stream: &Stream) {
    let Stream::NamedPipe(pipe) = stream;
    pipe.inner().assume_flushed();
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
