//! Fault injection for the fallback paths, which a machine without a GPU would otherwise never
//! take: the `TESSERA_FAULTS` environment variable (read by `tessera serve` and `tessera
//! doctor`; nothing else sets it) adds a simulated accelerator and makes it fail on purpose.
//! `docs/hardening.md` describes it; only the fault-injection tests use it.
//!
//! ```text
//! TESSERA_FAULTS="accelerator, build=UNet, oom=UNet@3+2"
//! ```
//!
//! - `accelerator`: a simulated accelerator ("simulated GPU") comes first in the execution
//!   providers. Its sessions run on ONNX Runtime's CPU provider, so its numbers are the CPU's,
//!   but the engine treats it as an accelerator: it is probed, its sessions can fall back to
//!   the CPU, its out-of-memory errors are retried.
//! - `probe`: the probe of every accelerator fails; `probe=wrong`: it gives wrong numbers.
//! - `build=TEXT`: building a session on an accelerator fails for models whose name contains
//!   `TEXT` (case-insensitive).
//! - `oom=TEXT@N+K`: on an accelerator, calls number N to N+K−1 (counted from 1 since the
//!   engine started) of the sessions whose model name contains `TEXT` fail with ONNX Runtime's
//!   CUDA out-of-memory message; `+K` defaults to `+1`. Several `oom` items count apart.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that carries the faults.
pub const ENV_VAR: &str = "TESSERA_FAULTS";

/// The message of an injected out-of-memory: the words ONNX Runtime's CUDA arena uses, so that
/// it takes the same path as a real one.
pub const INJECTED_OOM: &str = "injected fault: Failed to allocate memory for requested buffer of size 1073741824 (CUDA out of memory)";

/// What to break, parsed from [`ENV_VAR`]. The default breaks nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub simulated_accelerator: bool,
    pub probe: Option<ProbeFault>,
    pub build: Option<String>,
    pub oom: Vec<OomFault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeFault {
    /// The probe's session fails to run.
    Error,
    /// The probe runs but its output is off.
    WrongNumbers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomFault {
    /// Part of the model name, lower case.
    pub model: String,
    /// The first failing call (1-based) and how many fail in a row.
    pub first: u64,
    pub count: u64,
}

impl Faults {
    /// The faults of [`ENV_VAR`]; none when it is unset or empty.
    pub fn from_env() -> Result<Faults, String> {
        match std::env::var(ENV_VAR) {
            Ok(text) => text.parse().map_err(|e| format!("{ENV_VAR}: {e}")),
            Err(_) => Ok(Faults::default()),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }

    /// Whether building `model` on an accelerator must fail.
    pub fn breaks_build(&self, model: &str) -> bool {
        self.build
            .as_deref()
            .is_some_and(|part| model.to_lowercase().contains(part))
    }
}

impl std::str::FromStr for Faults {
    type Err = String;

    fn from_str(text: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for item in text
            .split([',', ';'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            match (key, value) {
                ("accelerator", None) => faults.simulated_accelerator = true,
                ("probe", None | Some("error")) => faults.probe = Some(ProbeFault::Error),
                ("probe", Some("wrong")) => faults.probe = Some(ProbeFault::WrongNumbers),
                ("build", Some(part)) if !part.is_empty() => {
                    faults.build = Some(part.to_lowercase())
                }
                ("oom", Some(spec)) => faults.oom.push(parse_oom(spec)?),
                _ => {
                    return Err(format!(
                        "cannot read {item:?} (one of: accelerator, probe, probe=wrong, build=TEXT, oom=TEXT@N+K)"
                    ));
                }
            }
        }
        Ok(faults)
    }
}

fn parse_oom(spec: &str) -> Result<OomFault, String> {
    let bad = || format!("oom={spec:?} must read TEXT@N or TEXT@N+K, e.g. oom=UNet@3+2");
    let (model, calls) = spec.rsplit_once('@').ok_or_else(bad)?;
    let (first, count) = match calls.split_once('+') {
        Some((n, k)) => (n, k),
        None => (calls, "1"),
    };
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    if first == 0 || count == 0 {
        return Err(bad());
    }
    Ok(OomFault {
        model: model.trim().to_lowercase(),
        first,
        count,
    })
}

/// The faults of one engine and the call counters the `oom` faults need.
#[derive(Debug, Default)]
pub struct FaultState {
    pub faults: Faults,
    /// Calls so far of the models of each `oom` fault.
    calls: Vec<AtomicU64>,
}

impl FaultState {
    pub fn new(faults: Faults) -> FaultState {
        FaultState {
            calls: faults.oom.iter().map(|_| AtomicU64::new(0)).collect(),
            faults,
        }
    }

    /// Counts a call of `model` on an accelerator; `Err` when this call must run out of memory.
    pub fn before_accelerated_call(&self, model: &str) -> Result<(), &'static str> {
        let lower = model.to_lowercase();
        let mut fail = false;
        for (oom, calls) in self.faults.oom.iter().zip(&self.calls) {
            if lower.contains(&oom.model) {
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                fail |= (oom.first..oom.first + oom.count).contains(&call);
            }
        }
        if fail {
            tracing::warn!(model, "injecting an out-of-memory error");
            Err(INJECTED_OOM)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_knob_reads_every_fault_and_refuses_the_rest() {
        let f: Faults = "accelerator, probe=wrong; build=UNet, oom=VAE decoder@3+2"
            .parse()
            .unwrap();
        assert!(f.simulated_accelerator);
        assert_eq!(f.probe, Some(ProbeFault::WrongNumbers));
        assert!(f.breaks_build("UNet+ControlNet tiny") && !f.breaks_build("VAE"));
        assert_eq!(
            f.oom,
            [OomFault {
                model: "vae decoder".into(),
                first: 3,
                count: 2
            }]
        );
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
        assert_eq!(
            "probe".parse::<Faults>().unwrap().probe,
            Some(ProbeFault::Error)
        );
        for bad in ["gpu", "oom=UNet", "oom=UNet@0", "oom=UNet@2+0", "build="] {
            assert!(bad.parse::<Faults>().is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_memory_hits_exactly_the_chosen_calls_of_the_chosen_model() {
        let state = FaultState::new("oom=unet@2+2".parse().unwrap());
        let outcomes: Vec<bool> = (0..5)
            .map(|_| state.before_accelerated_call("UNet tiny").is_err())
            .collect();
        assert_eq!(outcomes, [false, true, true, false, false]);
        assert!(state.before_accelerated_call("VAE").is_ok());
        let two = FaultState::new("oom=unet@1, oom=vae@2".parse().unwrap());
        assert!(two.before_accelerated_call("UNet").is_err());
        assert!(two.before_accelerated_call("VAE").is_ok());
        assert!(two.before_accelerated_call("VAE").is_err(), "counted apart");
    }
}
