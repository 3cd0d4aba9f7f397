"""Tessera's wire protocol and a blocking client for its daemon, in plain
Python (standard library only, Python 3.8+), for the Krita and GIMP plug-ins
and for tests.

- :mod:`.messages`: the message types, mirroring the Rust crate
  ``tessera-protocol``.
- :mod:`.codec`: byte-exact encoding, decoding and blocking framing.
- :mod:`.framing`: framing without I/O: :class:`FrameReader` is fed bytes in
  pieces of any size and gives whole messages, :func:`frame_parts` gives the
  bytes to write.
- :mod:`.session`: :class:`Session`, one connection's protocol (handshake,
  routing of answers and job events) without I/O or threads.
- :mod:`.paths`: where the daemon's socket is.
- :mod:`.launcher`: finding the ``tessera`` program and starting
  ``tessera serve`` when no daemon answers.
- :mod:`.installed`: the models in a data directory, read from disk as the
  daemon reads them (for when no daemon runs).
- :mod:`.client`: :class:`Client`, a blocking connection: a reader thread
  feeds a :class:`Session`; callers wait in their own threads.

The Krita plug-in drives :class:`FrameReader` and :class:`Session` from Qt's
event loop; the GIMP plug-in, the tests and scripts use :class:`Client`.

The wire format is specified in ``docs/protocol.md`` and frozen by the golden
vectors in ``shared/golden/``.
"""

from . import launcher as launcher
from . import params_table as params_table
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
from .framing import FrameReader, frame_parts
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
from .session import JobTicket, Session

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
    "FrameReader",
    "GetStatus",
    "Handshake",
    "Image",
    "Job",
    "JobParams",
    "JobTicket",
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
    "Session",
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
    "frame_parts",
    "list_installed",
    "read_frame",
    "read_payload",
    "socket_address",
    "write_frame",
]
