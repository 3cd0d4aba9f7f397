//! One client connection: the handshake, then a loop that reads requests and
//! answers them. Reading happens on this thread; everything sent goes through
//! the client's outbox and its writer thread, so a slow reader at the other
//! end never holds up the daemon.

use super::Shared;
use super::outbox::Outbox;
use super::socket::{ReadDeadlineExt, SharedStream};
use interprocess::local_socket::Stream;
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;
use tessera_protocol::{
    ErrorInfo, ErrorKind, FrameError, Handshake, Message, ModelList, PROTOCOL_VERSION, Rejected,
    read_frame, write_frame,
};

/// A handshake is tiny; refuse anything bigger before the client is known.
const MAX_HANDSHAKE_BYTES: u32 = 64 * 1024;

/// A connection that does not say who it is within this time is closed, so that stray or
/// stalled connections do not hold threads for ever. Once a client has shaken hands it may
/// stay idle as long as it likes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn serve(shared: Arc<Shared>, stream: Stream) {
    let (client, outbox) = shared.hub.add_client();
    let stream = SharedStream::new(stream);
    {
        let outbox = outbox.clone();
        let send = stream.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("client-{client}-writer"))
            .spawn(move || write_loop(&outbox, send));
        if let Err(e) = spawned {
            tracing::error!("cannot start a writer thread for client {client}: {e}");
            shared.hub.remove_client(client);
            return;
        }
    }
    let deadline = match stream.read_deadline(HANDSHAKE_TIMEOUT) {
        Ok(deadline) => Some(deadline),
        Err(e) => {
            tracing::warn!("client {client}: no handshake timeout ({e})");
            None
        }
    };
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let expired = || deadline.as_ref().is_some_and(|d| d.expired());
    let ended = match handshake(&mut reader, &outbox, client, &expired) {
        Ok(()) => match deadline.map_or(Ok(()), |d| d.meet()) {
            Ok(()) => request_loop(&shared, &mut reader, &outbox, client),
            Err(e) => End::Left(format!("cannot lift the handshake timeout: {e}")),
        },
        Err(end) => end,
    };
    match ended {
        End::Left(reason) => {
            tracing::info!("client {client} disconnected ({reason})");
            shared.hub.remove_client(client);
            super::worker::release_free_memory();
        }
        End::Refused(error) => {
            tracing::warn!("client {client}: {error}; closing the connection");
            outbox.send(Message::Error(error));
            outbox.close();
            shared.hub.remove_client_after_flush(client);
        }
        End::Shutdown => {}
    }
}

/// How long a refused connection is given to send its handshake before it gets its answer.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads what a refused client sends first (its handshake, at most [`REFUSAL_TIMEOUT`]), answers
/// with `error` and closes. Reading first matters: closing a socket with unread data resets it,
/// and the client would see a reset instead of the reason.
pub(super) fn refuse(stream: Stream, error: ErrorInfo) {
    let mut stream = SharedStream::new(stream);
    let deadline = stream.read_deadline(REFUSAL_TIMEOUT).ok();
    let _ = read_frame(&mut BufReader::new(stream.clone()), MAX_HANDSHAKE_BYTES);
    drop(deadline);
    if let Err(e) = write_frame(&mut stream, &Message::Error(error)) {
        tracing::debug!("a refused client left before its answer: {e}");
    }
}

/// How a connection ended.
enum End {
    /// The peer went away.
    Left(String),
    /// The peer broke the protocol; it gets this error, then the connection closes.
    Refused(ErrorInfo),
    /// The peer asked the daemon to shut down.
    Shutdown,
}

fn write_loop(outbox: &Outbox, mut send: SharedStream) {
    while let Some(message) = outbox.next() {
        if let Err(e) = write_frame(&mut send, &message) {
            tracing::debug!("write failed: {e}");
            outbox.kill();
            // The unsent results just dropped may be large.
            drop(message);
            super::worker::release_free_memory();
            return;
        }
        outbox.written(&message);
    }
}

fn frame_end(error: FrameError, max: u32) -> End {
    match error {
        FrameError::Closed => End::Left("closed".into()),
        FrameError::Truncated { .. } | FrameError::Io(_) => End::Left(error.to_string()),
        FrameError::TooLarge { len, .. } => End::Refused(ErrorInfo::new(
            ErrorKind::FrameTooLarge,
            format!(
                "a frame of {len} bytes exceeds this daemon's limit of {max} bytes \
                 (limits.max_frame_bytes in config.toml)"
            ),
        )),
        FrameError::Malformed(detail) => End::Refused(ErrorInfo::new(
            ErrorKind::Protocol,
            format!("malformed message: {detail}"),
        )),
    }
}

/// Reads the client's handshake and answers it; `expired` tells whether a failed read was
/// cut short by the handshake timeout.
fn handshake(
    reader: &mut BufReader<SharedStream>,
    outbox: &Outbox,
    client: u64,
    expired: &dyn Fn() -> bool,
) -> Result<(), End> {
    match read_frame(reader, MAX_HANDSHAKE_BYTES) {
        Ok(Message::Handshake(hello)) if hello.protocol_version == PROTOCOL_VERSION => {
            // Quoted: the agent is the client's text, and must not forge log lines.
            tracing::info!("client {client} connected: {:?}", hello.agent);
            outbox.send(Message::Handshake(Handshake {
                protocol_version: PROTOCOL_VERSION,
                agent: format!("tessera {}", env!("CARGO_PKG_VERSION")),
            }));
            Ok(())
        }
        Ok(Message::Handshake(hello)) => Err(End::Refused(ErrorInfo::new(
            ErrorKind::VersionMismatch,
            format!(
                "{} speaks protocol version {}, but this daemon (tessera {}) speaks version {PROTOCOL_VERSION}; \
                 update the plug-in and the daemon to the same release",
                hello.agent,
                hello.protocol_version,
                env!("CARGO_PKG_VERSION")
            ),
        ))),
        Ok(_) => Err(End::Refused(ErrorInfo::new(
            ErrorKind::Protocol,
            "the first message must be a Handshake",
        ))),
        Err(_) if expired() => Err(End::Left(format!(
            "no handshake within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        ))),
        Err(FrameError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(End::Left(format!(
                "no handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )))
        }
        Err(e) => Err(frame_end(e, MAX_HANDSHAKE_BYTES)),
    }
}

fn request_loop(
    shared: &Shared,
    reader: &mut BufReader<SharedStream>,
    outbox: &Outbox,
    client: u64,
) -> End {
    let max = shared.hub.limits().max_frame_bytes;
    loop {
        // A client that does not read its replies gets no more requests read.
        outbox.wait_for_room();
        let message = match read_frame(reader, max) {
            Ok(message) => message,
            Err(e) => return frame_end(e, max),
        };
        match message {
            Message::Submit(submit) => {
                let request = submit.request;
                let verdict = shared
                    .checker
                    .check(&submit.image, &submit.params)
                    .and_then(|()| {
                        shared
                            .hub
                            .submit(client, request, submit.image, submit.params)
                    });
                match verdict {
                    Ok(accepted) => {
                        tracing::info!(
                            "client {client}: job {} queued at position {}",
                            accepted.job,
                            accepted.position
                        );
                    }
                    Err(error) => {
                        tracing::info!("client {client}: submission {request} rejected: {error}");
                        outbox.send(Message::Rejected(Rejected { request, error }));
                    }
                }
            }
            Message::Cancel { job } => {
                if let Err(error) = shared.hub.cancel(job) {
                    outbox.send(Message::Error(error));
                }
            }
            Message::GetStatus => outbox.send(Message::Status(shared.hub.status())),
            Message::ListModels { hashes } => {
                let reply = match crate::store::registry::entries(&shared.data_dir, hashes) {
                    Ok(models) => Message::Models(ModelList { models }),
                    Err(e) => Message::Error(ErrorInfo::new(ErrorKind::Io, e.to_string())),
                };
                outbox.send(reply);
            }
            Message::Shutdown => {
                tracing::info!("client {client} asked the daemon to shut down");
                outbox.send(Message::ShuttingDown);
                shared.request_shutdown();
                return End::Shutdown;
            }
            other => {
                return End::Refused(ErrorInfo::new(
                    ErrorKind::Protocol,
                    format!("a client may not send {}", message_name(&other)),
                ));
            }
        }
    }
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Handshake(_) => "a second Handshake",
        Message::Accepted(_) => "Accepted",
        Message::Rejected(_) => "Rejected",
        Message::Progress(_) => "Progress",
        Message::Done(_) => "Done",
        Message::Failed(_) => "Failed",
        Message::Status(_) => "Status",
        Message::Models(_) => "Models",
        Message::ShuttingDown => "ShuttingDown",
        Message::Error(_) => "Error",
        Message::Submit(_)
        | Message::Cancel { .. }
        | Message::GetStatus
        | Message::ListModels { .. }
        | Message::Shutdown => "this message here",
    }
}
