//! One warm session as the engine hands it out: ONNX Runtime's session plus what the engine
//! needs to keep a job alive around it — where it runs and why, what it is estimated to hold,
//! the model it was built from (to build it again on the CPU), and the hooks every call goes
//! through: injected faults (`faults.rs`) and the arena given back at the end of a call (after a
//! call of a new shape on an accelerator; after every call of a VAE on the CPU).
//!
//! It dereferences to [`ort::session::Session`], so networks use it as they would ONNX
//! Runtime's; its own [`EngineSession::run`] and [`EngineSession::run_binding`] shadow
//! `Session`'s.

use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use ort::session::{
    IoBinding, RunOptions, Session, SessionInputValue, SessionInputs, SessionOutputs,
};
use ort::value::ValueType;

use super::faults::FaultState;
use super::{CompiledModel, ExecutionProvider, SessionInfo};

/// Where a session runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On this accelerator (ONNX Runtime places what it cannot run there on the CPU).
    Accelerator(ExecutionProvider),
    /// On the CPU; `reason` says why, when an accelerator was configured.
    Cpu { reason: Option<String> },
}

impl Placement {
    pub fn is_accelerator(&self) -> bool {
        matches!(self, Placement::Accelerator(_))
    }
}

/// What a session gives back of its memory arenas at the end of a call.
pub(super) enum ArenaRelease {
    /// Nothing: a CPU session without an arena, or one that keeps it (`engine.cpu_arena`).
    Never,
    /// An accelerator's arena: a call of new shapes grew it for them, so it gives the growth
    /// back at its end; calls that repeat shapes reuse it.
    OnNewShapes(RunOptions),
    /// A CPU arena held for one call ([`super::CpuMemory::ArenaPerCall`]): every call.
    EveryCall(RunOptions),
}

/// A session and the engine's facts about it (see the module docs).
pub struct EngineSession {
    session: Session,
    pub(super) model: Arc<CompiledModel>,
    /// Where it runs and what it is estimated to hold, readable without this session's lock.
    info: Arc<SessionInfo>,
    faults: Arc<FaultState>,
    release: ArenaRelease,
    /// The input shapes of the last call (for [`ArenaRelease::OnNewShapes`]).
    last_shapes: u64,
}

impl EngineSession {
    pub(super) fn new(
        session: Session,
        model: Arc<CompiledModel>,
        info: Arc<SessionInfo>,
        faults: Arc<FaultState>,
        release: ArenaRelease,
    ) -> EngineSession {
        EngineSession {
            session,
            model,
            info,
            faults,
            release,
            last_shapes: 0,
        }
    }

    /// The model's name, e.g. `UNet+ControlNet juggernaut_reborn.safetensors`.
    pub fn name(&self) -> &str {
        &self.model.name
    }

    pub fn placement(&self) -> Placement {
        self.info.placement()
    }

    pub(super) fn info(&self) -> &Arc<SessionInfo> {
        &self.info
    }

    /// Runs the session as [`Session::run`] does. On an accelerator the call first passes the
    /// injected faults. The call gives its arena back at its end (ONNX Runtime's
    /// `memory.enable_memory_arena_shrinkage`) per [`ArenaRelease`], so that a one-off large
    /// call (a VAE pass, an edge tile) does not keep its activations.
    pub fn run<'s, 'i, 'v: 'i, const N: usize>(
        &'s mut self,
        input_values: impl Into<SessionInputs<'i, 'v, N>>,
    ) -> ort::Result<SessionOutputs<'s>> {
        let inputs = input_values.into();
        self.info.note_run();
        if self.info.on_accelerator()
            && let Err(message) = self.faults.before_accelerated_call(&self.model.name)
        {
            return Err(ort::Error::new(message));
        }
        match (
            self.releases_after(|| shape_signature(&inputs)),
            &self.release,
        ) {
            (true, ArenaRelease::EveryCall(options) | ArenaRelease::OnNewShapes(options)) => {
                self.session.run_with_options(inputs, options)
            }
            _ => self.session.run(inputs),
        }
    }

    /// Whether a call gives the arena back at its end; `shapes` (a signature of its input
    /// shapes) is asked for only where that depends on them.
    fn releases_after(&mut self, shapes: impl FnOnce() -> u64) -> bool {
        match self.release {
            ArenaRelease::EveryCall(_) => true,
            ArenaRelease::OnNewShapes(_) => {
                let shapes = shapes();
                std::mem::replace(&mut self.last_shapes, shapes) != shapes
            }
            ArenaRelease::Never => false,
        }
    }

    /// Runs an I/O binding as [`Session::run_binding`] does, through the same hooks as
    /// [`EngineSession::run`]; `shapes` is a signature of the bound inputs' shapes (see
    /// `binding.rs`), for the arena shrinkage.
    pub fn run_binding<'b>(
        &'b mut self,
        binding: &'b IoBinding,
        shapes: u64,
    ) -> ort::Result<SessionOutputs<'b>> {
        self.info.note_run();
        if self.info.on_accelerator()
            && let Err(message) = self.faults.before_accelerated_call(&self.model.name)
        {
            return Err(ort::Error::new(message));
        }
        match (self.releases_after(|| shapes), &self.release) {
            (true, ArenaRelease::EveryCall(options) | ArenaRelease::OnNewShapes(options)) => {
                self.session.run_binding_with_options(binding, options)
            }
            _ => self.session.run_binding(binding),
        }
    }

    /// Puts `session` in place of this one's (same model), now running per `placement`.
    pub(super) fn replace(
        &mut self,
        session: Session,
        placement: Placement,
        release: ArenaRelease,
    ) {
        self.session = session;
        self.info.set_placement(placement);
        self.release = release;
        self.last_shapes = 0;
    }
}

impl Deref for EngineSession {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

impl DerefMut for EngineSession {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// A hash of the inputs' element types and shapes.
fn shape_signature<const N: usize>(inputs: &SessionInputs<'_, '_, N>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut add = |v: &SessionInputValue<'_>| {
        if let ValueType::Tensor { ty, shape, .. } = v.dtype() {
            format!("{ty:?}").hash(&mut h);
            shape.iter().for_each(|d| d.hash(&mut h));
        }
    };
    match inputs {
        SessionInputs::ValueMap(values) => values.iter().for_each(|(_, v)| add(v)),
        SessionInputs::ValueSlice(values) => values.iter().for_each(&mut add),
        SessionInputs::ValueArray(values) => values.iter().for_each(&mut add),
    }
    h.finish().max(1)
}
