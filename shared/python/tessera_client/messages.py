"""The protocol's types, mirroring the Rust crate ``tessera-protocol``.

Every Rust enum becomes an :class:`enum.IntEnum` whose values are the wire tags
(declaration order), and every struct and message a dataclass with the same
fields in the same (wire) order. ``Message::Cancel { job }`` becomes
``Cancel(job=...)``, the unit variants ``GetStatus``, ``Shutdown`` and
``ShuttingDown`` become field-less classes, and the newtype variants wrap
nothing: ``Message::Error(ErrorInfo)`` is :class:`Error` with ``kind`` and
``message``, ``Message::Models(ModelList)`` is :class:`Models` with ``models``.
``docs/protocol.md`` has the tables.
"""

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

from .params_table import DEFAULTS, REFINERS

#: Version of the wire format, sent in both handshakes.
PROTOCOL_VERSION = 4

#: Largest frame payload read by default (1 GiB), as in the Rust crate.
DEFAULT_MAX_FRAME_BYTES = 1 << 30


class ErrorKind(enum.IntEnum):
    """What went wrong, as a stable code. Kinds are only ever appended, so a
    daemon newer than this module may send a kind missing here: it then
    decodes as a plain ``int`` (see :func:`error_kind_name`)."""

    PROTOCOL = 0
    VERSION_MISMATCH = 1
    FRAME_TOO_LARGE = 2
    INVALID_IMAGE = 3
    INVALID_PARAMS = 4
    MODEL_NOT_FOUND = 5
    MODEL_INVALID = 6
    RUNTIME = 7
    CANCELLED = 8
    UNKNOWN_JOB = 9
    QUEUE_FULL = 10
    TOO_MANY_JOBS = 11
    IMAGE_TOO_LARGE = 12
    SHUTTING_DOWN = 13
    IO = 14
    INTERNAL = 15
    TOO_MANY_CONNECTIONS = 16

    def __str__(self) -> str:
        """The short, stable, kebab-case name (Rust's ``ErrorKind::name``)."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_name(cls, name: str) -> "ErrorKind":
        """The kind whose kebab-case name is ``name``, e.g. ``"queue-full"``."""
        try:
            return cls[name.upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"no error kind named {name!r}") from None


#: The kinds of :class:`Error` after which the daemon closes the connection.
CONNECTION_ERRORS = frozenset(
    {
        ErrorKind.PROTOCOL,
        ErrorKind.VERSION_MISMATCH,
        ErrorKind.FRAME_TOO_LARGE,
        ErrorKind.TOO_MANY_CONNECTIONS,
    }
)


def error_kind_name(kind: int) -> str:
    """The kebab-case name of a kind, or ``unknown-<tag>`` for one that this
    module does not know (appended by a newer daemon)."""
    try:
        return str(ErrorKind(kind))
    except ValueError:
        return f"unknown-{int(kind)}"


class Channels(enum.IntEnum):
    """Channel layout of one pixel, in memory order."""

    GRAY = 0
    GRAY_ALPHA = 1
    RGB = 2
    RGBA = 3
    #: Blue, green, red, alpha: Krita's integer RGBA layers, Qt's ARGB32.
    BGRA = 4

    @property
    def count(self) -> int:
        """Samples per pixel."""
        return (1, 2, 3, 4, 4)[self]

    @property
    def has_alpha(self) -> bool:
        return self in (Channels.GRAY_ALPHA, Channels.RGBA, Channels.BGRA)


class SampleFormat(enum.IntEnum):
    """Storage of one sample; multi-byte samples are little-endian."""

    U8 = 0
    U16 = 1
    #: IEEE 754 half precision (``struct`` format ``e``).
    F16 = 2
    F32 = 3

    @property
    def bytes(self) -> int:
        """Bytes per sample."""
        return (1, 2, 2, 4)[self]

    @property
    def struct_code(self) -> str:
        """The :mod:`struct` code of one sample (use with ``<``)."""
        return "BHef"[self]


class Transfer(enum.IntEnum):
    """How colour values encode light (alpha is always linear)."""

    SRGB = 0
    LINEAR = 1


class ModelKind(enum.IntEnum):
    CHECKPOINT = 0
    VAE = 1
    CONTROL_NET = 2
    UPSCALER = 3
    LORA = 4
    EMBEDDING = 5

    @property
    def folder(self) -> str:
        """The folder under the data directory's ``models/`` holding this kind."""
        return ("checkpoints", "vae", "controlnet", "upscalers", "loras", "embeddings")[self]


@dataclass(repr=False)
class Image:
    """``height`` rows of ``width`` pixels, row-major, channels interleaved, no
    row padding, straight (not premultiplied) alpha, little-endian samples.

    ``data`` may be given as any bytes-like object; it is kept as given
    (a ``memoryview`` is cast to unsigned bytes), and decoded images hold
    ``bytes``.
    """

    width: int
    height: int
    channels: Channels
    sample: SampleFormat
    transfer: Transfer
    data: Union[bytes, bytearray, memoryview]

    def __post_init__(self) -> None:
        if isinstance(self.data, memoryview) and (self.data.format != "B" or self.data.ndim != 1):
            self.data = self.data.cast("B")

    @property
    def pixel_bytes(self) -> int:
        return Channels(self.channels).count * SampleFormat(self.sample).bytes

    @property
    def pixel_count(self) -> int:
        return self.width * self.height

    def expected_len(self) -> int:
        """The byte count that the header calls for."""
        return self.pixel_count * self.pixel_bytes

    def validate(self, max_pixels: Optional[int] = None) -> None:
        """Raises :class:`~tessera_client.TesseraError` (``INVALID_IMAGE`` or
        ``IMAGE_TOO_LARGE``) unless the header and the bytes agree and the
        image has between 1 and ``max_pixels`` pixels, as the daemon checks."""
        from .errors import TesseraError

        if self.width <= 0 or self.height <= 0:
            raise TesseraError(
                ErrorKind.INVALID_IMAGE,
                f"the image is empty ({self.width}×{self.height} pixels)",
            )
        if max_pixels is not None and self.pixel_count > max_pixels:
            raise TesseraError(
                ErrorKind.IMAGE_TOO_LARGE,
                f"the image has {self.pixel_count} pixels, more than the maximum of {max_pixels}",
            )
        expected = self.expected_len()
        if len(self.data) != expected:
            raise TesseraError(
                ErrorKind.INVALID_IMAGE,
                f"a {self.width}×{self.height} {Channels(self.channels).name} "
                f"{SampleFormat(self.sample).name} image needs {expected} bytes "
                f"but has {len(self.data)}",
            )

    def __repr__(self) -> str:
        return (
            f"Image(width={self.width}, height={self.height}, "
            f"channels={_enum_repr(self.channels)}, sample={_enum_repr(self.sample)}, "
            f"transfer={_enum_repr(self.transfer)}, data=[{len(self.data)} bytes])"
        )


def _enum_repr(value: int) -> str:
    return f"{type(value).__name__}.{value.name}" if isinstance(value, enum.Enum) else str(value)


# Defaults come from params_table, which the Rust crate writes (shared/src/params.rs).
#: Clarity's default prompt: its quality words and its two LoRAs.
CLARITY_PROMPT: str = DEFAULTS["prompt"]
#: Clarity's default negative prompt: weighted quality words and its negative embedding.
CLARITY_NEGATIVE_PROMPT: str = DEFAULTS["negative_prompt"]
#: The Refiners library's default prompts.
REFINERS_PROMPT: str = REFINERS["prompt"]
REFINERS_NEGATIVE_PROMPT: str = REFINERS["negative_prompt"]


class Preset(enum.IntEnum):
    """Which pipeline runs, and by whose rules."""

    #: The Clarity upscaler (the default).
    CLARITY = 0
    #: The Refiners library's ``MultiUpscaler``.
    REFINERS = 1
    #: The upscaler alone: no diffusion, no SD models needed.
    UPSCALER = 2


class Sampler(enum.IntEnum):
    """The diffusion sampler and its noise schedule."""

    #: A1111 "DPM++ 3M SDE Karras" (Clarity's default).
    DPMPP_3M_SDE_KARRAS = 0
    #: A1111 "DPM++ 2M Karras".
    DPMPP_2M_KARRAS = 1
    #: DPM-Solver++ 2M on linear timesteps (Refiners' default).
    DPMPP_2M = 2
    #: DDIM (the Refiners Space's default).
    DDIM = 3


@dataclass
class LoraWeight:
    """A LoRA in ``models/loras/`` applied besides the prompt's tags."""

    name: str
    weight: float = 1.0


@dataclass
class JobParams:
    """What to do with the image. The defaults are Clarity's; see
    :meth:`refiners` and :meth:`upscaler_only` for the other presets, and
    ``docs/protocol.md`` for each field's range."""

    # Defaults and ranges: params_table (written by the Rust crate), see docs/protocol.md.
    #: Output size ÷ input size, per axis; 1 to 16.
    scale: float = DEFAULTS["scale"]
    #: A model in ``models/upscalers/`` (with or without extension); ``None``
    #: takes the daemon's default.
    upscaler: Optional[str] = DEFAULTS["upscaler"]
    preset: Preset = Preset(DEFAULTS["preset"])
    #: Denoising strength, 0 to 1; at 0 the Clarity preset still runs the VAE round trip and one
    #: evaluation at the last sigma (as A1111 does), the Refiners preset the upscaler alone.
    creativity: float = DEFAULTS["creativity"]
    #: ControlNet tile weight, 0 to 3.
    resemblance: float = DEFAULTS["resemblance"]
    #: Classifier-free guidance scale, 1 to 50.
    dynamic: float = DEFAULTS["dynamic"]
    #: Diffusion tile size in latents (8 px), 16 to 256, multiples of 8.
    tile_width: int = DEFAULTS["tile_width"]
    tile_height: int = DEFAULTS["tile_height"]
    #: Sampler steps of a full denoise, 1 to 100.
    steps: int = DEFAULTS["steps"]
    seed: int = DEFAULTS["seed"]
    prompt: str = CLARITY_PROMPT
    negative_prompt: str = CLARITY_NEGATIVE_PROMPT
    sampler: Sampler = Sampler(DEFAULTS["sampler"])
    #: ControlNet residual i is scaled by resemblance · decay^(12 − i); 0 to 1.
    decay: float = DEFAULTS["decay"]
    #: Creativity multiplier per extra ×2 stage, 0 to 2.
    multistep_factor: float = DEFAULTS["multistep_factor"]
    #: Models in ``models/checkpoints``, ``models/vae``, ``models/controlnet``;
    #: ``None`` takes the daemon's default.
    checkpoint: Optional[str] = DEFAULTS["checkpoint"]
    vae: Optional[str] = DEFAULTS["vae"]
    controlnet: Optional[str] = DEFAULTS["controlnet"]
    #: LoRAs besides the prompt's ``<lora:name:weight>`` tags.
    loras: List[LoraWeight] = field(default_factory=list)
    #: 3×3 sharpening of the result, 0 (off) to 10.
    sharpen: float = DEFAULTS["sharpen"]
    #: Only this rectangle of the result (a quick look at a region); ``None``: all of it.
    preview: Optional["Region"] = None

    @classmethod
    def refiners(cls, **changes: Any) -> "JobParams":
        """The Refiners library's ``MultiUpscaler`` defaults (its Space's seed)."""
        values: Dict[str, Any] = dict(REFINERS)
        values["preset"] = Preset(values["preset"])
        values["sampler"] = Sampler(values["sampler"])
        values.update(changes)
        return cls(**values)

    @classmethod
    def upscaler_only(cls, scale: float = 2.0, upscaler: Optional[str] = None) -> "JobParams":
        """The upscaler alone at ``scale``: no diffusion, no SD models."""
        return cls(scale=scale, upscaler=upscaler, preset=Preset.UPSCALER)


@dataclass
class ErrorInfo:
    """An error as it travels over the wire (inside ``Rejected`` and ``Failed``)."""

    #: An :class:`ErrorKind`, or a plain ``int`` for a kind newer than this module.
    kind: ErrorKind
    message: str


@dataclass
class Region:
    """A rectangle in pixels of the result: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int


@dataclass
class WarmUp:
    """How far the daemon's start-up loading of the default model set is."""

    #: What it loads now; empty once it is over.
    loading: str
    #: Parts loaded, out of ``parts``.
    done: int
    parts: int
    #: Seconds since it began, or that it took once it is over.
    seconds: float
    #: Why it stopped before the end; empty otherwise.
    error: str = ""


@dataclass
class StageTiming:
    name: str
    seconds: float


@dataclass
class ModelEntry:
    kind: ModelKind
    #: The name to use in job parameters.
    name: str
    #: Path relative to the data directory's ``models/``.
    file: str
    size: int
    #: Lower-case hex SHA-256, when asked for.
    sha256: Optional[str] = None


@dataclass
class DeviceMemory:
    """An accelerator's memory as its driver reports it (inside :class:`Status`)."""

    #: e.g. "NVIDIA GeForce RTX 3070".
    device: str
    total_bytes: int
    #: Free now, for every process on the device.
    free_bytes: int


# --- Messages, in tag order -------------------------------------------------


@dataclass
class Handshake:
    """First message in each direction."""

    TAG: ClassVar[int] = 0
    protocol_version: int
    #: Who is speaking, for the logs, e.g. ``"krita-plugin 0.1.0"``.
    agent: str


@dataclass
class Submit:
    """Client → daemon: queue an image for upscaling."""

    TAG: ClassVar[int] = 1
    #: Chosen by the client, echoed in ``Accepted``/``Rejected``.
    request: int
    image: Image
    params: JobParams = field(default_factory=JobParams)


@dataclass
class Accepted:
    """Daemon → client: the submission ``request`` is queued as ``job``."""

    TAG: ClassVar[int] = 2
    request: int
    job: int
    #: Jobs ahead of this one; 0: next or already running.
    position: int


@dataclass
class Rejected:
    """Daemon → client: the submission ``request`` was refused."""

    TAG: ClassVar[int] = 3
    request: int
    error: ErrorInfo


@dataclass
class Progress:
    """Daemon → client: a job advanced."""

    TAG: ClassVar[int] = 4
    job: int
    #: Zero-based stage index, out of ``stages``.
    stage: int
    stages: int
    #: "upscale", "encode", "denoise", "decode", …
    phase: str
    #: 1-based once work has started, out of ``steps``.
    step: int
    steps: int
    #: 1-based, out of ``tiles``.
    tile: int
    tiles: int
    #: Fraction of the whole job done, 0 to 1, never decreasing.
    fraction: float
    #: Estimated seconds left; ``None`` until there is a basis for it.
    eta_seconds: Optional[float] = None
    #: Every warning the job has had so far, oldest first (a network moved to the
    #: CPU, a call retried with smaller tiles). The list only grows: show the ones
    #: not shown yet (``Job.wait(on_warning=...)`` does).
    warnings: List[str] = field(default_factory=list)


@dataclass
class Done:
    """Daemon → client: a job finished with this result."""

    TAG: ClassVar[int] = 5
    job: int
    #: In the input's channel layout, sample format and transfer.
    image: Image
    timings: List[StageTiming] = field(default_factory=list)
    #: Every warning the job had, oldest first (as in :class:`Progress`).
    warnings: List[str] = field(default_factory=list)


@dataclass
class Failed:
    """Daemon → client: a job ended without a result (cancellation included)."""

    TAG: ClassVar[int] = 6
    job: int
    error: ErrorInfo


@dataclass
class Cancel:
    """Client → daemon: drop or stop a job; it then ends with ``Failed``."""

    TAG: ClassVar[int] = 7
    job: int


@dataclass
class GetStatus:
    """Client → daemon: ask for a :class:`Status`."""

    TAG: ClassVar[int] = 8


@dataclass
class Status:
    """Daemon → client: the daemon's state."""

    TAG: ClassVar[int] = 9
    daemon_version: str
    runtime: str
    device: str
    running: Optional[int]
    running_fraction: float
    queued: int
    clients: int
    data_dir: str
    #: The warm ONNX Runtime sessions the engine holds.
    sessions: List[str] = field(default_factory=list)
    #: The daemon's resident memory in bytes (0 where unknown).
    resident_bytes: int = 0
    #: What the daemon fell back from since it started, oldest first: an execution
    #: provider dropped, a network moved to the CPU. Empty when all is well.
    warnings: List[str] = field(default_factory=list)
    #: The accelerator's memory, where its driver says.
    device_memory: Optional[DeviceMemory] = None
    #: The budget warm sessions are held to, in bytes; ``None``: no budget.
    session_budget_bytes: Optional[int] = None
    #: Estimated size of the sessions held now, in bytes.
    session_bytes: int = 0
    #: The start-up warm-up of the default model set; ``None`` when the daemon runs none.
    warm_up: Optional["WarmUp"] = None
    #: The running job's estimated seconds left (its last ``Progress.eta_seconds``).
    running_eta_seconds: Optional[float] = None


@dataclass
class ListModels:
    """Client → daemon: ask for the models; ``hashes`` adds SHA-256s (slow once)."""

    TAG: ClassVar[int] = 10
    hashes: bool = False


@dataclass
class Models:
    """Daemon → client: the answer to :class:`ListModels` (Rust: ``Models(ModelList)``)."""

    TAG: ClassVar[int] = 11
    models: List[ModelEntry] = field(default_factory=list)


@dataclass
class Shutdown:
    """Client → daemon: cancel every job and exit."""

    TAG: ClassVar[int] = 12


@dataclass
class ShuttingDown:
    """Daemon → client: the daemon is stopping (also the answer to :class:`Shutdown`)."""

    TAG: ClassVar[int] = 13


@dataclass
class Error(ErrorInfo):
    """Daemon → client: an error about the connection rather than a job
    (Rust: ``Error(ErrorInfo)``). Kinds in :data:`CONNECTION_ERRORS` close it."""

    TAG: ClassVar[int] = 14


Message = Union[
    Handshake,
    Submit,
    Accepted,
    Rejected,
    Progress,
    Done,
    Failed,
    Cancel,
    GetStatus,
    Status,
    ListModels,
    Models,
    Shutdown,
    ShuttingDown,
    Error,
]

#: Message classes by wire tag.
MESSAGE_TYPES = (
    Handshake,
    Submit,
    Accepted,
    Rejected,
    Progress,
    Done,
    Failed,
    Cancel,
    GetStatus,
    Status,
    ListModels,
    Models,
    Shutdown,
    ShuttingDown,
    Error,
)
