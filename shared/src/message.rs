//! The messages of the protocol. Field order is wire order: reordering,
//! inserting or retyping a field is a protocol change.
//!
//! A client opens a connection and sends [`Message::Handshake`]; the daemon
//! answers with its own handshake (or an [`Message::Error`] and closes). After
//! that the client may send [`Message::Submit`], [`Message::Cancel`],
//! [`Message::GetStatus`], [`Message::ListModels`] and [`Message::Shutdown`] in
//! any order and at any time, and the daemon sends replies and job events as
//! they happen. Every accepted job ends with exactly one [`Message::Done`] or
//! [`Message::Failed`].

use crate::error::ErrorInfo;
use crate::image::Image;
use crate::params::JobParams;
use serde::{Deserialize, Serialize};

/// A job number, unique for the life of one daemon process.
pub type JobId = u64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message in each direction.
    Handshake(Handshake),
    /// Client → daemon: queue an image for upscaling.
    Submit(Submit),
    /// Daemon → client: the submission with this `request` number is queued.
    Accepted(Accepted),
    /// Daemon → client: the submission with this `request` number was refused.
    Rejected(Rejected),
    /// Daemon → client: a job advanced (sent after every network call).
    Progress(Progress),
    /// Daemon → client: a job finished; carries the result.
    Done(Done),
    /// Daemon → client: a job ended without a result (including cancellation).
    Failed(Failed),
    /// Client → daemon: drop a queued job or stop a running one at its next
    /// network call. The job then ends with `Failed` of kind `Cancelled`.
    Cancel { job: JobId },
    /// Client → daemon: ask for a [`Message::Status`].
    GetStatus,
    /// Daemon → client: the daemon's state.
    Status(Status),
    /// Client → daemon: ask for the models in the data directory;
    /// `hashes` asks for the SHA-256 of each file (slow the first time).
    ListModels { hashes: bool },
    /// Daemon → client: the answer to `ListModels`.
    Models(ModelList),
    /// Client → daemon: finish, cancelling every job, and exit.
    Shutdown,
    /// Daemon → client: the acknowledgement of `Shutdown`, also sent to every
    /// connected client when the daemon stops for any reason.
    ShuttingDown,
    /// Daemon → client: an error that concerns the connection rather than a
    /// job (bad frame, wrong version, unknown job in `Cancel`). Kinds
    /// `Protocol`, `VersionMismatch` and `FrameTooLarge` close the connection.
    Error(ErrorInfo),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    pub protocol_version: u32,
    /// Who is speaking, for the logs: e.g. "tessera 0.1.0" or "krita-plugin 0.1.0".
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    /// Chosen by the client and echoed in `Accepted`/`Rejected`, so that a
    /// client with several submissions in flight can tell the answers apart.
    pub request: u64,
    pub image: Image,
    pub params: JobParams,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub request: u64,
    pub job: JobId,
    /// Jobs that run before this one, the running job included: 0 means it
    /// starts at once.
    pub position: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub request: u64,
    pub error: ErrorInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub job: JobId,
    /// Zero-based index of the current stage, out of `stages`.
    pub stage: u32,
    pub stages: u32,
    /// What the stage is doing now: "upscale", "encode", "denoise", "decode", …
    pub phase: String,
    /// Step within the phase (1-based once work has started), out of `steps`.
    pub step: u32,
    pub steps: u32,
    /// Tile within the step (1-based), out of `tiles`.
    pub tile: u32,
    pub tiles: u32,
    /// Fraction of the whole job done, 0 to 1, never decreasing.
    pub fraction: f32,
    /// Estimated seconds until the job is done; `None` until there is a basis for it.
    pub eta_seconds: Option<f32>,
    /// Every warning the job has had so far, oldest first (a network moved to the CPU, a
    /// call retried with smaller tiles): the list only grows, so a client shows the ones
    /// it has not shown yet, and nothing is lost when progress events are coalesced.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub job: JobId,
    /// The result, in the input's channel layout, sample format and transfer.
    pub image: Image,
    /// Wall-clock seconds spent in each part of the job, in order.
    pub timings: Vec<StageTiming>,
    /// Every warning the job had, oldest first (as in [`Progress::warnings`]).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub name: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub job: JobId,
    pub error: ErrorInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub daemon_version: String,
    /// ONNX Runtime version and library path, e.g. "1.32.0 (…/libonnxruntime.so.1.32.0)".
    pub runtime: String,
    /// The execution provider in use, e.g. "CPU" or "CUDA (NVIDIA H100)".
    pub device: String,
    /// The job on the engine, if any, and how far it is.
    pub running: Option<JobId>,
    pub running_fraction: f32,
    /// Jobs waiting behind the running one.
    pub queued: u32,
    /// Connected clients, this one included.
    pub clients: u32,
    /// The data directory the daemon uses.
    pub data_dir: String,
    /// The warm ONNX Runtime sessions the engine holds, e.g. "UNet+ControlNet juggernaut_reborn.safetensors".
    pub sessions: Vec<String>,
    /// The daemon's resident memory in bytes (0 where the platform does not say).
    pub resident_bytes: u64,
    /// What the daemon fell back from since it started, oldest first (at most 16): an
    /// execution provider dropped, a network moved to the CPU. Empty when all is well.
    pub warnings: Vec<String>,
    /// The accelerator's memory, where its driver says (CUDA through NVML).
    pub device_memory: Option<DeviceMemory>,
    /// The budget the warm sessions are held to, in bytes (`engine.vram_budget`); `None`:
    /// no budget (the CPU, unless one is configured).
    pub session_budget_bytes: Option<u64>,
    /// The estimated size of the sessions held now (weights and an allowance), in bytes.
    pub session_bytes: u64,
    /// The loading of the default model set that `tessera serve` starts as soon as it
    /// listens; `None` when this daemon runs none.
    pub warm_up: Option<WarmUp>,
    /// The running job's estimated seconds left (its last `Progress.eta_seconds`).
    pub running_eta_seconds: Option<f32>,
}

/// An accelerator's memory as its driver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// The device's name, e.g. "NVIDIA GeForce RTX 3070".
    pub device: String,
    pub total_bytes: u64,
    /// Free now, for every process on the device.
    pub free_bytes: u64,
}

/// How far the daemon's start-up warm-up is: the default model set compiled and its
/// sessions created in the background, so that the first job finds them warm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmUp {
    /// What it loads now, e.g. "UNet juggernaut_reborn.safetensors"; empty once it is over.
    pub loading: String,
    /// Parts loaded, out of `parts`.
    pub done: u32,
    pub parts: u32,
    /// Seconds since it began, or that it took once it is over.
    pub seconds: f32,
    /// Why it stopped before the end (a default model missing, a load failure); empty
    /// otherwise. A job loads what it needs either way.
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ModelKind {
    Checkpoint,
    Vae,
    ControlNet,
    Upscaler,
    Lora,
    Embedding,
}

impl ModelKind {
    pub const ALL: [ModelKind; 6] = [
        ModelKind::Checkpoint,
        ModelKind::Vae,
        ModelKind::ControlNet,
        ModelKind::Upscaler,
        ModelKind::Lora,
        ModelKind::Embedding,
    ];

    /// The folder under the data directory's `models/` that holds this kind.
    pub fn folder(self) -> &'static str {
        match self {
            ModelKind::Checkpoint => "checkpoints",
            ModelKind::Vae => "vae",
            ModelKind::ControlNet => "controlnet",
            ModelKind::Upscaler => "upscalers",
            ModelKind::Lora => "loras",
            ModelKind::Embedding => "embeddings",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub kind: ModelKind,
    /// The name to use in job parameters (file name without extension, or
    /// the folder name of a diffusers folder).
    pub name: String,
    /// Path relative to the data directory's `models/`.
    pub file: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the file, when asked for.
    pub sha256: Option<String>,
}
