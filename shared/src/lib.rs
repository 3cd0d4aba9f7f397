//! Tessera's wire protocol, shared by the daemon, the CLI and (mirrored in
//! `python/tessera_client`) the editor plug-ins, with the local socket's client side
//! (`socket`) and the blocking Rust client (`client`).
//!
//! A connection is a stream of frames; each frame is a little-endian `u32`
//! payload length followed by one [`Message`] encoded with bincode's legacy
//! configuration (fixed-width little-endian integers, `u64` lengths, `u32` enum
//! tags). The format is specified in `docs/protocol.md` and frozen by the
//! golden vectors in `shared/golden/`, which both the Rust and the Python tests
//! decode and re-encode byte for byte. Changing any type here changes the wire
//! format: bump [`PROTOCOL_VERSION`] and regenerate the golden files.

pub mod client;
pub mod error;
pub mod frame;
pub mod image;
pub mod message;
pub mod params;
pub mod paths;
pub mod socket;

pub use error::{ErrorInfo, ErrorKind};
pub use frame::{DEFAULT_MAX_FRAME_BYTES, FrameError, decode, encode, read_frame, write_frame};
pub use image::{Channels, Image, ImageError, SampleFormat, Transfer};
pub use message::{
    Accepted, DeviceMemory, Done, Failed, Handshake, JobId, Message, ModelEntry, ModelKind,
    ModelList, Progress, Rejected, StageTiming, Status, Submit, WarmUp,
};
pub use params::{JobParams, LoraWeight, Preset, Region, Sampler};

/// Version of the wire format. Both sides send it in their [`Handshake`]; a
/// daemon answers a different version with [`ErrorKind::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 4;
