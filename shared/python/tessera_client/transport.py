"""Byte streams to the daemon: a Unix domain socket, or on Windows a named
pipe opened for overlapped I/O (so that one thread can read while another
writes, which a synchronous pipe handle would serialise).

Both offer what :mod:`~tessera_client.codec`'s framing needs: ``recv_into``,
``sendall``, ``settimeout`` (reads only), and ``close``, which also wakes a
thread blocked in ``recv_into``.
"""

import socket
import threading
import time
from typing import Any, Optional

from .errors import ConnectionClosed, DaemonNotRunning
from .paths import MAX_UNIX_SOCKET_PATH, SocketAddress

__all__ = ["connect"]


def connect(address: SocketAddress, timeout: Optional[float] = 5.0) -> Any:
    """Opens a stream to the daemon at ``address``.

    Raises :class:`DaemonNotRunning` when nothing listens there (no socket
    file or pipe, or a stale socket file).
    """
    if address.is_pipe:
        return _PipeStream.open(address, timeout)
    return _connect_unix(address, timeout)


class _UnixStream:
    """A connected ``AF_UNIX`` socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False

    def recv_into(self, buf: memoryview) -> int:
        try:
            return self._sock.recv_into(buf)
        except socket.timeout:
            raise TimeoutError("the daemon did not answer in time") from None
        except OSError:
            if self._closed:
                return 0
            raise

    def sendall(self, data: Any) -> None:
        self._sock.sendall(data)

    def settimeout(self, timeout: Optional[float]) -> None:
        self._sock.settimeout(timeout)

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _connect_unix(address: SocketAddress, timeout: Optional[float]) -> _UnixStream:
    path = address.name
    if not hasattr(socket, "AF_UNIX"):
        raise ConnectionError(f"this Python has no Unix sockets to reach {path}")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_UNIX_SOCKET_PATH:
        raise ConnectionError(
            f"the socket path {path} is longer than the {MAX_UNIX_SOCKET_PATH} bytes "
            "the OS allows; set TESSERA_SOCKET to a shorter path"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise DaemonNotRunning(path) from None
    except ConnectionRefusedError:
        sock.close()
        raise DaemonNotRunning(path, "the socket file is stale") from None
    except socket.timeout:
        sock.close()
        raise TimeoutError(f"connecting to {path} timed out") from None
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return _UnixStream(sock)


# --- Windows named pipes -----------------------------------------------------

_ERROR_FILE_NOT_FOUND = 2
_ERROR_BROKEN_PIPE = 109
_ERROR_SEM_TIMEOUT = 121
_ERROR_PIPE_BUSY = 231
_ERROR_NO_DATA = 232
_ERROR_PIPE_NOT_CONNECTED = 233
_ERROR_OPERATION_ABORTED = 995
_ERROR_IO_PENDING = 997
_EOF_ERRORS = (_ERROR_BROKEN_PIPE, _ERROR_NO_DATA, _ERROR_PIPE_NOT_CONNECTED)
_WAIT_OBJECT_0 = 0
# How often a blocked read or write looks whether the stream was closed.
_POLL_MS = 100
_PIPE_CHUNK = 1 << 20


class _PipeStream:
    """A named pipe handle opened with ``FILE_FLAG_OVERLAPPED``, driven
    through CPython's ``_winapi`` (as :mod:`multiprocessing` does). Tested on a
    stand-in ``_winapi`` (``shared/python/tests/test_pipe_transport.py``)."""

    def __init__(self, handle: int) -> None:
        self._handle = handle
        self._timeout: Optional[float] = None
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, address: SocketAddress, timeout: Optional[float]) -> "_PipeStream":
        import _winapi  # type: ignore[import-not-found]

        path = str(address)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                handle = _winapi.CreateFile(
                    path,
                    _winapi.GENERIC_READ | _winapi.GENERIC_WRITE,
                    0,
                    _winapi.NULL,
                    _winapi.OPEN_EXISTING,
                    _winapi.FILE_FLAG_OVERLAPPED,
                    _winapi.NULL,
                )
                return cls(handle)
            except OSError as e:
                winerror = getattr(e, "winerror", None)
                if winerror == _ERROR_FILE_NOT_FOUND:
                    raise DaemonNotRunning(path) from None
                if winerror != _ERROR_PIPE_BUSY:
                    raise
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"every instance of {path} stayed busy") from None
                try:
                    _winapi.WaitNamedPipe(path, 1000 if left is None else max(1, int(left * 1000)))
                except OSError as wait_error:
                    if getattr(wait_error, "winerror", None) == _ERROR_FILE_NOT_FOUND:
                        raise DaemonNotRunning(path) from None
                    if getattr(wait_error, "winerror", None) != _ERROR_SEM_TIMEOUT:
                        raise

    def settimeout(self, timeout: Optional[float]) -> None:
        self._timeout = timeout

    def _wait(self, ov: Any, timeout: Optional[float]) -> None:
        """Waits for a pending operation; cancels it on close or timeout."""
        import _winapi  # type: ignore[import-not-found]

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if _winapi.WaitForMultipleObjects([ov.event], False, _POLL_MS) == _WAIT_OBJECT_0:
                return
            closed = self._closed.is_set()
            if closed or (deadline is not None and time.monotonic() >= deadline):
                ov.cancel()
                try:
                    ov.GetOverlappedResult(True)
                except OSError:
                    pass
                if closed:
                    raise ConnectionClosed("the connection was closed")
                raise TimeoutError("the daemon did not answer in time")

    def recv_into(self, buf: memoryview) -> int:
        import _winapi  # type: ignore[import-not-found]

        if self._closed.is_set():
            return 0
        try:
            ov, err = _winapi.ReadFile(self._handle, min(len(buf), _PIPE_CHUNK), overlapped=True)
            if err == _ERROR_IO_PENDING:
                try:
                    self._wait(ov, self._timeout)
                except ConnectionClosed:
                    return 0
            _, err = ov.GetOverlappedResult(True)
        except OSError as e:
            if getattr(e, "winerror", None) in _EOF_ERRORS or self._closed.is_set():
                return 0
            raise
        if err == _ERROR_OPERATION_ABORTED:
            return 0
        data = ov.getbuffer()
        buf[: len(data)] = data
        return len(data)

    def sendall(self, data: Any) -> None:
        import _winapi  # type: ignore[import-not-found]

        view = memoryview(data).cast("B")
        while len(view):
            if self._closed.is_set():
                raise ConnectionClosed("the connection was closed")
            chunk = view[:_PIPE_CHUNK]
            try:
                ov, err = _winapi.WriteFile(self._handle, chunk, overlapped=True)
                if err == _ERROR_IO_PENDING:
                    self._wait(ov, None)
                written, err = ov.GetOverlappedResult(True)
            except OSError as e:
                if getattr(e, "winerror", None) in _EOF_ERRORS:
                    raise BrokenPipeError("the daemon closed the pipe") from None
                raise
            if err == _ERROR_OPERATION_ABORTED:
                raise ConnectionClosed("the connection was closed")
            view = view[written:]

    def close(self) -> None:
        import _winapi  # type: ignore[import-not-found]

        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        # Give a blocked reader or writer one poll to see the flag and cancel.
        time.sleep(2 * _POLL_MS / 1000)
        try:
            _winapi.CloseHandle(self._handle)
        except OSError:
            pass
