"""Exceptions raised by the client.

- :class:`TesseraError` carries an :class:`~tessera_client.ErrorKind` and the
  daemon's sentence: a ``Rejected`` submission, a ``Failed`` job or an
  ``Error`` message; also an image refused before sending it.
- :class:`ProtocolError` (a ``TesseraError`` of kind ``PROTOCOL`` or
  ``FRAME_TOO_LARGE``) is malformed or oversized data from the other side.
- :class:`DaemonNotRunning` and :class:`ConnectionClosed` are
  ``ConnectionError`` subclasses: no daemon listens at the socket, or the
  connection ended.
"""

from typing import Optional

from .messages import ErrorInfo, ErrorKind, error_kind_name


class TesseraError(Exception):
    """An error with a stable kind, e.g. ``TesseraError(ErrorKind.QUEUE_FULL, "…")``.

    ``kind`` is an :class:`ErrorKind`, or a plain ``int`` for a kind appended
    by a daemon newer than this module.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    @property
    def kind_name(self) -> str:
        """The kind's kebab-case name, e.g. ``"queue-full"``."""
        return error_kind_name(self.kind)

    @classmethod
    def from_info(cls, info: ErrorInfo) -> "TesseraError":
        return cls(info.kind, info.message)

    def __str__(self) -> str:
        return f"{self.kind_name}: {self.message}"


class ProtocolError(TesseraError):
    """Bytes that do not follow the protocol: a bad tag, bad UTF-8, a
    truncated or oversized frame, trailing bytes, a message out of place."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.PROTOCOL) -> None:
        super().__init__(kind, message)


class DaemonNotRunning(ConnectionError):
    """Nothing listens at the daemon's socket (it is absent, or stale)."""

    def __init__(self, address: str, reason: Optional[str] = None) -> None:
        text = f"the Tessera daemon is not running (nothing listens at {address})"
        if reason:
            text += ": " + reason
        text += "; start it with `tessera serve`"
        super().__init__(text)
        self.address = address


class ConnectionClosed(ConnectionError):
    """The connection to the daemon ended (cleanly between frames, or not)."""
