"""A stand-in for CPython's ``_winapi`` module, enough of it for the named-pipe
transport (``tessera_client.transport._PipeStream``) to run on a machine
without Windows: named pipes are Unix sockets registered by name, and
overlapped reads and writes keep the documented contract (``ReadFile`` and
``WriteFile`` return ``(overlapped, error)``, ``ERROR_IO_PENDING`` until the
event is signalled, ``GetOverlappedResult`` returns ``(n, error)`` with
``ERROR_BROKEN_PIPE`` for a read at the end of the stream and
``ERROR_OPERATION_ABORTED`` after ``cancel``; failures raise ``OSError`` with
``winerror``).

The real module is exercised only on Windows; what this one checks is the
transport's own logic: busy pipes and missing ones, timeouts, cancelling on
close, chunking and end-of-stream.
"""

import itertools
import select
import socket
import threading
from typing import Dict, List, Optional, Tuple

GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
NULL = 0
OPEN_EXISTING = 3
FILE_FLAG_OVERLAPPED = 0x40000000

ERROR_FILE_NOT_FOUND = 2
ERROR_BROKEN_PIPE = 109
ERROR_SEM_TIMEOUT = 121
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 258

PIPE_PREFIX = "\\\\.\\pipe\\"


def winerror(code: int, text: str) -> OSError:
    error = OSError(0, text)
    error.winerror = code  # type: ignore[attr-defined]
    return error


class Overlapped:
    """One overlapped operation on a stand-in pipe."""

    def __init__(self, winapi: "FakeWinapi", sock: socket.socket, size: int, data: bytes) -> None:
        self.event = next(winapi._ids)
        self._sock = sock
        self._size = size
        self._data = data
        self._done = False
        self._aborted = False
        self._eof = False
        self._result = b""
        self._written = 0

    # -- reads
    def _try_read(self, timeout: float) -> bool:
        if self._done:
            return True
        try:
            ready, _, _ = select.select([self._sock], [], [], timeout)
        except (OSError, ValueError):
            # The socket was closed under us: like a handle closed mid-read.
            self._eof = True
            self._done = True
            return True
        if not ready:
            return False
        try:
            self._result = self._sock.recv(self._size)
        except OSError:
            self._result = b""
        self._eof = not self._result
        self._done = True
        return True

    def cancel(self) -> None:
        if not self._done:
            self._aborted = True
            self._done = True

    def GetOverlappedResult(self, wait: bool) -> Tuple[int, int]:  # noqa: N802 - Win32 name
        if self._aborted:
            return 0, ERROR_OPERATION_ABORTED
        if self._size:
            while not self._try_read(0.05 if wait else 0):
                if not wait:
                    raise winerror(996, "ERROR_IO_INCOMPLETE")
            if self._eof:
                return 0, ERROR_BROKEN_PIPE
            return len(self._result), 0
        return self._written, 0

    def getbuffer(self) -> bytes:
        return self._result


class FakeWinapi:
    """A ``_winapi`` whose named pipes are Unix sockets (see ``pipes``)."""

    GENERIC_READ = GENERIC_READ
    GENERIC_WRITE = GENERIC_WRITE
    NULL = NULL
    OPEN_EXISTING = OPEN_EXISTING
    FILE_FLAG_OVERLAPPED = FILE_FLAG_OVERLAPPED

    def __init__(self) -> None:
        self._ids = itertools.count(100)
        #: Pipe name (without ``\\.\pipe\``) → the Unix socket serving it.
        self.pipes: Dict[str, str] = {}
        #: Pipe name → how many more opens answer ERROR_PIPE_BUSY.
        self.busy: Dict[str, int] = {}
        #: (pipe name, timeout in ms) of each WaitNamedPipe call.
        self.waits: List[Tuple[str, int]] = []
        #: The size of each WriteFile call.
        self.writes: List[int] = []
        self.closed: List[int] = []
        self._handles: Dict[int, socket.socket] = {}
        self._pending: Dict[int, Overlapped] = {}
        self._lock = threading.Lock()

    def _name(self, path: str) -> str:
        assert path.startswith(PIPE_PREFIX), path
        return path[len(PIPE_PREFIX) :]

    def CreateFile(  # noqa: N802 - Win32 name
        self,
        path: str,
        access: int,
        share: int,
        security: int,
        disposition: int,
        flags: int,
        template: int,
    ) -> int:
        assert access == GENERIC_READ | GENERIC_WRITE
        assert disposition == OPEN_EXISTING and flags & FILE_FLAG_OVERLAPPED
        name = self._name(path)
        if name not in self.pipes:
            raise winerror(ERROR_FILE_NOT_FOUND, "The system cannot find the file specified.")
        if self.busy.get(name, 0) > 0:
            self.busy[name] -= 1
            raise winerror(ERROR_PIPE_BUSY, "All pipe instances are busy.")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.pipes[name])
        handle = next(self._ids)
        self._handles[handle] = sock
        return handle

    def WaitNamedPipe(self, path: str, timeout: int) -> None:  # noqa: N802 - Win32 name
        name = self._name(path)
        self.waits.append((name, timeout))
        if name not in self.pipes:
            raise winerror(ERROR_FILE_NOT_FOUND, "The system cannot find the file specified.")
        if self.busy.get(name, 0) > 1_000:
            raise winerror(ERROR_SEM_TIMEOUT, "The semaphore timeout period has expired.")

    def _sock(self, handle: int) -> socket.socket:
        try:
            return self._handles[handle]
        except KeyError:
            raise winerror(6, "The handle is invalid.") from None

    def ReadFile(self, handle: int, size: int, overlapped: bool) -> Tuple[Overlapped, int]:  # noqa: N802
        assert overlapped and size > 0
        ov = Overlapped(self, self._sock(handle), size, b"")
        self._pending[ov.event] = ov
        return ov, 0 if ov._try_read(0) else ERROR_IO_PENDING

    def WriteFile(self, handle: int, data, overlapped: bool) -> Tuple[Overlapped, int]:  # noqa: N802
        assert overlapped
        chunk = bytes(data)
        self.writes.append(len(chunk))
        try:
            self._sock(handle).sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            raise winerror(ERROR_NO_DATA, "The pipe is being closed.") from None
        ov = Overlapped(self, self._sock(handle), 0, chunk)
        ov._written = len(chunk)
        ov._done = True
        return ov, 0

    def WaitForMultipleObjects(self, events, wait_all: bool, milliseconds: int) -> int:  # noqa: N802
        (event,) = events
        ov = self._pending[event]
        return WAIT_OBJECT_0 if ov._try_read(milliseconds / 1000) else WAIT_TIMEOUT

    def CloseHandle(self, handle: int) -> None:  # noqa: N802 - Win32 name
        self.closed.append(handle)
        sock: Optional[socket.socket] = self._handles.pop(handle, None)
        if sock is not None:
            sock.close()
