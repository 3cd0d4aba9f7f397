//! The daemon's shared state: connected clients, the FIFO job queue, the job
//! on the engine, and cancellation. Connection threads and the engine worker
//! meet here; every method takes the one lock briefly and never does I/O
//! while holding it.

use super::outbox::Outbox;
use crate::config::Limits;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tessera_protocol::{
    Accepted, DeviceMemory, ErrorInfo, ErrorKind, Failed, Image, JobId, JobParams, Message, Status,
};

pub type ClientId = u64;

/// A job waiting for, or on, the engine.
pub struct Job {
    pub id: JobId,
    pub client: ClientId,
    pub image: Image,
    pub params: JobParams,
    pub cancel: Arc<AtomicBool>,
}

struct Running {
    id: JobId,
    client: ClientId,
    cancel: Arc<AtomicBool>,
    fraction: f32,
    eta_seconds: Option<f32>,
}

#[derive(Default)]
struct State {
    next_job: JobId,
    next_client: ClientId,
    queue: VecDeque<Job>,
    running: Option<Running>,
    clients: HashMap<ClientId, Arc<Outbox>>,
    shutting_down: bool,
    /// Queued jobs wait while paused (the tray's Pause); the running one finishes.
    paused: bool,
    /// The last job that failed for a reason other than a cancel, until one succeeds.
    last_failure: Option<String>,
}

/// What the engine is doing, for a controller in the same process (the tray).
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub running: Option<JobId>,
    pub fraction: f32,
    pub queued: u32,
    pub paused: bool,
    pub last_failure: Option<String>,
}

/// What the engine tells clients, asked at every `GetStatus` and every job report (the
/// engine implements it; tests of the server leave it out).
pub trait EngineReport: Send + Sync {
    /// The warm sessions the engine holds.
    fn sessions(&self) -> Vec<String>;
    /// What the engine fell back from, for `Status`.
    fn warnings(&self) -> Vec<String>;
    /// A mark taken when a job starts, for [`EngineReport::job_warnings`].
    fn warning_mark(&self) -> u64;
    /// What the job started at `mark` must be told.
    fn job_warnings(&self, mark: u64) -> Vec<String>;
    fn device_memory(&self) -> Option<DeviceMemory>;
    fn session_budget(&self) -> Option<u64>;
    fn session_bytes(&self) -> u64;
}

/// Says how far the start-up warm-up is (asked at every `GetStatus`).
pub type WarmUpReport = Arc<dyn Fn() -> tessera_protocol::WarmUp + Send + Sync>;

/// Facts about the daemon that `Status` reports.
#[derive(Clone)]
pub struct DaemonInfo {
    pub runtime: String,
    pub device: String,
    pub data_dir: String,
    pub engine: Option<Arc<dyn EngineReport>>,
    pub warm_up: Option<WarmUpReport>,
}

impl std::fmt::Debug for DaemonInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonInfo")
            .field("runtime", &self.runtime)
            .field("device", &self.device)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The process's resident memory in bytes, where the platform says (Linux: `/proc`;
/// Windows: the working set).
#[cfg(windows)]
fn resident_bytes() -> u64 {
    use windows_sys::Win32::System::ProcessStatus::{
        K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::Threading::GetCurrentProcess;
    let mut counters = PROCESS_MEMORY_COUNTERS {
        cb: std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32,
        ..Default::default()
    };
    // SAFETY: the pseudo-handle of this process, and a counters struct of the size given.
    let ok = unsafe { K32GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, counters.cb) };
    if ok == 0 {
        0
    } else {
        counters.WorkingSetSize as u64
    }
}

/// The process's resident memory in bytes, where the platform says (Linux: `/proc`).
#[cfg(not(windows))]
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    #[cfg(unix)]
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    #[cfg(not(unix))]
    let page = 0u64;
    pages * page
}

pub struct Hub {
    limits: Limits,
    info: DaemonInfo,
    state: Mutex<State>,
    work: Condvar,
}

impl Hub {
    pub fn new(limits: Limits, info: DaemonInfo) -> Hub {
        Hub {
            limits,
            info,
            state: Mutex::new(State {
                next_job: 1,
                next_client: 1,
                ..State::default()
            }),
            work: Condvar::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A mark for [`Hub::job_warnings`], taken when a job starts.
    pub fn warning_mark(&self) -> u64 {
        self.info.engine.as_ref().map_or(0, |e| e.warning_mark())
    }

    /// The warnings of the job that started at `mark`.
    pub fn job_warnings(&self, mark: u64) -> Vec<String> {
        self.info
            .engine
            .as_ref()
            .map_or_else(Vec::new, |e| e.job_warnings(mark))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("hub lock")
    }

    pub fn add_client(&self) -> (ClientId, Arc<Outbox>) {
        let mut state = self.lock();
        let id = state.next_client;
        state.next_client += 1;
        let outbox = Arc::new(Outbox::default());
        state.clients.insert(id, outbox.clone());
        (id, outbox)
    }

    /// A client went away: its queued jobs are dropped and its running job
    /// is told to stop. Nobody else is affected.
    pub fn remove_client(&self, client: ClientId) {
        self.detach(client, true);
    }

    /// Like [`Hub::remove_client`], but what is already in the client's
    /// outbox is still written (a last error before the connection closes).
    pub fn remove_client_after_flush(&self, client: ClientId) {
        self.detach(client, false);
    }

    fn detach(&self, client: ClientId, kill_outbox: bool) {
        let mut state = self.lock();
        if let Some(outbox) = state.clients.remove(&client)
            && kill_outbox
        {
            outbox.kill();
        }
        let before = state.queue.len();
        state.queue.retain(|job| job.client != client);
        let dropped = before - state.queue.len();
        if let Some(running) = state.running.as_ref().filter(|r| r.client == client) {
            running.cancel.store(true, Ordering::SeqCst);
            tracing::info!("client {client} left; stopping its job {}", running.id);
        }
        if dropped > 0 {
            tracing::info!("client {client} left; dropped its {dropped} queued job(s)");
        }
    }

    /// Queues a job whose image and parameters have been checked, and sends the client its
    /// `Accepted` (the returned copy is for the caller's log).
    pub fn submit(
        &self,
        client: ClientId,
        request: u64,
        image: Image,
        params: JobParams,
    ) -> Result<Accepted, ErrorInfo> {
        let mut state = self.lock();
        if state.shutting_down {
            return Err(ErrorInfo::new(
                ErrorKind::ShuttingDown,
                "the daemon is shutting down and takes no new jobs",
            ));
        }
        if state.queue.len() >= self.limits.max_queue {
            return Err(ErrorInfo::new(
                ErrorKind::QueueFull,
                format!(
                    "the queue is full ({} jobs waiting, limits.max_queue); try again when \
                     some have finished",
                    state.queue.len()
                ),
            ));
        }
        // Results the client has not read yet count too: they are held in memory for it.
        let unsent = state
            .clients
            .get(&client)
            .map_or(0, |outbox| outbox.unsent_results());
        let owned = state.queue.iter().filter(|j| j.client == client).count()
            + usize::from(state.running.as_ref().is_some_and(|r| r.client == client))
            + unsent;
        if owned >= self.limits.max_jobs_per_client {
            return Err(ErrorInfo::new(
                ErrorKind::TooManyJobs,
                format!(
                    "this client already has {owned} jobs queued, running or with results not \
                     yet read (limits.max_jobs_per_client is {})",
                    self.limits.max_jobs_per_client
                ),
            ));
        }
        let id = state.next_job;
        state.next_job += 1;
        let position = (state.queue.len() + usize::from(state.running.is_some())) as u32;
        let accepted = Accepted {
            request,
            job: id,
            position,
        };
        // Queued for the client before the engine can see the job, so that `Accepted`
        // always precedes the job's progress and result on the wire.
        if let Some(outbox) = state.clients.get(&client) {
            outbox.send(Message::Accepted(accepted.clone()));
        }
        state.queue.push_back(Job {
            id,
            client,
            image,
            params,
            cancel: Arc::new(AtomicBool::new(false)),
        });
        self.work.notify_one();
        Ok(accepted)
    }

    /// Cancels a queued job at once, or tells a running job to stop at its
    /// next network call. Any client may cancel any job of this user.
    pub fn cancel(&self, job: JobId) -> Result<(), ErrorInfo> {
        let mut state = self.lock();
        if let Some(index) = state.queue.iter().position(|j| j.id == job) {
            let dropped = state.queue.remove(index).expect("index is in range");
            let outbox = state.clients.get(&dropped.client).cloned();
            drop(state);
            tracing::info!("job {job} cancelled while queued");
            if let Some(outbox) = outbox {
                outbox.send(Message::Failed(Failed {
                    job,
                    error: ErrorInfo::new(
                        ErrorKind::Cancelled,
                        "the job was cancelled before it started",
                    ),
                }));
            }
            return Ok(());
        }
        if let Some(running) = state.running.as_ref().filter(|r| r.id == job) {
            running.cancel.store(true, Ordering::SeqCst);
            tracing::info!("job {job} cancelled while running");
            return Ok(());
        }
        Err(ErrorInfo::new(
            ErrorKind::UnknownJob,
            format!("job {job} is neither queued nor running"),
        ))
    }

    /// The engine worker's wait for work; `None` once the daemon shuts down.
    pub fn next_job(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if state.shutting_down {
                return None;
            }
            if let Some(job) = (!state.paused).then(|| state.queue.pop_front()).flatten() {
                state.running = Some(Running {
                    id: job.id,
                    client: job.client,
                    cancel: job.cancel.clone(),
                    fraction: 0.0,
                    eta_seconds: None,
                });
                return Some(job);
            }
            state = self.work.wait(state).expect("hub lock");
        }
    }

    /// The client a running job reports to, if it is still connected.
    pub fn outbox_of(&self, client: ClientId) -> Option<Arc<Outbox>> {
        self.lock().clients.get(&client).cloned()
    }

    /// The running job's latest estimate of its seconds left.
    pub fn set_eta(&self, job: JobId, seconds: Option<f32>) {
        if let Some(running) = self.lock().running.as_mut().filter(|r| r.id == job) {
            running.eta_seconds = seconds;
        }
    }

    pub fn set_fraction(&self, job: JobId, fraction: f32) {
        if let Some(running) = self.lock().running.as_mut().filter(|r| r.id == job) {
            running.fraction = fraction;
        }
    }

    /// The running job ended; its terminal message goes to its client.
    pub fn finish(&self, job: JobId, client: ClientId, message: Message) {
        let mut state = self.lock();
        if state.running.as_ref().is_some_and(|r| r.id == job) {
            state.running = None;
        }
        match &message {
            Message::Done(_) => state.last_failure = None,
            Message::Failed(f)
                if !matches!(f.error.kind, ErrorKind::Cancelled | ErrorKind::ShuttingDown) =>
            {
                state.last_failure = Some(format!("job {job}: {}", f.error.message));
            }
            _ => {}
        }
        // Queued under the lock, so that no submission sees the job neither running nor
        // waiting to be sent (the outbox only takes its own lock, briefly).
        if let Some(outbox) = state.clients.get(&client) {
            outbox.send(message);
        }
    }

    pub fn status(&self) -> Status {
        // Outside the lock: the report takes the engine's own lock.
        let engine = self.info.engine.as_deref();
        let sessions = engine.map_or_else(Vec::new, |e| e.sessions());
        let warnings = engine.map_or_else(Vec::new, |e| e.warnings());
        let device_memory = engine.and_then(|e| e.device_memory());
        let session_budget_bytes = engine.and_then(|e| e.session_budget());
        let session_bytes = engine.map_or(0, |e| e.session_bytes());
        let warm_up = self.info.warm_up.as_ref().map(|f| f());
        let state = self.lock();
        Status {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime: self.info.runtime.clone(),
            device: self.info.device.clone(),
            running: state.running.as_ref().map(|r| r.id),
            running_fraction: state.running.as_ref().map_or(0.0, |r| r.fraction),
            queued: state.queue.len() as u32,
            clients: state.clients.len() as u32,
            data_dir: self.info.data_dir.clone(),
            sessions,
            resident_bytes: resident_bytes(),
            warnings,
            device_memory,
            session_budget_bytes,
            session_bytes,
            warm_up,
            running_eta_seconds: state.running.as_ref().and_then(|r| r.eta_seconds),
        }
    }

    /// Holds queued jobs back (the running one finishes), or lets them run again.
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        if !paused {
            self.work.notify_all();
        }
        tracing::info!("queue {}", if paused { "paused" } else { "resumed" });
    }

    pub fn activity(&self) -> Activity {
        let state = self.lock();
        Activity {
            running: state.running.as_ref().map(|r| r.id),
            fraction: state.running.as_ref().map_or(0.0, |r| r.fraction),
            queued: state.queue.len() as u32,
            paused: state.paused,
            last_failure: state.last_failure.clone(),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Stops taking work: queued jobs fail with `ShuttingDown`, the running
    /// job is told to stop, and every client hears `ShuttingDown`. Returns
    /// the outboxes, so the caller can wait for them to drain.
    pub fn begin_shutdown(&self) -> Vec<Arc<Outbox>> {
        let mut state = self.lock();
        if state.shutting_down {
            return Vec::new();
        }
        state.shutting_down = true;
        let dropped: Vec<Job> = state.queue.drain(..).collect();
        if let Some(running) = &state.running {
            running.cancel.store(true, Ordering::SeqCst);
        }
        let clients = state.clients.clone();
        drop(state);
        self.work.notify_all();
        for job in dropped {
            if let Some(outbox) = clients.get(&job.client) {
                outbox.send(Message::Failed(Failed {
                    job: job.id,
                    error: ErrorInfo::new(
                        ErrorKind::ShuttingDown,
                        "the daemon shut down before the job started",
                    ),
                }));
            }
        }
        clients.values().cloned().collect()
    }

    /// Whether no job waits for the engine.
    pub fn queue_is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Whether a running job has terminated: used by shutdown to wait for the
    /// engine to come to rest.
    pub fn is_idle(&self) -> bool {
        self.lock().running.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::{Channels, SampleFormat, Transfer};

    fn hub(limits: Limits) -> Hub {
        Hub::new(
            limits,
            DaemonInfo {
                runtime: "test".into(),
                device: "test".into(),
                data_dir: "/tmp".into(),
                engine: None,
                warm_up: None,
            },
        )
    }

    fn image() -> Image {
        Image {
            width: 1,
            height: 1,
            channels: Channels::Gray,
            sample: SampleFormat::U8,
            transfer: Transfer::Srgb,
            data: vec![0],
        }
    }

    fn submit(hub: &Hub, client: ClientId) -> Result<Accepted, ErrorInfo> {
        hub.submit(client, 7, image(), JobParams::default())
    }

    /// The next message that is not an `Accepted`.
    fn next_event(outbox: &Outbox) -> Option<Message> {
        loop {
            match outbox.next()? {
                Message::Accepted(_) => {}
                other => return Some(other),
            }
        }
    }

    #[test]
    fn jobs_run_in_submission_order_with_positions() {
        let hub = hub(Limits::default());
        let (a, outbox) = hub.add_client();
        let (b, _) = hub.add_client();
        let first = submit(&hub, a).unwrap();
        assert_eq!(outbox.next(), Some(Message::Accepted(first.clone())));
        let second = submit(&hub, b).unwrap();
        assert_eq!((first.position, second.position), (0, 1));
        assert_eq!(first.request, 7);
        assert_eq!(hub.next_job().unwrap().id, first.job);
        assert_eq!(
            submit(&hub, a).unwrap().position,
            2,
            "the running job is ahead too"
        );
        assert_eq!(hub.next_job().unwrap().id, second.job);
    }

    #[test]
    fn cancelling_a_queued_job_tells_its_owner_and_a_running_job_gets_flagged() {
        let hub = hub(Limits::default());
        let (a, outbox) = hub.add_client();
        let running = submit(&hub, a).unwrap().job;
        let queued = submit(&hub, a).unwrap().job;
        let job = hub.next_job().unwrap();
        hub.cancel(queued).unwrap();
        assert!(
            matches!(next_event(&outbox), Some(Message::Failed(f)) if f.job == queued && f.error.kind == ErrorKind::Cancelled)
        );
        assert!(!job.cancel.load(Ordering::SeqCst));
        hub.cancel(running).unwrap();
        assert!(job.cancel.load(Ordering::SeqCst));
        assert_eq!(hub.cancel(999).unwrap_err().kind, ErrorKind::UnknownJob);
    }

    #[test]
    fn a_leaving_client_loses_only_its_own_jobs() {
        let hub = hub(Limits::default());
        let (a, _) = hub.add_client();
        let (b, _) = hub.add_client();
        submit(&hub, a).unwrap();
        submit(&hub, a).unwrap();
        let kept = submit(&hub, b).unwrap().job;
        let job_of_a = hub.next_job().unwrap();
        hub.remove_client(a);
        assert!(job_of_a.cancel.load(Ordering::SeqCst));
        hub.finish(job_of_a.id, a, Message::Shutdown);
        assert_eq!(hub.next_job().unwrap().id, kept);
        assert_eq!(hub.status().clients, 1);
    }

    #[test]
    fn limits_give_typed_errors() {
        let hub = hub(Limits {
            max_queue: 2,
            max_jobs_per_client: 1,
            ..Limits::default()
        });
        let (a, _) = hub.add_client();
        let (b, _) = hub.add_client();
        let (c, _) = hub.add_client();
        submit(&hub, a).unwrap();
        assert_eq!(submit(&hub, a).unwrap_err().kind, ErrorKind::TooManyJobs);
        submit(&hub, b).unwrap();
        assert_eq!(submit(&hub, c).unwrap_err().kind, ErrorKind::QueueFull);
    }

    #[test]
    fn unread_results_count_against_the_job_limit() {
        let hub = hub(Limits {
            max_jobs_per_client: 1,
            ..Limits::default()
        });
        let (a, outbox) = hub.add_client();
        let first = submit(&hub, a).unwrap().job;
        let job = hub.next_job().unwrap();
        hub.finish(
            job.id,
            a,
            Message::Failed(Failed {
                job: first,
                error: ErrorInfo::new(ErrorKind::Cancelled, "x"),
            }),
        );
        assert_eq!(
            submit(&hub, a).unwrap_err().kind,
            ErrorKind::TooManyJobs,
            "the result waits in the outbox"
        );
        let result = next_event(&outbox).unwrap();
        outbox.written(&result);
        assert!(submit(&hub, a).is_ok(), "read results free the slot");
    }

    #[test]
    fn a_paused_queue_holds_jobs_until_resumed_and_failures_are_remembered() {
        let hub = Arc::new(hub(Limits::default()));
        let (a, _) = hub.add_client();
        hub.set_paused(true);
        let first = submit(&hub, a).unwrap().job;
        let worker = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.next_job().map(|j| j.id))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!worker.is_finished(), "a paused queue gives out no job");
        let activity = hub.activity();
        assert!(activity.paused && activity.queued == 1 && activity.running.is_none());
        hub.set_paused(false);
        assert_eq!(worker.join().unwrap(), Some(first));
        hub.finish(
            first,
            a,
            Message::Failed(Failed {
                job: first,
                error: ErrorInfo::new(ErrorKind::Internal, "it broke"),
            }),
        );
        assert_eq!(
            hub.activity().last_failure.as_deref(),
            Some("job 1: it broke")
        );
        let second = submit(&hub, a).unwrap().job;
        hub.next_job().unwrap();
        hub.finish(
            second,
            a,
            Message::Failed(Failed {
                job: second,
                error: ErrorInfo::new(ErrorKind::Cancelled, "cancelled"),
            }),
        );
        assert!(
            hub.activity().last_failure.is_some(),
            "a cancel is not a recovery"
        );
    }

    #[test]
    fn shutdown_fails_queued_jobs_and_stops_the_worker() {
        let hub = hub(Limits::default());
        let (a, outbox) = hub.add_client();
        submit(&hub, a).unwrap();
        let running = hub.next_job().unwrap();
        let queued = submit(&hub, a).unwrap().job;
        assert_eq!(hub.begin_shutdown().len(), 1);
        assert!(running.cancel.load(Ordering::SeqCst));
        assert!(
            matches!(next_event(&outbox), Some(Message::Failed(f)) if f.job == queued && f.error.kind == ErrorKind::ShuttingDown)
        );
        assert!(hub.next_job().is_none());
        assert_eq!(submit(&hub, a).unwrap_err().kind, ErrorKind::ShuttingDown);
    }
}
