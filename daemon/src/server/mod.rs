//! The daemon: one process per user that listens on the local socket,
//! accepts any number of clients, queues their jobs in FIFO order and runs
//! them one at a time on the engine, streaming progress back, until it is
//! told to stop (a `Shutdown` message, SIGINT or SIGTERM).

mod connection;
pub mod hub;
pub mod instance;
pub mod outbox;
#[cfg(windows)]
pub mod pipe;
pub mod socket;
mod worker;

pub use worker::keep_large_blocks_mapped;

use crate::job::{JobChecker, JobRunner};
use crate::store::DataDir;
use hub::{DaemonInfo, Hub};
use interprocess::local_socket::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tessera_protocol::paths::SocketAddress;
use tessera_protocol::{ErrorInfo, ErrorKind, Message};

/// What every connection thread shares.
pub(crate) struct Shared {
    hub: Arc<Hub>,
    checker: Arc<dyn JobChecker>,
    data_dir: DataDir,
    address: SocketAddress,
    stop: AtomicBool,
    /// Connections being served now, and the most at once (`limits.max_connections`).
    connections: AtomicUsize,
    max_connections: usize,
    /// Connections being refused now (each on a short-lived thread of its own).
    refusals: AtomicUsize,
}

impl Shared {
    /// Asks the accept loop to stop, and wakes it with a connection of our own.
    pub(crate) fn request_shutdown(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            let _ = socket::connect(&self.address);
        }
    }
}

pub struct ServeOptions {
    pub data_dir: DataDir,
    pub address: SocketAddress,
    pub limits: crate::config::Limits,
    pub info: DaemonInfo,
}

/// How long shutdown waits for the running job to reach its next network
/// call, and then for clients to receive their last messages.
const SHUTDOWN_JOB_GRACE: Duration = Duration::from_secs(30);
const SHUTDOWN_FLUSH_GRACE: Duration = Duration::from_secs(3);

/// A handle on a running server for a controller in the same process (the tray): what the
/// engine is doing, pausing the queue, and shutting down as a `Shutdown` message would.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    pub fn activity(&self) -> hub::Activity {
        self.shared.hub.activity()
    }

    pub fn set_paused(&self, paused: bool) {
        self.shared.hub.set_paused(paused);
    }

    pub fn shutdown(&self) {
        tracing::info!("shutdown requested in the daemon's process");
        self.shared.request_shutdown();
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.shared.data_dir
    }
}

/// Serves until shutdown. The caller has claimed the instance lock.
pub fn serve(
    options: ServeOptions,
    runner: Box<dyn JobRunner>,
    checker: Arc<dyn JobChecker>,
) -> std::io::Result<()> {
    serve_controlled(options, runner, checker, |_| {})
}

/// [`serve`], handing a [`Control`] to `on_listening` once the socket is bound.
pub fn serve_controlled(
    options: ServeOptions,
    runner: Box<dyn JobRunner>,
    checker: Arc<dyn JobChecker>,
    on_listening: impl FnOnce(Control),
) -> std::io::Result<()> {
    let listener = socket::bind(&options.address)?;
    let max_connections = options.limits.max_connections;
    let hub = Arc::new(Hub::new(options.limits, options.info));
    let shared = Arc::new(Shared {
        hub: hub.clone(),
        checker,
        data_dir: options.data_dir,
        address: options.address.clone(),
        stop: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        max_connections,
        refusals: AtomicUsize::new(0),
    });
    {
        let shared = shared.clone();
        if let Err(e) = ctrlc::set_handler(move || {
            tracing::info!("signal received; shutting down");
            shared.request_shutdown();
        }) {
            tracing::warn!("cannot install the signal handler: {e}");
        }
    }
    let (worker_done, worker_exit) = crossbeam_channel::bounded::<()>(1);
    {
        let hub = hub.clone();
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                worker::run(hub, runner);
                let _ = worker_done.send(());
            })?;
    }
    tracing::info!("listening on {}", options.address);
    eprintln!("tessera: listening on {}", options.address);
    on_listening(Control {
        shared: shared.clone(),
    });
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if !socket::peer_is_same_user(&stream) {
            tracing::warn!("refused a connection from another user");
            continue;
        }
        if shared.connections.load(Ordering::SeqCst) >= shared.max_connections {
            refuse_busy(&shared, stream);
            continue;
        }
        let served = Counted::new(&shared, |s| &s.connections);
        let shared = shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                let _served = served;
                connection::serve(shared, stream)
            })
        {
            tracing::error!("cannot start a connection thread: {e}");
        }
    }
    drop(listener);
    shut_down(&hub, &worker_exit);
    Ok(())
}

/// Connections refused at once; beyond that a connection is closed without an answer, so that
/// a flood of them costs no more than this many short-lived threads.
const MAX_REFUSALS: usize = 4;

/// Answers a connection over `limits.max_connections` with `TooManyConnections` (after its
/// handshake, so that the client reads the error rather than a reset) and closes it.
fn refuse_busy(shared: &Arc<Shared>, stream: interprocess::local_socket::Stream) {
    let busy = shared.connections.load(Ordering::SeqCst);
    tracing::warn!(
        "refused a connection: {busy} clients are connected (limits.max_connections is {})",
        shared.max_connections
    );
    if shared.refusals.load(Ordering::SeqCst) >= MAX_REFUSALS {
        return;
    }
    let error = ErrorInfo::new(
        ErrorKind::TooManyConnections,
        format!(
            "the daemon already serves {} connections (limits.max_connections in config.toml); \
             close another client or raise the limit",
            shared.max_connections
        ),
    );
    let refusing = Counted::new(shared, |s| &s.refusals);
    let spawned = std::thread::Builder::new()
        .name("refusal".into())
        .spawn(move || {
            let _refusing = refusing;
            connection::refuse(stream, error)
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start a thread to refuse a connection: {e}");
    }
}

/// One count held in a shared counter for as long as it lives (a thread's whole life, panics
/// included).
struct Counted {
    shared: Arc<Shared>,
    counter: fn(&Shared) -> &AtomicUsize,
}

impl Counted {
    fn new(shared: &Arc<Shared>, counter: fn(&Shared) -> &AtomicUsize) -> Counted {
        counter(shared).fetch_add(1, Ordering::SeqCst);
        Counted {
            shared: shared.clone(),
            counter,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.counter)(&self.shared).fetch_sub(1, Ordering::SeqCst);
    }
}

fn shut_down(hub: &Hub, worker_exit: &crossbeam_channel::Receiver<()>) {
    tracing::info!("shutting down");
    let outboxes = hub.begin_shutdown();
    if worker_exit.recv_timeout(SHUTDOWN_JOB_GRACE).is_err() {
        tracing::warn!("the running job did not stop in time; exiting anyway");
    }
    for outbox in &outboxes {
        outbox.send(Message::ShuttingDown);
        outbox.close();
    }
    let deadline = Instant::now() + SHUTDOWN_FLUSH_GRACE;
    while Instant::now() < deadline && outboxes.iter().any(|o| !o.is_dead() && o.pending() > 0) {
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!("stopped");
}
