"""Byte-exact encoding and decoding of messages, and framing.

The encoding is bincode 2's ``config::legacy()`` through serde, as the Rust
crate uses it: little-endian fixed-width integers, ``u64`` lengths before
strings, byte strings and sequences, ``u32`` enum tags, ``u8`` 0/1 for
``bool`` and for ``Option`` (then the value), IEEE 754 floats, struct fields in
order with no padding. A frame is a ``u32`` little-endian payload length, then
the payload (one message). ``docs/protocol.md`` specifies it all.

Decoding is strict: a bad tag, bad UTF-8, a non-0/1 bool or option byte, a
length larger than what is left of the payload, a truncated payload or
trailing bytes raise :class:`~tessera_client.ProtocolError` before anything
large is allocated. The one leniency is :class:`ErrorKind`: a tag newer than
this module decodes as a plain ``int``, because kinds are only ever appended.
"""

import enum
import struct
from typing import Any, Callable, List, Union

from .errors import ConnectionClosed, ProtocolError
from .messages import (
    DEFAULT_MAX_FRAME_BYTES,
    MESSAGE_TYPES,
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
)

__all__ = [
    "decode",
    "encode",
    "encode_frame",
    "read_frame",
    "read_payload",
    "write_frame",
]

BytesLike = Union[bytes, bytearray, memoryview]

# --- The schema: every struct's fields in wire order -------------------------

# Primitive wire types.
U8, U32, U64, F32, F64, BOOL, STR, BYTES = "u8", "u32", "u64", "f32", "f64", "bool", "str", "bytes"


class _Option:
    def __init__(self, inner: Any) -> None:
        self.inner = inner


class _Seq:
    def __init__(self, inner: Any) -> None:
        self.inner = inner


_ERROR_INFO_FIELDS = (("kind", ErrorKind), ("message", STR))

_FIELDS = {
    Image: (
        ("width", U32),
        ("height", U32),
        ("channels", Channels),
        ("sample", SampleFormat),
        ("transfer", Transfer),
        ("data", BYTES),
    ),
    LoraWeight: (("name", STR), ("weight", F32)),
    JobParams: (
        ("scale", F32),
        ("upscaler", _Option(STR)),
        ("preset", Preset),
        ("creativity", F32),
        ("resemblance", F32),
        ("dynamic", F32),
        ("tile_width", U32),
        ("tile_height", U32),
        ("steps", U32),
        ("seed", U64),
        ("prompt", STR),
        ("negative_prompt", STR),
        ("sampler", Sampler),
        ("decay", F32),
        ("multistep_factor", F32),
        ("checkpoint", _Option(STR)),
        ("vae", _Option(STR)),
        ("controlnet", _Option(STR)),
        ("loras", _Seq(LoraWeight)),
        ("sharpen", F32),
        ("preview", _Option(Region)),
    ),
    Region: (("x", U32), ("y", U32), ("width", U32), ("height", U32)),
    ErrorInfo: _ERROR_INFO_FIELDS,
    StageTiming: (("name", STR), ("seconds", F64)),
    DeviceMemory: (("device", STR), ("total_bytes", U64), ("free_bytes", U64)),
    WarmUp: (
        ("loading", STR),
        ("done", U32),
        ("parts", U32),
        ("seconds", F32),
        ("error", STR),
    ),
    ModelEntry: (
        ("kind", ModelKind),
        ("name", STR),
        ("file", STR),
        ("size", U64),
        ("sha256", _Option(STR)),
    ),
    # Messages.
    Handshake: (("protocol_version", U32), ("agent", STR)),
    Submit: (("request", U64), ("image", Image), ("params", JobParams)),
    Accepted: (("request", U64), ("job", U64), ("position", U32)),
    Rejected: (("request", U64), ("error", ErrorInfo)),
    Progress: (
        ("job", U64),
        ("stage", U32),
        ("stages", U32),
        ("phase", STR),
        ("step", U32),
        ("steps", U32),
        ("tile", U32),
        ("tiles", U32),
        ("fraction", F32),
        ("eta_seconds", _Option(F32)),
        ("warnings", _Seq(STR)),
    ),
    Done: (
        ("job", U64),
        ("image", Image),
        ("timings", _Seq(StageTiming)),
        ("warnings", _Seq(STR)),
    ),
    Failed: (("job", U64), ("error", ErrorInfo)),
    Cancel: (("job", U64),),
    GetStatus: (),
    Status: (
        ("daemon_version", STR),
        ("runtime", STR),
        ("device", STR),
        ("running", _Option(U64)),
        ("running_fraction", F32),
        ("queued", U32),
        ("clients", U32),
        ("data_dir", STR),
        ("sessions", _Seq(STR)),
        ("resident_bytes", U64),
        ("warnings", _Seq(STR)),
        ("device_memory", _Option(DeviceMemory)),
        ("session_budget_bytes", _Option(U64)),
        ("session_bytes", U64),
        ("warm_up", _Option(WarmUp)),
        ("running_eta_seconds", _Option(F32)),
    ),
    ListModels: (("hashes", BOOL),),
    Models: (("models", _Seq(ModelEntry)),),
    Shutdown: (),
    ShuttingDown: (),
    Error: _ERROR_INFO_FIELDS,
}

_INT_RANGES = {U8: 0xFF, U32: 0xFFFF_FFFF, U64: 0xFFFF_FFFF_FFFF_FFFF}
_STRUCTS = {
    U8: struct.Struct("<B"),
    U32: struct.Struct("<I"),
    U64: struct.Struct("<Q"),
    F32: struct.Struct("<f"),
    F64: struct.Struct("<d"),
}
_PACK_U32 = _STRUCTS[U32].pack
_PACK_U64 = _STRUCTS[U64].pack

# Bytes read per allocation step while a payload arrives.
_READ_CHUNK = 8 << 20

# --- Encoding ---------------------------------------------------------------


def _encode_value(out: List[BytesLike], ty: Any, value: Any, where: str) -> None:
    if ty in _INT_RANGES:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{where}: expected an int, not {value!r}")
        if not 0 <= value <= _INT_RANGES[ty]:
            raise ValueError(f"{where}: {value} is out of range for {ty}")
        out.append(_STRUCTS[ty].pack(value))
    elif ty is F32 or ty is F64:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{where}: expected a float, not {value!r}")
        try:
            out.append(_STRUCTS[ty].pack(value))
        except (OverflowError, struct.error) as e:
            raise ValueError(f"{where}: {value!r} does not fit in an {ty}: {e}") from None
    elif ty is BOOL:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected a bool, not {value!r}")
        out.append(b"\x01" if value else b"\x00")
    elif ty is STR:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a str, not {value!r}")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where}: not encodable as UTF-8: {e}") from None
        out.append(_PACK_U64(len(raw)))
        out.append(raw)
    elif ty is BYTES:
        try:
            view = memoryview(value)
        except TypeError:
            raise TypeError(f"{where}: expected bytes, not {type(value).__name__}") from None
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        out.append(_PACK_U64(view.nbytes))
        out.append(view)
    elif isinstance(ty, _Option):
        if value is None:
            out.append(b"\x00")
        else:
            out.append(b"\x01")
            _encode_value(out, ty.inner, value, where)
    elif isinstance(ty, _Seq):
        items = list(value)
        out.append(_PACK_U64(len(items)))
        for index, item in enumerate(items):
            _encode_value(out, ty.inner, item, f"{where}[{index}]")
    elif isinstance(ty, type) and issubclass(ty, enum.IntEnum):
        _encode_enum(out, ty, value, where)
    else:
        if not isinstance(value, ty):
            raise TypeError(f"{where}: expected {ty.__name__}, not {value!r}")
        _encode_fields(out, ty, value, where)


def _encode_enum(out: List[BytesLike], ty: Any, value: Any, where: str) -> None:
    if isinstance(value, enum.Enum) and not isinstance(value, ty):
        raise TypeError(f"{where}: expected a {ty.__name__}, not {value!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{where}: expected a {ty.__name__}, not {value!r}")
    if ty is ErrorKind:
        # Kinds are append-only: pass on one this module does not know.
        _encode_value(out, U32, int(value), where)
        return
    try:
        tag = ty(value)
    except ValueError:
        raise ValueError(f"{where}: {value} is not a {ty.__name__}") from None
    out.append(_PACK_U32(int(tag)))


def _encode_fields(out: List[BytesLike], ty: Any, value: Any, where: str) -> None:
    for name, field_ty in _FIELDS[ty]:
        _encode_value(out, field_ty, getattr(value, name), where + "." + name)


def encode_parts(message: Message) -> List[BytesLike]:
    """The payload of ``message`` as a list of byte strings to be sent in
    order; image data is passed through uncopied."""
    ty = type(message)
    if ty not in _FIELDS or ty not in MESSAGE_TYPES:
        raise TypeError(f"not a message: {message!r}")
    out: List[BytesLike] = [_PACK_U32(ty.TAG)]
    _encode_fields(out, ty, message, ty.__name__)
    return out


def encode(message: Message) -> bytes:
    """The frame payload of ``message`` (without the length prefix)."""
    return b"".join(encode_parts(message))


def _framed_parts(message: Message) -> List[BytesLike]:
    parts = encode_parts(message)
    length = sum(memoryview(p).nbytes for p in parts)
    if length > 0xFFFF_FFFF:
        raise ValueError(f"a message of {length} bytes exceeds the 4 GiB frame limit")
    parts.insert(0, _PACK_U32(length))
    return parts


def encode_frame(message: Message) -> bytes:
    """The whole frame of ``message``: ``u32`` LE payload length, payload."""
    return b"".join(_framed_parts(message))


# --- Decoding ---------------------------------------------------------------


class _Reader:
    __slots__ = ("view", "pos")

    def __init__(self, payload: BytesLike) -> None:
        view = memoryview(payload)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self.view = view
        self.pos = 0

    def left(self) -> int:
        return len(self.view) - self.pos

    def take(self, n: int, where: str) -> memoryview:
        if n > self.left():
            raise ProtocolError(
                f"{where}: needs {n} bytes but only {self.left()} are left in the payload"
            )
        start = self.pos
        self.pos += n
        return self.view[start : self.pos]

    def unpack(self, ty: str, where: str) -> Any:
        s = _STRUCTS[ty]
        return s.unpack(self.take(s.size, where))[0]


def _shortest_f32(raw: bytes) -> float:
    """The ``f32`` in ``raw`` as the shortest decimal that is the same ``f32`` (what Rust
    prints): ``0.35`` rather than ``0.3499999940395355``, so that a value a caller gave
    compares equal after a round trip. It encodes back to exactly ``raw``."""
    value = _STRUCTS[F32].unpack(raw)[0]
    if value != value or value in (float("inf"), float("-inf")):
        return value
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if _STRUCTS[F32].pack(short) == raw:
            return short
    return value


def _decode_value(r: _Reader, ty: Any, where: str) -> Any:
    if ty is F32:
        return _shortest_f32(bytes(r.take(4, where)))
    if ty in _STRUCTS:
        return r.unpack(ty, where)
    if ty is BOOL:
        byte = r.unpack(U8, where)
        if byte > 1:
            raise ProtocolError(f"{where}: {byte} is not a bool (0 or 1)")
        return byte == 1
    if ty is STR:
        raw = _decode_bytes(r, where)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{where}: invalid UTF-8: {e}") from None
    if ty is BYTES:
        return bytes(_decode_bytes(r, where))
    if isinstance(ty, _Option):
        flag = r.unpack(U8, where)
        if flag == 0:
            return None
        if flag != 1:
            raise ProtocolError(f"{where}: {flag} is not an Option tag (0 or 1)")
        return _decode_value(r, ty.inner, where)
    if isinstance(ty, _Seq):
        count = r.unpack(U64, where)
        # Every element takes at least one byte: refuse a count that cannot fit.
        if count > r.left():
            raise ProtocolError(
                f"{where}: {count} elements cannot fit in the {r.left()} bytes left"
            )
        return [_decode_value(r, ty.inner, f"{where}[{i}]") for i in range(count)]
    if isinstance(ty, type) and issubclass(ty, enum.IntEnum):
        tag = r.unpack(U32, where)
        try:
            return ty(tag)
        except ValueError:
            if ty is ErrorKind:
                return tag
            raise ProtocolError(f"{where}: unknown {ty.__name__} tag {tag}") from None
    return _decode_fields(r, ty, where)


def _decode_bytes(r: _Reader, where: str) -> memoryview:
    length = r.unpack(U64, where)
    return r.take(length, where)


def _decode_fields(r: _Reader, ty: Any, where: str) -> Any:
    values = [_decode_value(r, field_ty, where + "." + name) for name, field_ty in _FIELDS[ty]]
    return ty(*values)


def decode(payload: BytesLike) -> Message:
    """Decodes one frame payload, which must hold exactly one message."""
    r = _Reader(payload)
    tag = r.unpack(U32, "message tag")
    if tag >= len(MESSAGE_TYPES):
        raise ProtocolError(f"unknown message tag {tag}")
    ty = MESSAGE_TYPES[tag]
    message = _decode_fields(r, ty, ty.__name__)
    if r.left():
        raise ProtocolError(f"{r.left()} unexpected bytes after the message")
    return message


# --- Framing ----------------------------------------------------------------


def _reader_of(stream: Any) -> Callable[[memoryview], int]:
    """A function that reads some bytes into a buffer, returning how many
    (0 at the end of the stream), for a socket or a binary file."""
    if hasattr(stream, "recv_into"):
        return stream.recv_into
    if hasattr(stream, "readinto"):

        def readinto(buf: memoryview) -> int:
            n = stream.readinto(buf)
            if n is None:
                raise BlockingIOError("the stream has no data ready (non-blocking)")
            return n

        return readinto

    def read(buf: memoryview) -> int:
        data = stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    return read


def _read_full(read_into: Callable[[memoryview], int], buf: memoryview) -> int:
    """Fills ``buf``; returns how many bytes arrived before the end of stream."""
    filled = 0
    while filled < len(buf):
        try:
            n = read_into(buf[filled:])
        except InterruptedError:
            continue
        if not n:
            break
        filled += n
    return filled


def read_payload(stream: Any, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytearray:
    """Reads one frame from a socket or binary file and returns its payload.

    The length prefix is checked against ``max_bytes`` before anything is
    allocated, and the payload is allocated in bounded chunks as it arrives.
    Raises :class:`ConnectionClosed` if the stream ends cleanly before the
    frame, :class:`ProtocolError` if it ends inside it or the prefix exceeds
    ``max_bytes`` (kind ``FRAME_TOO_LARGE``).
    """
    read_into = _reader_of(stream)
    prefix = bytearray(4)
    got = _read_full(read_into, memoryview(prefix))
    if got == 0:
        raise ConnectionClosed("the connection was closed")
    if got < 4:
        raise ProtocolError(f"the connection ended inside a frame ({got} of 4 bytes of its length)")
    (length,) = _STRUCTS[U32].unpack(prefix)
    if length > max_bytes:
        raise ProtocolError(
            f"a frame of {length} bytes exceeds the maximum of {max_bytes} bytes",
            kind=ErrorKind.FRAME_TOO_LARGE,
        )
    payload = bytearray(min(length, _READ_CHUNK))
    filled = 0
    while True:
        with memoryview(payload) as view:
            filled += _read_full(read_into, view[filled:])
        if filled < len(payload):
            raise ProtocolError(
                f"the connection ended inside a frame ({4 + filled} of {4 + length} bytes)"
            )
        if filled == length:
            return payload
        payload += bytes(min(length - filled, _READ_CHUNK))


def read_frame(stream: Any, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Reads and decodes one frame; see :func:`read_payload`."""
    return decode(read_payload(stream, max_bytes))


def write_all(stream: Any, parts: List[BytesLike]) -> None:
    """Writes byte strings in order to a socket or binary file, then flushes."""
    if hasattr(stream, "sendall"):
        for part in parts:
            stream.sendall(part)
        return
    for part in parts:
        view = memoryview(part)
        while len(view):
            n = stream.write(view)
            view = view[len(view) if n is None else n :]
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


def write_frame(stream: Any, message: Message) -> None:
    """Encodes ``message`` and writes it as one frame to a socket or binary file."""
    parts = _framed_parts(message)
    # Coalesce the small parts so that a frame costs few system calls.
    batched: List[BytesLike] = []
    small: List[BytesLike] = []
    for part in parts:
        if memoryview(part).nbytes < 64 * 1024:
            small.append(part)
        else:
            if small:
                batched.append(b"".join(small))
                small = []
            batched.append(part)
    if small:
        batched.append(b"".join(small))
    write_all(stream, batched)
