//! How long work reports where it is and learns that it should stop: after
//! every network call it reports a [`Step`], and the report fails with
//! [`Cancelled`] once the job has been cancelled.

use crate::Cancelled;

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
