"""Frames without I/O: bytes go in as they arrive, in pieces of any size (a
``QLocalSocket``'s ``readyRead``, a ``recv`` loop), and messages come out
whole; frames to write come out as byte strings for whatever writes them.

The codec (:func:`~.codec.decode`, :func:`~.codec.encode_parts`) does the
bytes of a message; this module only cuts the stream into frames, checking
each length prefix before allocating, and builds frames to write without
copying an image's pixels more than once. :func:`~.codec.read_frame` and
:func:`~.codec.write_frame` are the blocking counterparts for a socket.
"""

import struct
from typing import List, Optional

from .codec import decode, encode_parts
from .errors import ProtocolError
from .messages import ErrorKind

_PREFIX = struct.Struct("<I")

#: The largest frame read from the daemon by default: anything a ``u32``
#: prefix can say (a big result may exceed what the daemon itself accepts).
MAX_FRAME_FROM_DAEMON = 0xFFFF_FFFF


class FrameReader:
    """Reassembles frames from pieces of a byte stream.

    ``feed(data)`` returns the messages completed by ``data``, in order, and
    raises :class:`ProtocolError` for a frame longer than ``max_bytes`` (as
    soon as its prefix is seen) or a payload that does not decode.
    """

    def __init__(self, max_bytes: int = MAX_FRAME_FROM_DAEMON) -> None:
        self.max_bytes = max_bytes
        self._prefix = bytearray()
        self._payload: Optional[bytearray] = None
        self._filled = 0

    @property
    def pending(self) -> int:
        """Bytes received of a frame that is not complete yet."""
        if self._payload is None:
            return len(self._prefix)
        return 4 + self._filled

    @property
    def expected(self) -> Optional[int]:
        """The whole length of the frame in progress, once its prefix is known."""
        return None if self._payload is None else 4 + len(self._payload)

    def feed(self, data: bytes) -> List[object]:
        messages: List[object] = []
        view = memoryview(data)
        while len(view):
            if self._payload is None:
                need = 4 - len(self._prefix)
                self._prefix += view[:need]
                view = view[need:]
                if len(self._prefix) < 4:
                    break
                (length,) = _PREFIX.unpack(self._prefix)
                self._prefix = bytearray()
                if length > self.max_bytes:
                    raise ProtocolError(
                        f"a frame of {length} bytes exceeds the maximum of {self.max_bytes} bytes",
                        kind=ErrorKind.FRAME_TOO_LARGE,
                    )
                if length == 0:
                    raise ProtocolError("an empty frame (every message has a tag)")
                # Allocated once the prefix is known: the daemon is trusted (same user).
                self._payload = bytearray(length)
                self._filled = 0
            take = min(len(view), len(self._payload) - self._filled)
            self._payload[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == len(self._payload):
                payload = self._payload
                self._payload = None
                messages.append(decode(payload))
        return messages


def frame_parts(message: object) -> List[bytes]:
    """The frame of ``message`` as byte strings to write in order: the length
    prefix, the small fields joined, and any image data passed through as it
    is (one copy, when it is written)."""
    parts = encode_parts(message)
    length = sum(memoryview(p).nbytes for p in parts)
    if length > 0xFFFF_FFFF:
        raise ValueError(f"a message of {length} bytes exceeds the 4 GiB frame limit")
    out: List[bytes] = []
    small = [_PREFIX.pack(length)]
    for part in parts:
        if memoryview(part).nbytes >= 64 * 1024:
            out.append(b"".join(small))
            small = []
            out.append(part)
        else:
            small.append(bytes(part))
    if small:
        out.append(b"".join(small))
    return out
