//! The engine worker: one thread that takes jobs from the queue in order and
//! runs them one at a time, turning each outcome (result, error, cancel or
//! even a panic) into exactly one terminal message for its client.

use super::hub::{Hub, Job};
use crate::Cancelled;
use crate::job::{JobRunner, ProgressSink, Step};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tessera_protocol::{Done, ErrorInfo, ErrorKind, Failed, Message, Progress};

pub(super) fn run(hub: Arc<Hub>, mut runner: Box<dyn JobRunner>) {
    while let Some(job) = hub.next_job() {
        let Job {
            id,
            client,
            image,
            params,
            cancel,
        } = job;
        let started = Instant::now();
        let mark = hub.warning_mark();
        tracing::info!(
            "job {id} started ({}×{}, ×{})",
            image.width,
            image.height,
            params.scale
        );
        let mut sink = JobProgress {
            hub: &hub,
            job: id,
            client,
            cancel: &cancel,
            fraction: 0.0,
            origin: None,
            mark,
            warnings: Vec::new(),
            time_left: None,
        };
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| runner.run(image, &params, &mut sink)));
        let message = match outcome {
            Ok(Ok(output)) => {
                tracing::info!("job {id} done in {:.2} s", started.elapsed().as_secs_f64());
                Message::Done(Done {
                    job: id,
                    image: output.image,
                    timings: output.timings,
                    warnings: sink.all_warnings(),
                })
            }
            Ok(Err(mut error)) => {
                if error.kind == ErrorKind::Cancelled && hub.is_shutting_down() {
                    error = ErrorInfo::new(
                        ErrorKind::ShuttingDown,
                        "the daemon shut down while the job ran",
                    );
                }
                tracing::info!("job {id} ended: {error}");
                Message::Failed(Failed { job: id, error })
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!("job {id} panicked: {what}");
                Message::Failed(Failed {
                    job: id,
                    error: ErrorInfo::new(
                        ErrorKind::Internal,
                        format!(
                            "the daemon hit a bug while running this job ({what}); the log has details"
                        ),
                    ),
                })
            }
        };
        hub.finish(id, client, message);
        if hub.queue_is_empty() {
            release_free_memory();
        }
    }
}

/// Hands freed memory back to the OS: when the queue runs dry after a job, and when a client
/// leaves with results it never read. glibc keeps freed blocks in its arenas (one per thread
/// that allocated), and once a large block has been freed it serves even multi-megabyte
/// requests from those arenas, so without this a daemon that once upscaled a large image would
/// keep that heap for the rest of the session. (With `engine.cpu_arena`, ONNX Runtime's own
/// arena is not affected: it belongs to the warm session.)
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps every block of 1 MiB or more in its own mapping, which goes back to the OS the moment it
/// is freed. glibc otherwise raises this threshold each time such a block is freed (up to 32 MiB),
/// after which images and results of a few megabytes live in the heap and stay there. Blocks
/// above 32 MiB (the networks' large activations) are mapped either way; only blocks between
/// 1 and 32 MiB change.
pub fn keep_large_blocks_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning and takes its lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Forwards a running job's progress to its client and tells it when to stop.
struct JobProgress<'a> {
    hub: &'a Hub,
    job: u64,
    client: u64,
    cancel: &'a AtomicBool,
    fraction: f32,
    /// When and at what fraction the first report came: the ETA extrapolates the rate since
    /// then, so model loading before it does not count as work.
    origin: Option<(Instant, f32)>,
    /// The engine's warning mark when the job started: the job is told what came after.
    mark: u64,
    /// The job's warnings so far, in the order first seen: the list only grows.
    warnings: Vec<String>,
    /// The job's own estimate of the seconds left, when it gives one.
    time_left: Option<f32>,
}

impl JobProgress<'_> {
    /// The job's warnings: those seen before and any new ones, appended.
    fn all_warnings(&mut self) -> Vec<String> {
        for warning in self.hub.job_warnings(self.mark) {
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
        self.warnings.clone()
    }

    /// Seconds left at the average rate since the first report; `None` until there is one.
    fn eta(&mut self) -> Option<f32> {
        let (start, from) = *self.origin.get_or_insert((Instant::now(), self.fraction));
        let done = self.fraction - from;
        let elapsed = start.elapsed().as_secs_f32();
        (done > 1e-3 && elapsed > 0.05).then(|| elapsed * (1.0 - self.fraction) / done)
    }
}

impl ProgressSink for JobProgress<'_> {
    fn time_left(&mut self, seconds: Option<f32>) {
        self.time_left = seconds;
    }

    fn report(&mut self, step: Step) -> Result<(), Cancelled> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(Cancelled);
        }
        // Clients draw bars: never let them go backwards.
        self.fraction = self.fraction.max(step.fraction.clamp(0.0, 1.0));
        self.hub.set_fraction(self.job, self.fraction);
        let extrapolated = self.eta();
        let eta_seconds = self.time_left.or(extrapolated);
        self.hub.set_eta(self.job, eta_seconds);
        if let Some(outbox) = self.hub.outbox_of(self.client) {
            outbox.send(Message::Progress(Progress {
                job: self.job,
                stage: step.stage,
                stages: step.stages,
                phase: step.phase.to_owned(),
                step: step.step,
                steps: step.steps,
                tile: step.tile,
                tiles: step.tiles,
                fraction: self.fraction,
                eta_seconds,
                warnings: self.all_warnings(),
            }));
        }
        Ok(())
    }
}
