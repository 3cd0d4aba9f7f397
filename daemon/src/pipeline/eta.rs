//! The time left of a diffusion job: the work still planned in each phase (upscale, encode,
//! condition, denoise, decode, in the FLOP-weighted units progress is counted in), times the
//! seconds per unit that phase takes. A phase's rate is measured on the job's own calls as
//! soon as it has run one; before that it comes from the machine's past jobs (kept per
//! device, phase and canvas in the data directory's `cache/rates.json`), else from the job's
//! own rate so far. So the first job on a machine gets an estimate after its first calls, and
//! later jobs from their first report on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Phases whose work the estimate follows (others, such as "load", are not planned work).
pub const PHASES: [&str; 5] = ["upscale", "encode", "condition", "denoise", "decode"];

/// Seconds per unit of work, by "device/phase" and "device/phase/canvas".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub seconds_per_unit: BTreeMap<String, f64>,
}

impl Rates {
    /// The rates in `path`; none when it is missing or unreadable (a cache: it refills).
    pub fn load(path: &Path) -> Rates {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Writes the rates to `path` (through a temporary file, so a reader never sees half).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, text)?;
        std::fs::rename(temp, path)
    }

    fn key(device: &str, phase: &str, canvas: Option<(usize, usize)>) -> String {
        match canvas {
            Some((w, h)) => format!("{device}/{phase}/{w}x{h}"),
            None => format!("{device}/{phase}"),
        }
    }

    /// The rate of `phase` on `device`: for this canvas if known, else for any.
    pub fn get(&self, device: &str, phase: &str, canvas: (usize, usize)) -> Option<f64> {
        self.seconds_per_unit
            .get(&Rates::key(device, phase, Some(canvas)))
            .or_else(|| self.seconds_per_unit.get(&Rates::key(device, phase, None)))
            .copied()
    }

    /// Folds a job's measured rate into the record (half the old, half the new).
    pub fn learn(&mut self, device: &str, phase: &str, canvas: (usize, usize), rate: f64) {
        if !(rate.is_finite() && rate > 0.0) {
            return;
        }
        for key in [
            Rates::key(device, phase, Some(canvas)),
            Rates::key(device, phase, None),
        ] {
            let value = self.seconds_per_unit.entry(key).or_insert(rate);
            *value = 0.5 * *value + 0.5 * rate;
        }
    }
}

/// Where the rates live in a data directory.
pub fn rates_file(cache_dir: &Path) -> PathBuf {
    cache_dir.join("rates.json")
}

#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    planned: f64,
    done: f64,
    seconds: f64,
}

/// Follows one job's calls and estimates the seconds left.
pub struct Estimator {
    phases: BTreeMap<&'static str, Phase>,
    history: Rates,
    device: String,
    canvas: (usize, usize),
    last: Instant,
}

impl Estimator {
    /// `planned`: the job's work by phase; `canvas`: its last stage's canvas (the shape the
    /// rates are kept for).
    pub fn new(
        planned: &[(&'static str, f64)],
        history: Rates,
        device: &str,
        canvas: (usize, usize),
    ) -> Estimator {
        let mut phases = BTreeMap::new();
        for &(phase, work) in planned {
            phases.entry(phase).or_insert_with(Phase::default).planned += work;
        }
        Estimator {
            phases,
            history,
            device: device.to_owned(),
            canvas,
            last: Instant::now(),
        }
    }

    /// A call of `phase` that did `work` just finished: the time since the last one was its.
    /// Work reported as "reuse" (taken from the cache) is the upscale and encode that did not
    /// have to run: it leaves their plan without costing time.
    pub fn record(&mut self, phase: &str, work: f64) {
        let now = Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        if phase == "reuse" {
            let mut left = work;
            for skipped in ["upscale", "encode"] {
                if let Some(p) = self.phases.get_mut(skipped) {
                    let take = left.min(p.planned - p.done).max(0.0);
                    p.planned -= take;
                    left -= take;
                }
            }
            return;
        }
        if let Some(p) = self.phases.get_mut(phase) {
            p.done += work;
            p.seconds += seconds;
        }
    }

    /// The seconds per unit of `phase`: this job's, else the machine's past ones.
    fn rate(&self, phase: &str, p: &Phase) -> Option<f64> {
        if p.done > 0.0 && p.seconds > 0.0 {
            return Some(p.seconds / p.done);
        }
        self.history.get(&self.device, phase, self.canvas)
    }

    /// The job's own average rate so far, over every phase it has run.
    fn average(&self) -> Option<f64> {
        let (done, seconds) = self
            .phases
            .values()
            .fold((0.0, 0.0), |(d, s), p| (d + p.done, s + p.seconds));
        (done > 0.0 && seconds > 0.0).then(|| seconds / done)
    }

    /// Seconds left; `None` until some phase's rate is known for every phase with work left.
    pub fn seconds_left(&self) -> Option<f64> {
        let average = self.average();
        let mut left = 0.0;
        for (phase, p) in &self.phases {
            let remaining = (p.planned - p.done).max(0.0);
            if remaining <= 0.0 {
                continue;
            }
            left += remaining * self.rate(phase, p).or(average)?;
        }
        Some(left)
    }

    /// The rates measured on this job folded into `rates`.
    pub fn teach(&self, rates: &mut Rates) {
        for (phase, p) in &self.phases {
            if p.done > 0.0 && p.seconds > 0.0 {
                rates.learn(&self.device, phase, self.canvas, p.seconds / p.done);
            }
        }
    }

    /// The rates this estimator started from.
    pub fn history(&self) -> &Rates {
        &self.history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_phase_is_timed_at_its_own_rate() {
        let planned = [("upscale", 10.0), ("denoise", 100.0), ("decode", 10.0)];
        let mut eta = Estimator::new(&planned, Rates::default(), "cpu", (64, 64));
        assert_eq!(eta.seconds_left(), None, "nothing is known yet");
        // Upscale takes 0.02 s for its 10 units; the other phases are estimated at that
        // average until they run.
        eta.last = Instant::now() - Duration::from_millis(20);
        eta.record("upscale", 10.0);
        let first = eta.seconds_left().unwrap();
        assert!((first - 110.0 * 0.002).abs() < 0.05, "{first}");
        // Denoise is ten times slower per unit: once it has run, its own rate counts.
        eta.last = Instant::now() - Duration::from_millis(200);
        eta.record("denoise", 10.0);
        let later = eta.seconds_left().unwrap();
        assert!(
            (later - (90.0 * 0.02 + 10.0 * 0.0113)).abs() < 0.3,
            "{later}"
        );
        let mut rates = Rates::default();
        eta.teach(&mut rates);
        assert!(rates.get("cpu", "denoise", (64, 64)).unwrap() > 0.015);
        assert!(
            rates.get("cpu", "denoise", (32, 32)).is_some(),
            "any canvas falls back"
        );
        assert!(
            rates.get("gpu", "denoise", (64, 64)).is_none(),
            "devices are apart"
        );
    }

    #[test]
    fn past_jobs_give_an_estimate_before_the_first_call_and_reuse_costs_nothing() {
        let mut rates = Rates::default();
        for phase in PHASES {
            rates.learn("cpu", phase, (64, 64), 0.01);
        }
        let planned = [("upscale", 10.0), ("encode", 5.0), ("denoise", 100.0)];
        let mut eta = Estimator::new(&planned, rates.clone(), "cpu", (64, 64));
        assert!((eta.seconds_left().unwrap() - 1.15).abs() < 1e-9);
        eta.record("reuse", 15.0);
        assert!((eta.seconds_left().unwrap() - 1.0).abs() < 1e-9);
        let temp = tempfile::tempdir().unwrap();
        let file = rates_file(temp.path());
        rates.save(&file).unwrap();
        assert_eq!(Rates::load(&file), rates);
        assert_eq!(
            Rates::load(&temp.path().join("none.json")),
            Rates::default()
        );
    }
}
