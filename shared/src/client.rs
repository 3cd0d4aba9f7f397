//! A blocking client of the daemon, used by the CLI (`tessera::cli::client`), the installer
//! (to stop the daemon) and the end-to-end tests: connect and handshake, ask for status or
//! models, submit a job and follow its events, cancel from another thread.

use crate::paths::SocketAddress;
use crate::socket::{self, SharedStream};
use crate::{
    Accepted, Done, ErrorInfo, FrameError, Handshake, Image, JobId, JobParams, Message, ModelEntry,
    PROTOCOL_VERSION, Progress, Status, Submit, read_frame, write_frame,
};
use std::collections::VecDeque;
use std::io::BufReader;
use std::sync::{Arc, Mutex};

/// Results may be large: accept frames up to the protocol's hard limit.
const MAX_REPLY_BYTES: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no Tessera daemon is running on {address} ({source})")]
    NotRunning {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon closed the connection")]
    Closed,
    #[error("the daemon shut down")]
    ShutDown,
    /// The connection broke while a job was pending: the daemon crashed or was killed, and
    /// the job went with it.
    #[error(
        "the daemon went away before job {job} finished (it crashed or was stopped); \
         the job is lost: submit it again once the daemon runs"
    )]
    JobLost { job: JobId },
    #[error(transparent)]
    Daemon(#[from] ErrorInfo),
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply from the daemon: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Whether the connection itself broke (closed, cut inside a frame, reset).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Closed
                | ClientError::Io(_)
                | ClientError::Frame(FrameError::Truncated { .. } | FrameError::Io(_))
        )
    }
}

/// Sends cancels for a client's jobs from any thread.
#[derive(Clone)]
pub struct Canceller {
    writer: Arc<Mutex<SharedStream>>,
}

impl Canceller {
    pub fn cancel(&self, job: JobId) -> std::io::Result<()> {
        write_frame(
            &mut *self.writer.lock().expect("writer lock"),
            &Message::Cancel { job },
        )
    }
}

pub struct Client {
    reader: BufReader<SharedStream>,
    writer: Arc<Mutex<SharedStream>>,
    next_request: u64,
    daemon_agent: String,
    /// Job events that arrived while a reply was awaited, in arrival order.
    held: VecDeque<Message>,
}

impl Client {
    /// Connects and exchanges handshakes; `agent` names this client in the daemon's log.
    pub fn connect(address: &SocketAddress, agent: &str) -> Result<Client, ClientError> {
        let stream = socket::connect(address).map_err(|source| ClientError::NotRunning {
            address: address.to_string(),
            source,
        })?;
        let stream = SharedStream::new(stream);
        let mut client = Client {
            reader: BufReader::new(stream.clone()),
            writer: Arc::new(Mutex::new(stream)),
            next_request: 1,
            daemon_agent: String::new(),
            held: VecDeque::new(),
        };
        client.send(&Message::Handshake(Handshake {
            protocol_version: PROTOCOL_VERSION,
            agent: agent.to_owned(),
        }))?;
        match client.read()? {
            Message::Handshake(hello) => client.daemon_agent = hello.agent,
            other => return Err(unexpected(&other)),
        }
        Ok(client)
    }

    /// The daemon's own description, e.g. "tessera 0.1.0".
    pub fn daemon_agent(&self) -> &str {
        &self.daemon_agent
    }

    pub fn canceller(&self) -> Canceller {
        Canceller {
            writer: self.writer.clone(),
        }
    }

    pub fn send(&self, message: &Message) -> Result<(), ClientError> {
        write_frame(&mut *self.writer.lock().expect("writer lock"), message)?;
        Ok(())
    }

    /// The next message from the daemon; daemon errors come back as `Err`.
    pub fn read(&mut self) -> Result<Message, ClientError> {
        if let Some(message) = self.held.pop_front() {
            return Ok(message);
        }
        self.read_wire()
    }

    fn read_wire(&mut self) -> Result<Message, ClientError> {
        match read_frame(&mut self.reader, MAX_REPLY_BYTES) {
            Ok(Message::Error(error)) => Err(ClientError::Daemon(error)),
            Ok(message) => Ok(message),
            Err(FrameError::Closed) => Err(ClientError::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// The next message that is not an event of a job (those are held for
    /// [`Client::read`]): replies come in request order, but a running job's
    /// events may come before them.
    fn reply(&mut self) -> Result<Message, ClientError> {
        loop {
            match self.read_wire()? {
                event @ (Message::Progress(_) | Message::Done(_) | Message::Failed(_)) => {
                    self.held.push_back(event)
                }
                reply => return Ok(reply),
            }
        }
    }

    pub fn status(&mut self) -> Result<Status, ClientError> {
        self.send(&Message::GetStatus)?;
        match self.reply()? {
            Message::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    pub fn list_models(&mut self, hashes: bool) -> Result<Vec<ModelEntry>, ClientError> {
        self.send(&Message::ListModels { hashes })?;
        match self.reply()? {
            Message::Models(list) => Ok(list.models),
            other => Err(unexpected(&other)),
        }
    }

    /// Queues a job and returns once the daemon has accepted it.
    pub fn submit(&mut self, image: Image, params: JobParams) -> Result<Accepted, ClientError> {
        let request = self.next_request;
        self.next_request += 1;
        self.send(&Message::Submit(Submit {
            request,
            image,
            params,
        }))?;
        match self.reply()? {
            Message::Accepted(accepted) if accepted.request == request => Ok(accepted),
            Message::Rejected(rejected) if rejected.request == request => {
                Err(ClientError::Daemon(rejected.error))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Follows an accepted job to its end, passing progress to `on_progress`.
    /// Events of this connection's other jobs are kept for their own `wait`.
    pub fn wait(
        &mut self,
        job: JobId,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Done, ClientError> {
        let mut others = Vec::new();
        let outcome = loop {
            match self.read() {
                Ok(Message::Progress(progress)) if progress.job == job => on_progress(&progress),
                Ok(Message::Done(done)) if done.job == job => break Ok(done),
                Ok(Message::Failed(failed)) if failed.job == job => break Err(failed.error.into()),
                Ok(Message::ShuttingDown) => break Err(ClientError::ShutDown),
                Ok(event @ (Message::Progress(_) | Message::Done(_) | Message::Failed(_))) => {
                    others.push(event)
                }
                Ok(other) => break Err(unexpected(&other)),
                // A failed cancel (the job ended meanwhile) is no reason to stop waiting.
                Err(ClientError::Daemon(e)) if e.kind == crate::ErrorKind::UnknownJob => {}
                Err(e) if e.is_connection_lost() => break Err(ClientError::JobLost { job }),
                Err(e) => break Err(e),
            }
        };
        for event in others.into_iter().rev() {
            self.held.push_front(event);
        }
        outcome
    }

    /// Submits and waits: the whole job in one call.
    pub fn upscale(
        &mut self,
        image: Image,
        params: JobParams,
        on_progress: impl FnMut(&Progress),
    ) -> Result<Done, ClientError> {
        let accepted = self.submit(image, params)?;
        self.wait(accepted.job, on_progress)
    }

    /// Asks the daemon to stop and waits for its acknowledgement.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.send(&Message::Shutdown)?;
        loop {
            match self.read() {
                Ok(Message::ShuttingDown) | Err(ClientError::Closed) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn unexpected(message: &Message) -> ClientError {
    let text = format!("{message:?}");
    ClientError::Unexpected(text.chars().take(200).collect())
}
