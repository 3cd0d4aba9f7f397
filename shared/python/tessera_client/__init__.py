"""Tessera's wire protocol and a blocking client for its daemon, in plain
Python (standard library only, Python 3.8+), for the Krita and GIMP plug-ins
and for tests.

- :mod:`.messages`: the message types, mirroring the Rust crate
  ``tessera-protocol``.
- :mod:`.codec`: byte-exact encoding, decoding and framing.
- :mod:`.paths`: where the daemon's socket is.
- :mod:`.installed`: the models in a data directory, read from disk as the
  daemon reads them (for when no daemon runs).
- :mod:`.client`: :class:`Client`, which connects, shakes hands, submits
  jobs and routes their events.

The wire format is specified in ``docs/protocol.md`` and frozen by the golden
vectors in ``shared/golden/``.
"""

from .client import Client, Job
from .codec import (
    decode,
    encode,
    encode_frame,
    encode_parts,
    read_frame,
    read_payload,
    write_frame,
)
from .errors import ConnectionClosed, DaemonNotRunning, ProtocolError, TesseraError
from .installed import list_installed
from .messages import (
    CLARITY_NEGATIVE_PROMPT,
    CLARITY_PROMPT,
    CONNECTION_ERRORS,
    DEFAULT_MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REFINERS_NEGATIVE_PROMPT,
    REFINERS_PROMPT,
    Accepted,
    Cancel,
    Channels,
    DeviceMemory,
    Done,
    Error,
    ErrorInfo,
    ErrorKind,
    Failed,
    GetStatus,
    Handshake,
    Image,
    JobParams,
    ListModels,
    LoraWeight,
    Message,
    ModelEntry,
    ModelKind,
    Models,
    Preset,
    Progress,
    Region,
    Rejected,
    SampleFormat,
    Sampler,
    Shutdown,
    ShuttingDown,
    StageTiming,
    Status,
    Submit,
    Transfer,
    WarmUp,
    error_kind_name,
)
from .paths import DataDir, SocketAddress, data_dir, socket_address

__version__ = "0.1.0"

__all__ = [
    "CLARITY_NEGATIVE_PROMPT",
    "CLARITY_PROMPT",
    "CONNECTION_ERRORS",
    "DEFAULT_MAX_FRAME_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REFINERS_NEGATIVE_PROMPT",
    "REFINERS_PROMPT",
    "Accepted",
    "Cancel",
    "Channels",
    "Client",
    "ConnectionClosed",
    "DaemonNotRunning",
    "DataDir",
    "DeviceMemory",
    "Done",
    "Error",
    "ErrorInfo",
    "ErrorKind",
    "Failed",
    "GetStatus",
    "Handshake",
    "Image",
    "Job",
    "JobParams",
    "ListModels",
    "LoraWeight",
    "Message",
    "ModelEntry",
    "ModelKind",
    "Models",
    "Preset",
    "Progress",
    "ProtocolError",
    "Region",
    "Rejected",
    "SampleFormat",
    "Sampler",
    "Shutdown",
    "ShuttingDown",
    "SocketAddress",
    "StageTiming",
    "Status",
    "Submit",
    "TesseraError",
    "Transfer",
    "WarmUp",
    "data_dir",
    "decode",
    "encode",
    "encode_frame",
    "encode_parts",
    "error_kind_name",
    "list_installed",
    "read_frame",
    "read_payload",
    "socket_address",
    "write_frame",
]
