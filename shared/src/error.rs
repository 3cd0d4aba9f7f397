//! Typed errors that travel over the wire: every failure a client can see has
//! a stable [`ErrorKind`] (for code) and a human sentence (for people).

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a stable code. New kinds are only ever appended, so
/// that the numeric tags of the existing ones never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// A frame or message that does not follow the protocol (bad bytes, a
    /// truncated frame, a message that is not valid at this point).
    Protocol,
    /// The two sides speak different protocol versions.
    VersionMismatch,
    /// A frame's length prefix exceeds the configured maximum.
    FrameTooLarge,
    /// The submitted image is malformed (size and byte count disagree, zero
    /// width or height, unsupported layout).
    InvalidImage,
    /// A job parameter is out of range or inconsistent.
    InvalidParams,
    /// A model named by the job is not in the data directory.
    ModelNotFound,
    /// A model file exists but cannot be used (corrupt, truncated, foreign
    /// pickle content, unknown architecture).
    ModelInvalid,
    /// The ONNX Runtime library is missing, of the wrong version, or failed
    /// while running a network.
    Runtime,
    /// The job was cancelled, by its client or because its client went away.
    Cancelled,
    /// A cancel named a job that is neither queued nor running.
    UnknownJob,
    /// The queue already holds the configured maximum number of jobs.
    QueueFull,
    /// This client already has the configured maximum number of jobs queued.
    TooManyJobs,
    /// The image (input or output) exceeds the configured maximum size.
    ImageTooLarge,
    /// The daemon is shutting down and takes no new work.
    ShuttingDown,
    /// A file could not be read or written (disk full, permissions).
    Io,
    /// A bug: the daemon hit a state it did not expect. The log has details.
    Internal,
    /// The daemon already serves the configured maximum number of connections; this one is
    /// answered with this error and closed.
    TooManyConnections,
}

impl ErrorKind {
    /// A short, stable, kebab-case name, used in logs and by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::VersionMismatch => "version-mismatch",
            ErrorKind::FrameTooLarge => "frame-too-large",
            ErrorKind::InvalidImage => "invalid-image",
            ErrorKind::InvalidParams => "invalid-params",
            ErrorKind::ModelNotFound => "model-not-found",
            ErrorKind::ModelInvalid => "model-invalid",
            ErrorKind::Runtime => "runtime",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::UnknownJob => "unknown-job",
            ErrorKind::QueueFull => "queue-full",
            ErrorKind::TooManyJobs => "too-many-jobs",
            ErrorKind::ImageTooLarge => "image-too-large",
            ErrorKind::ShuttingDown => "shutting-down",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::TooManyConnections => "too-many-connections",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error as it travels over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    /// One or two plain sentences for the user, saying what to do where possible.
    pub message: String,
}

impl ErrorInfo {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
