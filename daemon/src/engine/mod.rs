//! Running graphs on ONNX Runtime: the process's runtime, execution providers, and a small
//! cache of warm sessions so repeated jobs on the same model skip graph optimisation.
//!
//! Models are handed over as [`CompiledModel`]s: ONNX bytes whose weights are external data in
//! one folder (see `crate::weights`). The engine is shared by the server and the worker
//! (`Send + Sync`); sessions are `Arc<Mutex<_>>` because `ort` runs take `&mut`.

pub mod binding;
pub mod device_memory;
mod providers;
mod runtime;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use sha2::{Digest, Sha256};

pub use providers::parse_list as parse_providers;
pub use runtime::{ENV_VARS, library_name, locate as locate_library};
use runtime::{Runtime, one_line};

/// A session shared between the cache and the networks using it.
pub type SharedSession = Arc<Mutex<Session>>;

/// How to start the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// The ONNX Runtime library (or a folder holding it); else the environment, else
    /// `<data_dir>/runtime/`.
    pub ort_lib: Option<PathBuf>,
    /// The user's data directory.
    pub data_dir: PathBuf,
    /// Threads per session for work inside one op; default: the number of cores.
    pub intra_threads: Option<usize>,
}

impl EngineOptions {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            ort_lib: None,
            data_dir: data_dir.into(),
            intra_threads: None,
        }
    }
}

/// Settings most callers leave alone (see [`Engine::with_tuning`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineTuning {
    /// Accelerators to try in order; the CPU is always the final fallback.
    pub execution_providers: Vec<ExecutionProvider>,
    /// How many warm sessions to keep.
    pub session_cache_size: usize,
    /// Whether sessions keep ONNX Runtime's CPU memory arena (`engine.cpu_arena`).
    pub cpu_arena: bool,
}

impl Default for EngineTuning {
    fn default() -> EngineTuning {
        EngineTuning {
            execution_providers: vec![ExecutionProvider::Cpu],
            session_cache_size: 4,
            cpu_arena: false,
        }
    }
}

/// An ONNX Runtime execution provider. Which ones work depends on the library: the
/// `onnxruntime-gpu` wheel carries CUDA, `onnxruntime-directml` DirectML, the macOS wheel CoreML;
/// one that cannot be registered is dropped with a logged reason and the CPU takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda { device_id: i32 },
    DirectMl { device_id: i32 },
    CoreMl,
}

impl ExecutionProvider {
    fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPU",
            ExecutionProvider::Cuda { .. } => "CUDA",
            ExecutionProvider::DirectMl { .. } => "DirectML",
            ExecutionProvider::CoreMl => "CoreML",
        }
    }
}

/// Engine failures. Every `Display` is one line (the CLI prints it as is).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "ONNX Runtime library not found ({searched}); run `tessera runtime install` or set TESSERA_ORT_LIB"
    )]
    RuntimeNotFound { searched: String },
    #[error(
        "cannot use {} as ONNX Runtime: {reason}; run `tessera runtime install` or set TESSERA_ORT_LIB",
        path.display()
    )]
    RuntimeUnusable { path: PathBuf, reason: String },
    #[error(
        "ONNX Runtime {found} at {} is too old (1.{required} or newer is needed); run `tessera runtime install` or set TESSERA_ORT_LIB",
        path.display()
    )]
    RuntimeTooOld {
        path: PathBuf,
        found: String,
        required: u32,
    },
    #[error(
        "ONNX Runtime is already loaded from {} in this process; restart to use {}",
        loaded.display(),
        requested.display()
    )]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },
    /// Session creation or inference failed inside ONNX Runtime.
    #[error("ONNX Runtime failed on {model}: {message}")]
    Ort { model: String, message: String },
}

impl EngineError {
    pub(crate) fn ort(model: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Ort {
            model: model.to_owned(),
            message: one_line(&e.to_string()),
        }
    }
}

/// A graph ready for a session: ONNX bytes plus where its external weights are.
#[derive(Clone, Debug)]
pub struct CompiledModel {
    /// For logs and errors, e.g. `ESRGAN 4x-UltraSharp.pth`.
    pub name: String,
    pub onnx: Vec<u8>,
    /// The folder external-data `location`s are relative to.
    pub weights_folder: PathBuf,
    /// The files the weights live in; their size and mtime are part of the model's identity.
    pub weight_files: Vec<PathBuf>,
}

/// The ONNX Runtime engine (see the module docs).
pub struct Engine {
    runtime: Arc<Runtime>,
    threads: usize,
    /// The providers that registered when the engine started, the CPU last.
    providers: Vec<ExecutionProvider>,
    cpu_arena: bool,
    /// Configured providers that could not be used here, with the reason.
    dropped: Vec<(ExecutionProvider, String)>,
    cache: Mutex<SessionCache>,
}

impl Engine {
    /// Loads ONNX Runtime (once per process) and prepares the session cache.
    pub fn new(options: EngineOptions) -> Result<Engine, EngineError> {
        Engine::with_tuning(options, EngineTuning::default())
    }

    /// [`Engine::new`] with explicit execution providers and cache size.
    pub fn with_tuning(
        options: EngineOptions,
        tuning: EngineTuning,
    ) -> Result<Engine, EngineError> {
        let runtime = runtime::load(options.ort_lib.as_deref(), &options.data_dir)?;
        let threads = options
            .intra_threads
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut providers = Vec::new();
        let mut dropped = Vec::new();
        for (ep, outcome) in providers::probe(&runtime, &tuning.execution_providers) {
            match outcome {
                Ok(()) => providers.push(ep),
                Err(reason) => {
                    tracing::warn!(provider = %ep, "cannot use this execution provider: {reason}");
                    dropped.push((ep, reason));
                }
            }
        }
        if !providers.contains(&ExecutionProvider::Cpu) {
            providers.push(ExecutionProvider::Cpu);
        }
        Ok(Engine {
            runtime,
            threads,
            providers,
            cpu_arena: tuning.cpu_arena,
            dropped,
            cache: Mutex::new(SessionCache::new(tuning.session_cache_size.max(1))),
        })
    }

    /// e.g. `ONNX Runtime 1.32.0 (/path/libonnxruntime.so.1.32.0)`.
    pub fn runtime_description(&self) -> String {
        format!(
            "ONNX Runtime {} ({})",
            self.runtime.version,
            self.runtime.path.display()
        )
    }

    /// e.g. `CPU (2 threads)`, or `CUDA, then CPU (2 threads)` with an accelerator.
    pub fn device_description(&self) -> String {
        let accelerators: Vec<String> = self
            .providers
            .iter()
            .filter(|ep| **ep != ExecutionProvider::Cpu)
            .map(|ep| ep.to_string())
            .collect();
        let cpu = format!(
            "CPU ({} thread{})",
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        );
        if accelerators.is_empty() {
            cpu
        } else {
            format!("{}, then {cpu}", accelerators.join(", "))
        }
    }

    /// The execution providers sessions get, best first, the CPU last.
    pub fn execution_providers(&self) -> &[ExecutionProvider] {
        &self.providers
    }

    /// Configured providers that could not be registered, with the reason.
    pub fn dropped_providers(&self) -> &[(ExecutionProvider, String)] {
        &self.dropped
    }

    /// Whether each of `list` can be registered with this library here (for `tessera doctor`).
    pub fn probe_providers(
        &self,
        list: &[ExecutionProvider],
    ) -> Vec<(ExecutionProvider, Result<(), String>)> {
        providers::probe(&self.runtime, list)
    }

    /// The ONNX Runtime version string.
    pub fn runtime_version(&self) -> &str {
        &self.runtime.version
    }

    /// Intra-op threads per session.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A warm session for `model`: from the cache when the same graph over the same weight
    /// files (same [`FileStamp`](crate::store::FileStamp)) was built before, else a new one.
    pub fn session(&self, model: &CompiledModel) -> Result<SharedSession, EngineError> {
        let key = identity(model);
        if let Some(s) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            tracing::debug!(model = %model.name, "reusing a warm session");
            return Ok(s);
        }
        let session = self.short_lived_session(model)?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
            key,
            model.name.clone(),
            session.clone(),
        );
        Ok(session)
    }

    /// A new session for `model` that the cache does not keep: it ends when its last holder
    /// lets it go (for graphs used briefly and rarely, whose memory matters more than their
    /// start-up). It is listed by [`Engine::held_sessions`] while alive.
    pub fn short_lived_session(&self, model: &CompiledModel) -> Result<SharedSession, EngineError> {
        let started = std::time::Instant::now();
        let session = Arc::new(Mutex::new(self.build_session(model)?));
        tracing::info!(model = %model.name, ms = started.elapsed().as_millis() as u64, "session ready");
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note_alive(model.name.clone(), &session);
        Ok(session)
    }

    /// Takes `model`'s session out of the cache: it ends when its last holder lets it go, and
    /// the next [`Engine::session`] for `model` creates a new one. For a large job, which
    /// needs the memory of a network it is done with more than the next job needs the time.
    pub fn forget(&self, model: &CompiledModel) {
        let key = identity(model);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let before = cache.entries.len();
        cache.entries.retain(|(k, _, _)| *k != key);
        if cache.entries.len() < before {
            tracing::info!(model = %model.name, "a large job sets this session aside");
        }
    }

    /// The names of every session alive now, whether the cache or a network holds it, in the
    /// order they were created.
    pub fn held_sessions(&self) -> Vec<String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.alive.retain(|(_, s)| s.strong_count() > 0);
        cache.alive.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Drops the cached sessions that no network holds any more (the models a new job no
    /// longer selects) and returns how many were freed. Callers drop their networks first.
    pub fn release_unused(&self) -> usize {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let before = cache.entries.len();
        cache.entries.retain(|(_, name, s)| {
            let keep = Arc::strong_count(s) > 1;
            if !keep {
                tracing::info!(model = %name, "freeing a session no job uses");
            }
            keep
        });
        before - cache.entries.len()
    }

    /// How many sessions the cache holds now.
    pub fn cached_sessions(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    fn build_session(&self, model: &CompiledModel) -> Result<Session, EngineError> {
        let err = |e: ort::Error<SessionBuilder>| EngineError::ort(&model.name, e);
        let folder = model.weights_folder.to_str().ok_or_else(|| {
            EngineError::ort(&model.name, "the weights folder path is not valid UTF-8")
        })?;
        let mut builder = Session::builder(&self.runtime.env)
            .map_err(|e| EngineError::ort(&model.name, e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(err)?
            .with_intra_threads(self.threads)
            .map_err(err)?
            // The daemon shares the machine with the editor: idle threads must not spin.
            .with_intra_op_spinning(false)
            .map_err(err)?
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                folder,
            )
            .map_err(err)?;
        // A session option (Enable/DisableCpuMemArena), not a provider registration: the
        // accelerators below keep their precedence over the CPU.
        ort::ep::ExecutionProvider::register(
            &ort::ep::CPU::default().with_arena_allocator(self.cpu_arena),
            &mut builder,
        )
        .map_err(|e| EngineError::ort(&model.name, e))?;
        for ep in &self.providers {
            if let Err(reason) = providers::register(&mut builder, *ep) {
                tracing::warn!(provider = %ep, model = %model.name, "execution provider not used: {reason}");
            }
        }
        builder
            .commit_from_memory(&model.onnx)
            .map_err(|e| EngineError::ort(&model.name, e))
    }
}

/// Identity of a model for the session cache.
fn identity(model: &CompiledModel) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&model.onnx);
    h.update(model.weights_folder.as_os_str().as_encoded_bytes());
    for f in &model.weight_files {
        h.update(f.as_os_str().as_encoded_bytes());
        if let Ok(stamp) = crate::store::FileStamp::read(f) {
            h.update(stamp.to_bytes());
        }
    }
    h.finalize().into()
}

/// Least-recently-used sessions; tiny, so a vector is the right structure. `alive` follows
/// every session created (weakly), so that what is held can be reported whoever holds it.
struct SessionCache {
    capacity: usize,
    entries: Vec<([u8; 32], String, SharedSession)>,
    alive: Vec<(String, std::sync::Weak<Mutex<Session>>)>,
}

impl SessionCache {
    fn new(capacity: usize) -> SessionCache {
        SessionCache {
            capacity,
            entries: Vec::new(),
            alive: Vec::new(),
        }
    }

    fn get(&mut self, key: &[u8; 32]) -> Option<SharedSession> {
        let i = self.entries.iter().position(|(k, _, _)| k == key)?;
        let entry = self.entries.remove(i);
        let session = entry.2.clone();
        self.entries.push(entry);
        Some(session)
    }

    fn put(&mut self, key: [u8; 32], name: String, session: SharedSession) {
        self.entries.retain(|(k, _, _)| *k != key);
        if self.entries.len() >= self.capacity {
            // Evicted sessions stay alive while a network still holds them.
            self.entries.remove(0);
        }
        self.entries.push((key, name, session));
    }

    fn note_alive(&mut self, name: String, session: &SharedSession) {
        self.alive.retain(|(_, s)| s.strong_count() > 0);
        self.alive.push((name, Arc::downgrade(session)));
    }
}

/// `Path` of the ONNX Runtime library the process loaded, if any (for diagnostics).
pub fn loaded_library() -> Option<PathBuf> {
    runtime::loaded_path()
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("runtime", &self.runtime_description())
            .field("device", &self.device_description())
            .finish()
    }
}

// The server shares the engine between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    send_sync::<SharedSession>();
};
