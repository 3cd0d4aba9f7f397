//! The start-up warm-up: as soon as `tessera serve` listens, a background thread loads the
//! default upscaler, then compiles the default model set part by part and encodes the default
//! prompts, so that the first job finds everything warm. Jobs never wait for more than they
//! need: the engine thread takes the upscaler once it is loaded, takes the model set when a
//! job asks for the same set (waiting for the parts still loading, which that job would have
//! loaded anyway), and stops the warm-up after its current part when a job asks for another
//! set.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tessera_protocol::{JobParams, Preset, WarmUp};

use super::model_set::{Abandoned, ModelSet, SetKey};
use crate::engine::Engine;
use crate::nets::Precision;
use crate::nets::esrgan::Esrgan;
use crate::store::{DataDir, FileStamp};

/// The upscaler, then the parts of [`ModelSet::PARTS`], then the default prompts.
const PARTS: u32 = ModelSet::PARTS.len() as u32 + 2;

/// What the warm-up thread shares with the engine thread and with `Status`.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    loading: String,
    done: u32,
    started: Option<Instant>,
    /// Seconds the warm-up took, once it is over.
    took: Option<f32>,
    error: String,
    /// A job asked for another model set: stop after the current part.
    abandon: bool,
    /// The loaded upscaler until the engine thread takes it; `upscaler_path` says which
    /// model it is as soon as its loading starts.
    upscaler_path: Option<PathBuf>,
    upscaler: Option<(PathBuf, FileStamp, Precision, Esrgan)>,
    /// The set being loaded, and the set once it is complete (until a job takes it).
    key: Option<SetKey>,
    set: Option<ModelSet>,
}

impl State {
    fn over(&self) -> bool {
        self.took.is_some()
    }
}

/// What the thread needs to resolve and load the default models.
pub struct WarmUpPlan {
    pub engine: Arc<Engine>,
    pub data_dir: DataDir,
    /// The default upscaler's file, and the precision jobs run it in.
    pub upscaler: Result<PathBuf, String>,
    pub upscaler_precision: Precision,
    /// The default model set (Clarity's defaults: its LoRAs and embeddings included).
    pub set: Result<SetKey, String>,
    /// The job whose prompts are encoded once the set is loaded (the one `set` is for).
    pub prompts: JobParams,
}

/// A handle on the running (or finished) warm-up.
#[derive(Clone)]
pub struct WarmUpHandle {
    shared: Arc<Shared>,
}

impl WarmUpHandle {
    /// Starts the warm-up thread.
    pub fn start(plan: WarmUpPlan) -> WarmUpHandle {
        let shared = Arc::new(Shared::default());
        {
            let mut state = shared.lock();
            state.started = Some(Instant::now());
            // Known from the start, so that a job that comes while the upscaler loads knows
            // whether to wait for this set.
            state.key = plan.set.as_ref().ok().cloned();
        }
        let handle = WarmUpHandle { shared };
        let thread = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("warm-up".into())
            .spawn(move || thread.run(plan));
        if let Err(e) = spawned {
            handle.finish(format!("cannot start the warm-up thread: {e}"));
        }
        handle
    }

    /// The warm-up as `Status` reports it.
    pub fn report(&self) -> WarmUp {
        let state = self.shared.lock();
        let seconds = state
            .took
            .unwrap_or_else(|| state.started.map_or(0.0, |s| s.elapsed().as_secs_f32()));
        WarmUp {
            loading: state.loading.clone(),
            done: state.done,
            parts: PARTS,
            seconds,
            error: state.error.clone(),
        }
    }

    /// The warmed upscaler if it is `path` (waiting while it loads); `None` otherwise.
    pub fn take_upscaler(
        &self,
        path: &std::path::Path,
    ) -> Option<(PathBuf, FileStamp, Precision, Esrgan)> {
        let mut state = self.shared.lock();
        if state.upscaler_path.as_deref() != Some(path) {
            return None;
        }
        while state.upscaler.is_none() && state.upscaler_path.is_some() && !state.over() {
            state = self.shared.wait(state);
        }
        state.upscaler_path = None;
        state.upscaler.take()
    }

    /// The warmed model set if it is `key`, waiting for the parts still loading; for another
    /// key, stops the warm-up after its current part and waits for that (its memory goes).
    pub fn take_set(&self, key: &SetKey) -> Option<ModelSet> {
        let mut state = self.shared.lock();
        if state.key.as_ref() != Some(key) {
            state.abandon = true;
            while !state.over() && state.key.is_some() {
                state = self.shared.wait(state);
            }
            state.set = None;
            return None;
        }
        while state.set.is_none() && !state.over() {
            state = self.shared.wait(state);
        }
        state.key = None;
        state.set.take()
    }

    fn run(&self, plan: WarmUpPlan) {
        let cache = plan.data_dir.cache();
        match plan.upscaler {
            Ok(path) => {
                self.begin(&format!("upscaler {}", file_name(&path)), |s| {
                    s.upscaler_path = Some(path.clone());
                });
                let loaded = FileStamp::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|stamp| {
                        Esrgan::load_as(&plan.engine, &path, &cache, plan.upscaler_precision)
                            .map(|net| (stamp, net))
                            .map_err(|e| e.to_string())
                    });
                match loaded {
                    Ok((stamp, net)) => self.part_done(|s| {
                        if s.upscaler_path.as_deref() == Some(&path) {
                            s.upscaler = Some((path.clone(), stamp, plan.upscaler_precision, net));
                        }
                    }),
                    Err(e) => {
                        self.update(|s| s.upscaler_path = None);
                        return self.finish(format!("upscaler {}: {e}", file_name(&path)));
                    }
                }
            }
            Err(e) => return self.finish(e),
        }
        let key = match plan.set {
            Ok(key) => key,
            Err(e) => return self.finish(e),
        };
        let name = file_name(&key.checkpoint.path);
        let mut first = true;
        let loaded = ModelSet::load_in_parts(&plan.engine, key, &cache, &mut |part| {
            if !std::mem::take(&mut first) {
                self.part_done(|_| {});
            }
            if self.shared.lock().abandon {
                return Err(Abandoned);
            }
            self.begin(&format!("{part} {name}"), |_| {});
            Ok(())
        });
        let mut set = match loaded {
            Ok(Some(set)) => set,
            Ok(None) => return self.finish("stopped: a job asked for other models".into()),
            Err(e) => return self.finish(format!("{name}: {e}")),
        };
        self.part_done(|_| {});
        self.begin("the default prompts", |_| {});
        let defaults = &plan.prompts;
        let emphasis = defaults.preset != Preset::Refiners;
        for prompt in [&defaults.prompt, &defaults.negative_prompt] {
            if let Err(e) = set.text.conditioning(prompt, emphasis) {
                // The job will say so too, with its own prompt.
                tracing::warn!("warm-up: the default prompt could not be encoded: {e}");
            }
        }
        self.part_done(|s| s.set = Some(set));
        self.finish(String::new());
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.shared.lock());
        self.shared.changed.notify_all();
    }

    fn begin(&self, what: &str, change: impl FnOnce(&mut State)) {
        tracing::info!("warm-up: loading {what}");
        self.update(|s| {
            s.loading = what.to_owned();
            change(s);
        });
    }

    fn part_done(&self, change: impl FnOnce(&mut State)) {
        self.update(|s| {
            s.done += 1;
            change(s);
        });
    }

    fn finish(&self, error: String) {
        self.update(|s| {
            let took = s.started.map_or(0.0, |t| t.elapsed().as_secs_f32());
            if error.is_empty() {
                tracing::info!("warm-up: the default models are warm ({took:.1} s)");
            } else {
                tracing::info!("warm-up: {error}");
                s.key = None;
            }
            s.took = Some(took);
            s.loading.clear();
            s.error = error;
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}
