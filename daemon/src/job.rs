//! What a job is, between the server that queues jobs and the pipeline that runs them: a
//! [`JobRunner`] turns an image into a [`JobOutput`], a [`JobChecker`] vets a submission before
//! it is queued, and long work reports each [`Step`] to a [`ProgressSink`] after every network
//! call, learning there that it should stop ([`Cancelled`]). Both sides depend on this module,
//! never on each other.

use tessera_protocol::{ErrorInfo, Image, JobParams, StageTiming};

/// Returned by long work when its job was cancelled between two network calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the job was cancelled")]
pub struct Cancelled;

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

/// Where a job is, in the protocol's terms (see `tessera_protocol::Progress`).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub stage: u32,
    pub stages: u32,
    pub phase: &'static str,
    pub step: u32,
    pub steps: u32,
    pub tile: u32,
    pub tiles: u32,
    /// Fraction of the whole job done, 0 to 1.
    pub fraction: f32,
}

pub trait ProgressSink {
    /// Records progress; `Err(Cancelled)` means: stop now.
    fn report(&mut self, step: Step) -> Result<(), Cancelled>;

    /// The work's own estimate of the seconds left, for the reports that follow (work that
    /// gives none is extrapolated from its fraction).
    fn time_left(&mut self, _seconds: Option<f32>) {}
}

/// A sink for work that nobody watches and nobody cancels (benchmarks, tools).
pub struct Unobserved;

impl ProgressSink for Unobserved {
    fn report(&mut self, _step: Step) -> Result<(), Cancelled> {
        Ok(())
    }
}
