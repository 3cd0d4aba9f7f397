//! Building one ONNX Runtime session for a model: the session options every network gets, the
//! execution providers with their options for this model (`providers.rs`, `plugins.rs`), the
//! model's folder in the compiled-model cache for a provider that compiles (`compiled.rs`), and
//! the node placement read from the session's own log (`node_placement.rs`).

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use super::runtime::one_line;
use super::{
    CacheUse, CompiledModel, ConvSearch, Engine, EpSettings, ExecutionProvider, NodePlacement,
    PrecisionHint, budget, compiled, node_placement, providers,
};

/// A session just built, with what its build reported.
pub(super) struct Built {
    pub session: Session,
    /// Which provider runs which nodes (sessions built on an accelerator).
    pub nodes: Option<NodePlacement>,
    /// How the build used the compiled-model cache (providers that compile).
    pub compiled: Option<CacheUse>,
}

impl Engine {
    /// Builds `model`'s ONNX Runtime session, on the accelerators when `accelerated`, else on
    /// the CPU alone. On an accelerator the session's node placement is read from its log, and
    /// a provider that compiles gets its folder in the compiled-model cache.
    pub(super) fn build_session(
        &self,
        model: &CompiledModel,
        accelerated: bool,
    ) -> Result<Built, String> {
        let text = |e: &dyn std::fmt::Display| one_line(&e.to_string());
        if accelerated && self.faults.faults.breaks_build(&model.name) {
            return Err("injected fault (TESSERA_FAULTS=build)".into());
        }
        let folder = model
            .weights_folder
            .to_str()
            .ok_or("the weights folder path is not valid UTF-8")?;
        let err = |e: ort::Error<SessionBuilder>| text(&e);
        let mut builder = Session::builder(&self.runtime.env)
            .map_err(|e| text(&e))?
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
            &ort::ep::CPU::default().with_arena_allocator(self.cpu_arena_for(model, accelerated)),
            &mut builder,
        )
        .map_err(|e| text(&e))?;
        let mut report = None;
        let mut compiled = None;
        if accelerated {
            // The simulated accelerator of the fault tests is the CPU provider: nothing to say.
            if self.accelerator() != Some(ExecutionProvider::Simulated) {
                let (logger, lines) = node_placement::capture(&model.name);
                builder = builder
                    .with_logger(logger)
                    .map_err(err)?
                    .with_log_level(ort::logging::LogLevel::Verbose)
                    .map_err(err)?;
                report = Some(lines);
            }
            let mut settings = EpSettings {
                conv_search: ConvSearch::for_model(&model.name),
                memory_limit: self.budget,
                graph_fp16: budget::stores_f16(&model.onnx),
                hint: self.precision_hint,
                compiled_cache: None,
                threads: self.threads,
            };
            for ep in self.providers.iter().filter(|ep| ep.is_accelerator()) {
                if compiled.is_none()
                    && let Some(entry) = self.compiled_entry(model, *ep)
                {
                    settings.compiled_cache = Some(entry.dir.clone());
                    compiled = Some(entry);
                }
                providers::register(&self.runtime, &mut builder, *ep, &settings)?;
                settings.compiled_cache = None;
            }
        }
        let session = builder
            .commit_from_memory(&model.onnx)
            .map_err(|e| text(&e))?;
        let nodes = report.map(|lines| {
            let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
            NodePlacement::parse(lines.iter().map(String::as_str))
        });
        Ok(Built {
            session,
            nodes: nodes.filter(|n| !n.is_empty()),
            compiled: compiled.map(|entry| entry.outcome()),
        })
    }

    /// The compiled-model cache folder for `model` on `ep`, when `ep` compiles.
    fn compiled_entry(
        &self,
        model: &CompiledModel,
        ep: ExecutionProvider,
    ) -> Option<compiled::CacheEntry> {
        let (provider, version, device) = match ep {
            ExecutionProvider::Plugin(p) if p.provider.compiles() => {
                let device = self.plugin_devices.iter().find(|d| d.ep == p)?;
                let kind = p.config_name();
                let mut device_name = kind.split_once(':').map_or("device", |(_, d)| d).to_owned();
                // A CPU device compiles per precision hint: one folder each.
                if p.on_cpu() && self.precision_hint != PrecisionHint::Graph {
                    device_name.push_str(&format!("-{:?}", self.precision_hint).to_lowercase());
                }
                (
                    p.provider.config_name().to_owned(),
                    device.provider_version.clone(),
                    device_name,
                )
            }
            ExecutionProvider::CoreMl => (
                "coreml".to_owned(),
                self.runtime.version.clone(),
                "all".to_owned(),
            ),
            _ => return None,
        };
        let root = compiled::root(&self.data_dir);
        compiled::entry(
            &root,
            model,
            &self.runtime.version,
            &provider,
            &version,
            &device,
        )
        .map_err(|e| tracing::warn!("the compiled-model cache cannot be used: {e}"))
        .ok()
    }
}
