//! Running graphs on ONNX Runtime: the process's runtime, the execution providers (checked
//! with a probe graph at start, dropped with a reason when they fail it), and a cache of warm
//! sessions held to a VRAM budget, so repeated jobs on the same model skip graph optimisation.
//! A session that cannot be built on the accelerator is built on the CPU instead, and a call
//! that runs out of accelerator memory can move its network there (`fallback.rs`); every such
//! fallback leaves a warning for the job's client and for `tessera status`.
//!
//! Models are handed over as [`CompiledModel`]s: ONNX bytes whose weights are external data in
//! one folder (see `crate::weights`). The engine is shared by the server and the worker
//! (`Send + Sync`); sessions are `Arc<Mutex<_>>` because `ort` runs take `&mut`.

pub mod binding;
mod budget;
mod build;
mod cache;
pub mod compiled;
pub mod device_memory;
mod ep_api;
mod error;
mod fallback;
mod faults;
pub mod node_placement;
mod nvml;
pub mod plugins;
mod preload;
mod probe;
mod providers;
mod runtime;
mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

pub use crate::store::execution_providers::ExecutionProvider;
pub use budget::BudgetSetting;
use build::Built;
pub use cache::SessionInfo;
use cache::{SessionCache, identity};
pub use compiled::CacheUse;
pub use error::EngineError;
pub use fallback::{
    MaybeOutOfMemory, NoRecovery, Recovery, Shrink, Shrinkable, is_out_of_memory,
    retry_out_of_memory,
};
use faults::FaultState;
pub use faults::Faults;
pub use node_placement::NodePlacement;
pub use nvml::DeviceMemory;
pub use plugins::{DeviceKind, PluginDevice, PluginEp, PluginProvider, PrecisionHint};
pub use preload::{
    DIRECTML_DLL, Preloaded, preload_cuda_libraries, preloaded as preloaded_cuda_libraries,
};
pub use probe::ProbeReport;
pub use providers::{
    ConvSearch, CudaOptions, EpSettings, cuda_options, parse_list as parse_providers,
};
pub use runtime::{ENV_VARS, library_name, locate as locate_library};
use runtime::{Runtime, one_line};
use session::ArenaRelease;
pub use session::{EngineSession, Placement};

/// A session shared between the cache and the networks using it.
pub type SharedSession = Arc<Mutex<EngineSession>>;

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
    /// The budget warm sessions are held to (`engine.vram_budget`).
    pub vram_budget: BudgetSetting,
    /// Faults to inject (fault-injection tests only, see `faults.rs`).
    pub faults: Faults,
    /// What a plugin provider's CPU device computes f32 graphs in (`engine.cpu_precision_hint`).
    pub precision_hint: PrecisionHint,
}

impl Default for EngineTuning {
    fn default() -> EngineTuning {
        EngineTuning {
            execution_providers: vec![ExecutionProvider::Cpu],
            session_cache_size: 4,
            cpu_arena: false,
            vram_budget: BudgetSetting::Auto,
            faults: Faults::default(),
            precision_hint: PrecisionHint::default(),
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
    /// How a CPU session of this graph holds its activations.
    pub cpu_memory: CpuMemory,
}

/// How a CPU session holds the activations of a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuMemory {
    /// From the process heap, each block given back when the graph frees it (unless
    /// `engine.cpu_arena` keeps ONNX Runtime's arena for every session).
    #[default]
    Heap,
    /// In ONNX Runtime's arena for the length of one call, shrunk at its end. For graphs whose
    /// single calls are large (the VAE at 1024² frees and allocates blocks of half a gigabyte
    /// dozens of times): every fresh block from the heap is a fresh mapping whose pages fault in
    /// one by one, a quarter of such a call's time; the arena reuses the blocks within the call
    /// and still gives them back before the next one.
    ArenaPerCall,
}

/// The ONNX Runtime engine (see the module docs).
pub struct Engine {
    runtime: Arc<Runtime>,
    threads: usize,
    /// The providers that passed their probe when the engine started, the CPU last.
    providers: Vec<ExecutionProvider>,
    cpu_arena: bool,
    /// Configured providers that could not be used here, with the reason.
    dropped: Vec<(ExecutionProvider, String)>,
    faults: Arc<FaultState>,
    /// Bytes the sessions on the device may hold; `None`: no budget.
    budget: Option<u64>,
    /// NVML and the device index, when the first accelerator is CUDA and the driver answers.
    nvml: Option<(nvml::Nvml, u32)>,
    notices: fallback::Notices,
    cache: Mutex<SessionCache>,
    /// The data directory (plugin libraries, the compiled-model cache).
    data_dir: PathBuf,
    precision_hint: PrecisionHint,
    /// The devices of the plugin providers that passed their probe, as they describe themselves.
    plugin_devices: Vec<PluginDevice>,
}

impl Engine {
    /// Loads ONNX Runtime (once per process) and prepares the session cache.
    pub fn new(options: EngineOptions) -> Result<Engine, EngineError> {
        Engine::with_tuning(options, EngineTuning::default())
    }

    /// [`Engine::new`] with explicit execution providers, cache size and budget. Each
    /// accelerator is checked (`providers::diagnose`), registered and probed
    /// (`probe.rs`); one that fails is dropped with its reason, which every job and
    /// `tessera status` are told.
    pub fn with_tuning(
        options: EngineOptions,
        tuning: EngineTuning,
    ) -> Result<Engine, EngineError> {
        let wants_cuda = tuning
            .execution_providers
            .iter()
            .any(|ep| matches!(ep, ExecutionProvider::Cuda { .. }));
        let runtime = runtime::load(options.ort_lib.as_deref(), &options.data_dir, wants_cuda)?;
        let threads = options
            .intra_threads
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let faults = Arc::new(FaultState::new(tuning.faults.clone()));
        let mut wanted = tuning.execution_providers.clone();
        if tuning.faults.simulated_accelerator {
            wanted.insert(0, ExecutionProvider::Simulated);
        }
        let notices = fallback::Notices::default();
        let mut providers = Vec::new();
        let mut dropped = Vec::new();
        for ep in wanted {
            if providers.contains(&ep) {
                continue;
            }
            match probe::check(&runtime, &options.data_dir, ep, &faults) {
                Ok(report) => {
                    if ep.is_accelerator() {
                        tracing::info!(provider = %ep, ms = report.millis, error = report.error, "execution provider passed its probe");
                    }
                    providers.push(ep);
                }
                Err(reason) => {
                    notices.stand(format!("{ep} is not used: {reason}"));
                    dropped.push((ep, reason));
                }
            }
        }
        if !providers.contains(&ExecutionProvider::Cpu) {
            providers.push(ExecutionProvider::Cpu);
        }
        let nvml = match providers.first() {
            Some(ExecutionProvider::Cuda { device_id }) => nvml::Nvml::open()
                .map_err(|e| tracing::warn!("cannot read the GPU's memory: {e}"))
                .ok()
                .map(|n| (n, *device_id as u32)),
            _ => None,
        };
        let mut plugin_devices: Vec<PluginDevice> = Vec::new();
        for ep in &providers {
            if let ExecutionProvider::Plugin(plugin) = ep
                && !plugin_devices
                    .iter()
                    .any(|d| d.ep.provider == plugin.provider)
            {
                plugin_devices.extend(plugins::devices(&runtime, plugin.provider));
            }
        }
        let plugin_device = |ep: &ExecutionProvider| match ep {
            ExecutionProvider::Plugin(p) => plugin_devices.iter().find(|d| d.ep == *p),
            _ => None,
        };
        // A plugin GPU whose memory is known but not its free memory: the total stands for it.
        let free_total = nvml
            .as_ref()
            .and_then(|(n, i)| n.memory(*i).ok())
            .map(|m| (m.free, m.total))
            .or_else(|| {
                let first = providers.first()?;
                let memory = plugin_device(first)
                    .filter(|_| !first.on_host_cpu())?
                    .memory?;
                Some((memory, memory))
            });
        let budget = tuning.vram_budget.resolve(free_total);
        let versions: BTreeMap<String, String> = plugin_devices
            .iter()
            .map(|d| {
                (
                    d.ep.provider.config_name().to_owned(),
                    d.provider_version.clone(),
                )
            })
            .collect();
        for (dir, reason) in compiled::remove_stale(
            &compiled::root(&options.data_dir),
            &versions,
            compiled::LIMIT,
        ) {
            tracing::info!(entry = %dir.display(), "removed a compiled-model cache entry: {reason}");
        }
        if let Some(budget) = budget {
            tracing::info!(
                "sessions are held to a budget of {:.2} GiB",
                budget as f64 / (1u64 << 30) as f64
            );
        }
        Ok(Engine {
            runtime,
            threads,
            providers,
            cpu_arena: tuning.cpu_arena,
            dropped,
            faults,
            budget,
            nvml,
            notices,
            cache: Mutex::new(SessionCache::new(tuning.session_cache_size.max(1))),
            data_dir: options.data_dir,
            precision_hint: tuning.precision_hint,
            plugin_devices,
        })
    }

    /// The devices of the plugin providers in use, as they describe themselves.
    pub fn plugin_devices(&self) -> &[PluginDevice] {
        &self.plugin_devices
    }

    /// Every device `provider` offers here, registering its library if needed: the devices, or
    /// why the provider cannot be used (for `tessera doctor`).
    pub fn discover_plugin_devices(
        &self,
        provider: PluginProvider,
    ) -> Result<Vec<PluginDevice>, String> {
        plugins::register_library(&self.runtime, &self.data_dir, provider)?;
        Ok(plugins::devices(&self.runtime, provider))
    }

    /// e.g. `ONNX Runtime 1.32.0 (/path/libonnxruntime.so.1.32.0)`.
    pub fn runtime_description(&self) -> String {
        format!(
            "ONNX Runtime {} ({})",
            self.runtime.version,
            self.runtime.path.display()
        )
    }

    /// e.g. `CPU (2 threads)`, or `CUDA (NVIDIA GeForce RTX 3070), then CPU (2 threads)`.
    pub fn device_description(&self) -> String {
        let device = self.device_memory().map(|m| m.name).or_else(|| {
            let ExecutionProvider::Plugin(first) = self.accelerator()? else {
                return None;
            };
            self.plugin_devices
                .iter()
                .find(|d| d.ep == first)
                .map(|d| d.name.clone())
        });
        let accelerators: Vec<String> = self
            .providers
            .iter()
            .filter(|ep| ep.is_accelerator())
            .enumerate()
            .map(|(i, ep)| match (&device, i) {
                (Some(name), 0) => format!("{ep} ({name})"),
                _ => ep.to_string(),
            })
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

    /// Configured providers that are not used, with the reason.
    pub fn dropped_providers(&self) -> &[(ExecutionProvider, String)] {
        &self.dropped
    }

    /// Whether each of `list` can be used here: the reason it cannot (one line), or what its
    /// probe measured (for `tessera doctor`).
    pub fn probe_providers(
        &self,
        list: &[ExecutionProvider],
    ) -> Vec<(ExecutionProvider, Result<ProbeReport, String>)> {
        list.iter()
            .map(|&ep| {
                (
                    ep,
                    probe::check(&self.runtime, &self.data_dir, ep, &self.faults),
                )
            })
            .collect()
    }

    /// The ONNX Runtime version string.
    pub fn runtime_version(&self) -> &str {
        &self.runtime.version
    }

    /// Intra-op threads per session.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The accelerator's memory now, where its driver says (CUDA, through NVML).
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        let (nvml, index) = self.nvml.as_ref()?;
        nvml.memory(*index).ok()
    }

    /// The budget the sessions on the device are held to; `None`: no budget.
    pub fn session_budget(&self) -> Option<u64> {
        self.budget
    }

    /// The estimated bytes of the sessions alive now on the device the budget is for (the
    /// accelerator when there is one, else the CPU).
    pub fn session_bytes(&self) -> u64 {
        let mut cache = self.lock_cache();
        cache.prune();
        cache
            .alive
            .iter()
            .filter(|(info, _)| self.budgeted(info))
            .map(|(info, _)| info.bytes())
            .sum()
    }

    /// Whether `info`'s session counts against the budget: it is on the accelerator, or there
    /// is none and the budget is the CPU's.
    fn budgeted(&self, info: &SessionInfo) -> bool {
        self.accelerator().is_none() || info.on_accelerator()
    }

    /// A mark for [`Engine::warnings_since`], taken when a job starts (one job runs at a
    /// time: the sessions it runs are noted from here on).
    pub fn warning_mark(&self) -> u64 {
        let mut cache = self.lock_cache();
        cache.prune();
        for (info, _) in &cache.alive {
            info.used.store(false, Ordering::Relaxed);
        }
        self.notices.mark()
    }

    /// What a job that started at `mark` must be told: the standing warnings (a provider
    /// dropped), those raised since (a network moved to the CPU, a call retried), and, for
    /// each network the job ran on the CPU after an accelerator failed it earlier, that it
    /// still does.
    pub fn warnings_since(&self, mark: u64) -> Vec<String> {
        let mut out = self.notices.for_job(mark);
        let mut cache = self.lock_cache();
        cache.prune();
        for (info, _) in &cache.alive {
            if let Placement::Cpu {
                reason: Some(reason),
            } = info.placement()
                && info.used.load(Ordering::Relaxed)
                && !out.iter().any(|w| w.starts_with(&info.name))
            {
                out.push(format!("{} runs on the CPU (slower): {reason}", info.name));
            }
        }
        out
    }

    /// The warnings `tessera status` shows (at most 16, oldest first).
    pub fn warnings(&self) -> Vec<String> {
        self.notices.for_status()
    }

    /// A warning about a fallback that concerns the running job (and shows in the status).
    pub fn warn(&self, text: String) {
        self.notices.raise(text);
    }

    /// A warm session for `model`: from the cache when the same graph over the same weight
    /// files (same [`FileStamp`](crate::store::FileStamp)) was built before, else a new one.
    pub fn session(&self, model: &CompiledModel) -> Result<SharedSession, EngineError> {
        let key = identity(model);
        if let Some(s) = self.lock_cache().get(&key) {
            tracing::debug!(model = %model.name, "reusing a warm session");
            return Ok(s);
        }
        let session = self.short_lived_session(model)?;
        let info = session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .info()
            .clone();
        self.lock_cache().put(key, info, session.clone());
        Ok(session)
    }

    /// A new session for `model` that the cache does not keep: it ends when its last holder
    /// lets it go (for graphs used briefly and rarely, whose memory matters more than their
    /// start-up). It is listed by [`Engine::held_sessions`] while alive.
    ///
    /// On an accelerator, cached sessions no network uses are first set aside as the budget
    /// requires; a session that fails to build there is built on the CPU, with a warning.
    pub fn short_lived_session(&self, model: &CompiledModel) -> Result<SharedSession, EngineError> {
        let started = std::time::Instant::now();
        let model = Arc::new(model.clone());
        let bytes = budget::session_bytes(&model.onnx);
        self.make_room(bytes);
        let (built, placement) = match self.accelerator() {
            Some(ep) => match self.build_session(&model, true) {
                Ok(built) => (built, Placement::Accelerator(ep)),
                Err(reason) => {
                    let reason = one_line(&reason);
                    self.notices.raise(format!(
                        "{} could not be prepared on {ep} ({reason}); it runs on the CPU (slower)",
                        model.name
                    ));
                    let built = self
                        .build_session(&model, false)
                        .map_err(|e| EngineError::ort(&model.name, e))?;
                    (
                        built,
                        Placement::Cpu {
                            reason: Some(reason),
                        },
                    )
                }
            },
            None => (
                self.build_session(&model, false)
                    .map_err(|e| EngineError::ort(&model.name, e))?,
                Placement::Cpu { reason: None },
            ),
        };
        let Built {
            session,
            nodes,
            compiled,
        } = built;
        tracing::info!(
            model = %model.name,
            ms = started.elapsed().as_millis() as u64,
            ?placement,
            nodes = %nodes.as_ref().map(|n| n.to_string()).unwrap_or_default(),
            compiled = compiled.map_or("", CacheUse::describe),
            "session ready"
        );
        let release = self.arena_release(&model, &placement);
        let info = Arc::new(SessionInfo::new(&model.name, &placement, bytes));
        info.set_build_report(nodes, compiled);
        let session = Arc::new(Mutex::new(EngineSession::new(
            session,
            model,
            info.clone(),
            self.faults.clone(),
            release,
        )));
        self.lock_cache().note_alive(info, &session);
        Ok(session)
    }

    /// Takes `model`'s session out of the cache: it ends when its last holder lets it go, and
    /// the next [`Engine::session`] for `model` creates a new one. For a large job, which
    /// needs the memory of a network it is done with more than the next job needs the time.
    pub fn forget(&self, model: &CompiledModel) {
        let key = identity(model);
        let mut cache = self.lock_cache();
        let before = cache.entries.len();
        cache.entries.retain(|e| e.key != key);
        if cache.entries.len() < before {
            tracing::info!(model = %model.name, "a large job sets this session aside");
        }
    }

    /// The names of every session alive now, whether the cache or a network holds it, in the
    /// order they were created; one that fell back from an accelerator says so.
    pub fn held_sessions(&self) -> Vec<String> {
        let mut cache = self.lock_cache();
        cache.prune();
        cache
            .alive
            .iter()
            .map(|(info, _)| match info.fell_back() {
                true => format!("{} (on the CPU)", info.name),
                false => match info.build_report() {
                    Some(report) => format!("{} [{report}]", info.name),
                    None => info.name.clone(),
                },
            })
            .collect()
    }

    /// What each session alive now reported when it was built: its node placement and how it
    /// used the compiled-model cache (accelerated sessions only), by model name.
    pub fn session_reports(&self) -> Vec<(String, Option<NodePlacement>, Option<CacheUse>)> {
        let mut cache = self.lock_cache();
        cache.prune();
        cache
            .alive
            .iter()
            .map(|(info, _)| {
                let (nodes, compiled) = info.build_facts();
                (info.name.clone(), nodes, compiled)
            })
            .collect()
    }

    /// Drops the cached sessions that no network holds any more (the models a new job no
    /// longer selects) and returns how many were freed. Callers drop their networks first.
    pub fn release_unused(&self) -> usize {
        let mut cache = self.lock_cache();
        let before = cache.entries.len();
        cache.entries.retain(|e| {
            let keep = Arc::strong_count(&e.session) > 1;
            if !keep {
                tracing::info!(model = %e.info.name, "freeing a session no job uses");
            }
            keep
        });
        before - cache.entries.len()
    }

    /// How many sessions the cache holds now.
    pub fn cached_sessions(&self) -> usize {
        self.lock_cache().entries.len()
    }

    /// The first accelerator sessions are built for, if any passed its probe.
    fn accelerator(&self) -> Option<ExecutionProvider> {
        self.providers
            .iter()
            .copied()
            .find(|ep| ep.is_accelerator())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, SessionCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets cached sessions aside, least recently used first and only those no network
    /// holds, until one of `bytes` more fits the budget.
    fn make_room(&self, bytes: u64) {
        let Some(limit) = self.budget else {
            return;
        };
        let mut cache = self.lock_cache();
        cache.prune();
        let held: u64 = cache
            .alive
            .iter()
            .filter(|(info, _)| self.budgeted(info))
            .map(|(info, _)| info.bytes())
            .sum();
        let cached: Vec<budget::Cached> = cache
            .entries
            .iter()
            .map(|e| budget::Cached {
                bytes: if self.budgeted(&e.info) {
                    e.info.bytes()
                } else {
                    0
                },
                in_use: Arc::strong_count(&e.session) > 1,
            })
            .collect();
        let aside = budget::set_aside(&cached, held, bytes, limit);
        let freed: u64 = aside.iter().map(|&i| cached[i].bytes).sum();
        for &i in aside.iter().rev() {
            let entry = cache.entries.remove(i);
            tracing::info!(model = %entry.info.name, "set aside to stay within the VRAM budget");
        }
        if held + bytes - freed.min(held) > limit {
            tracing::warn!(
                "the sessions in use need about {} MiB with the next one, over the budget of {} MiB",
                (held + bytes - freed.min(held)) >> 20,
                limit >> 20
            );
        }
    }

    /// Builds `model`'s sessions again on the CPU, in place (every holder gets the new one),
    /// after the accelerator ran out of memory for it.
    pub fn move_to_cpu(&self, model: &str) -> Result<(), EngineError> {
        let targets: Vec<SharedSession> = {
            let mut cache = self.lock_cache();
            cache.prune();
            cache
                .alive
                .iter()
                .filter(|(info, _)| info.name == model && info.on_accelerator())
                .filter_map(|(_, weak)| weak.upgrade())
                .collect()
        };
        for shared in targets {
            let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
            let compiled = guard.model.clone();
            let session = self
                .build_session(&compiled, false)
                .map_err(|e| EngineError::ort(model, e))?
                .session;
            let reason = "it ran out of GPU memory".to_owned();
            let placement = Placement::Cpu {
                reason: Some(reason),
            };
            let release = self.arena_release(&compiled, &placement);
            guard.replace(session, placement, release);
            tracing::info!(model, "moved to the CPU");
        }
        Ok(())
    }
}

impl Recovery for Engine {
    fn on_accelerator(&self, model: &str) -> bool {
        let mut cache = self.lock_cache();
        cache.prune();
        cache
            .alive
            .iter()
            .any(|(info, _)| info.name == model && info.on_accelerator())
    }

    fn move_to_cpu(&self, model: &str) -> Result<(), EngineError> {
        Engine::move_to_cpu(self, model)
    }

    fn warn(&self, text: String) {
        self.notices.raise(text);
    }
}

impl Engine {
    /// Whether `model`'s sessions keep ONNX Runtime's CPU arena, when built for the CPU
    /// (`accelerated` false) or an accelerator.
    pub(super) fn cpu_arena_for(&self, model: &CompiledModel, accelerated: bool) -> bool {
        self.cpu_arena || (!accelerated && model.cpu_memory == CpuMemory::ArenaPerCall)
    }

    /// What a session of `model` placed per `placement` gives back at the end of its calls.
    fn arena_release(&self, model: &CompiledModel, placement: &Placement) -> ArenaRelease {
        match placement {
            Placement::Accelerator(ExecutionProvider::Cuda { device_id }) => {
                shrink_options(&format!("gpu:{device_id}"))
                    .map_or(ArenaRelease::Never, ArenaRelease::OnNewShapes)
            }
            // With `engine.cpu_arena` every session keeps its arena.
            Placement::Cpu { .. }
                if !self.cpu_arena && model.cpu_memory == CpuMemory::ArenaPerCall =>
            {
                shrink_options("cpu:0").map_or(ArenaRelease::Never, ArenaRelease::EveryCall)
            }
            _ => ArenaRelease::Never,
        }
    }
}

/// Run options that shrink the arenas of `devices` (e.g. `gpu:0`) at the end of a call.
fn shrink_options(devices: &str) -> Option<ort::session::RunOptions> {
    let mut options = ort::session::RunOptions::new().ok()?;
    options
        .set("memory.enable_memory_arena_shrinkage", devices)
        .ok()?;
    Some(options)
}

/// CUDA device `device_id`'s name and memory, from NVML (for `tessera doctor`).
pub fn cuda_device_memory(device_id: i32) -> Result<DeviceMemory, String> {
    nvml::Nvml::open()?.memory(device_id.max(0) as u32)
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
