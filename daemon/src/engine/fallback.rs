//! Fallback that never loses a job for a recoverable reason: the warnings a fallback leaves
//! for the job's client and for `tessera status` ([`Notices`]), how an out-of-memory error of
//! an accelerator is recognised ([`is_out_of_memory`]), and the retry policy for it
//! ([`retry_out_of_memory`]): the same call again with smaller tiles or batches, level by
//! level, then with the failing network on the CPU. Any other error (bad input, a cancel,
//! a CPU that runs out of memory) is returned as it is.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::EngineError;

/// Words of ONNX Runtime's messages when an accelerator runs out of memory: its CUDA arena
/// (`BFCArena::AllocateRawInternal` "Failed to allocate memory for requested buffer of size"),
/// CUDA, cuDNN and cuBLAS status codes, DirectML's `E_OUTOFMEMORY` (0x8007000E).
const OUT_OF_MEMORY: [&str; 7] = [
    "failed to allocate memory",
    "out of memory",
    "cudaerrormemoryallocation",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "e_outofmemory",
    "8007000e",
];

/// Whether an ONNX Runtime error message says that memory ran out.
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    OUT_OF_MEMORY.iter().any(|w| lower.contains(w))
}

/// Errors that may be an out-of-memory of a network call.
pub trait MaybeOutOfMemory {
    /// The model whose call ran out of memory, if that is what this error is.
    fn out_of_memory(&self) -> Option<&str>;
}

impl MaybeOutOfMemory for EngineError {
    fn out_of_memory(&self) -> Option<&str> {
        match self {
            EngineError::OutOfMemory { model, .. } => Some(model),
            _ => None,
        }
    }
}

/// What a retry asks of the engine (the [`super::Engine`] in the daemon; stand-ins in tests).
pub trait Recovery {
    /// Whether `model`'s sessions run on an accelerator (only then can smaller calls or the
    /// CPU help).
    fn on_accelerator(&self, model: &str) -> bool;
    /// Builds `model`'s sessions again on the CPU, in place: every holder uses the new one.
    fn move_to_cpu(&self, model: &str) -> Result<(), EngineError>;
    /// Records a warning for the running job and `tessera status`.
    fn warn(&self, text: String);
}

/// Recovery where nothing runs on an accelerator (tools, tests): every error stands.
pub struct NoRecovery;

impl Recovery for NoRecovery {
    fn on_accelerator(&self, _model: &str) -> bool {
        false
    }
    fn move_to_cpu(&self, _model: &str) -> Result<(), EngineError> {
        Ok(())
    }
    fn warn(&self, text: String) {
        tracing::warn!("{text}");
    }
}

/// How far one kind of call has been shrunk in a job: level k runs at 1/2^k of the
/// configured tile or batch. It lasts for the job (or stage), so that the calls after a
/// retry start at the size that worked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shrink {
    pub level: u32,
}

/// What is being retried, for the warnings: `describe(level)` names the size at a level, e.g.
/// "2 tiles per call" or "96-pixel tiles"; `levels` is the last level the size allows.
pub struct Shrinkable<'a> {
    pub levels: u32,
    pub describe: &'a dyn Fn(u32) -> String,
}

impl Shrinkable<'_> {
    /// A call without a size to shrink (a text encoder, a hint): straight to the CPU.
    pub const FIXED: Shrinkable<'static> = Shrinkable {
        levels: 0,
        describe: &|_| String::new(),
    };
}

/// Runs `attempt(level)` from `shrink.level` on. When it fails because an accelerator ran
/// out of memory, it runs again one level smaller, and below the smallest level with the
/// failing model moved to the CPU (at the configured size again). Every step leaves a
/// warning. Errors of other kinds, and out-of-memory errors of models already on the CPU,
/// are returned unchanged.
pub fn retry_out_of_memory<T, E>(
    recovery: &dyn Recovery,
    shrink: &mut Shrink,
    size: &Shrinkable<'_>,
    mut attempt: impl FnMut(u32) -> Result<T, E>,
) -> Result<T, E>
where
    E: MaybeOutOfMemory + From<EngineError>,
{
    loop {
        let error = match attempt(shrink.level) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(model) = error.out_of_memory().map(str::to_owned) else {
            return Err(error);
        };
        if !recovery.on_accelerator(&model) {
            return Err(error);
        }
        if shrink.level < size.levels {
            shrink.level += 1;
            recovery.warn(format!(
                "{model} ran out of GPU memory; it runs with {} from now on",
                (size.describe)(shrink.level)
            ));
            continue;
        }
        recovery.move_to_cpu(&model)?;
        recovery.warn(format!(
            "{model} ran out of GPU memory{}; it runs on the CPU (slower) until the daemon restarts or loads other models",
            if size.levels > 0 {
                format!(" even with {}", (size.describe)(size.levels))
            } else {
                String::new()
            }
        ));
        // The CPU takes the configured size; the networks still on the accelerator shrink
        // again if they need to.
        shrink.level = 0;
    }
}

/// How many warnings `tessera status` keeps.
const KEPT: usize = 16;

/// The engine's warnings: standing ones (a provider dropped at start, true of every job) and
/// the log of what happened since (numbered, so a job can ask for those raised while it ran).
#[derive(Debug, Default)]
pub struct Notices {
    inner: Mutex<NoticeLog>,
}

#[derive(Debug, Default)]
struct NoticeLog {
    standing: Vec<String>,
    log: VecDeque<(u64, String)>,
    next: u64,
}

impl Notices {
    /// A warning that holds for the daemon's life (and is told to every job).
    pub fn stand(&self, text: String) {
        tracing::warn!("{text}");
        self.lock().standing.push(text);
    }

    /// A warning about what just happened.
    pub fn raise(&self, text: String) {
        tracing::warn!("{text}");
        let mut log = self.lock();
        let seq = log.next;
        log.next += 1;
        log.log.push_back((seq, text));
        // Jobs ask only for what was raised while they ran; keep enough for a long one.
        while log.log.len() > 64 * KEPT {
            log.log.pop_front();
        }
    }

    /// A mark to pass to [`Notices::for_job`] later.
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// What a job started at `mark` has to be told: the standing warnings, then those raised
    /// since, each once.
    pub fn for_job(&self, mark: u64) -> Vec<String> {
        let log = self.lock();
        let mut out = log.standing.clone();
        for (_, text) in log.log.iter().filter(|(seq, _)| *seq >= mark) {
            if !out.contains(text) {
                out.push(text.clone());
            }
        }
        out
    }

    /// What `tessera status` shows: the standing warnings and the latest others, each once,
    /// at most 16, oldest first.
    pub fn for_status(&self) -> Vec<String> {
        let log = self.lock();
        let mut recent: Vec<String> = Vec::new();
        for (_, text) in log.log.iter().rev() {
            if recent.len() + log.standing.len() >= KEPT {
                break;
            }
            if !recent.contains(text) && !log.standing.contains(text) {
                recent.push(text.clone());
            }
        }
        recent.reverse();
        let mut out = log.standing.clone();
        out.truncate(KEPT);
        out.extend(recent);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NoticeLog> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
