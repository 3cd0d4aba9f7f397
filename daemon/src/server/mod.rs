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

use crate::pipeline::progress::ProgressSink;
use crate::store::DataDir;
use hub::{DaemonInfo, Hub};
use interprocess::local_socket::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tessera_protocol::paths::SocketAddress;
use tessera_protocol::{ErrorInfo, Image, JobParams, Message, StageTiming};

/// What a finished job produced.
pub struct JobOutput {
    pub image: Image,
    pub timings: Vec<StageTiming>,
}

/// Runs jobs on the engine. Lives on the single engine thread.
pub trait JobRunner: Send {
    fn run(
        &mut self,
        image: Image,
        params: &JobParams,
        progress: &mut dyn ProgressSink,
    ) -> Result<JobOutput, ErrorInfo>;
}

/// Vets a submission before it is queued (image, parameters, models), so a
/// job that cannot run is rejected at once. Called from connection threads.
pub trait JobChecker: Send + Sync {
    fn check(&self, image: &Image, params: &JobParams) -> Result<(), ErrorInfo>;
}

/// What every connection thread shares.
pub(crate) struct Shared {
    hub: Arc<Hub>,
    checker: Arc<dyn JobChecker>,
    data_dir: DataDir,
    address: SocketAddress,
    stop: AtomicBool,
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
    let hub = Arc::new(Hub::new(options.limits, options.info));
    let shared = Arc::new(Shared {
        hub: hub.clone(),
        checker,
        data_dir: options.data_dir,
        address: options.address.clone(),
        stop: AtomicBool::new(false),
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
        let shared = shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || connection::serve(shared, stream))
        {
            tracing::error!("cannot start a connection thread: {e}");
        }
    }
    drop(listener);
    shut_down(&hub, &worker_exit);
    Ok(())
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
