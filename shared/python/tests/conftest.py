"""Fixtures for the protocol tests: the golden folder, and a scripted fake
daemon on a real Unix socket for testing the client without the daemon."""

import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from tessera_client import (
    PROTOCOL_VERSION,
    Handshake,
    Message,
    SocketAddress,
    read_frame,
    write_frame,
)
from tessera_client.errors import ConnectionClosed

GOLDEN = Path(__file__).resolve().parents[2] / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


def golden(name: str) -> bytes:
    """The bytes of ``shared/golden/<name>.bin``: one whole frame."""
    return (GOLDEN / (name + ".bin")).read_bytes()


@pytest.fixture(scope="session")
def read_golden() -> Callable[[str], bytes]:
    return golden


class Peer:
    """The daemon's end of one connection, driven by a test's script."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        #: Every message the client sent, in order.
        self.received: List[Message] = []

    def recv(self) -> Message:
        message = read_frame(self.sock)
        self.received.append(message)
        return message

    def expect(self, kind: type) -> Message:
        message = self.recv()
        assert isinstance(message, kind), message
        return message

    def send(self, message: Message) -> None:
        write_frame(self.sock, message)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake(self, agent: str = "tessera test-daemon") -> Handshake:
        hello = self.expect(Handshake)
        self.send(Handshake(PROTOCOL_VERSION, agent))
        return hello

    def wait_closed(self) -> None:
        """Waits until the client closes its end (reading what it still sends)."""
        try:
            while True:
                self.recv()
        except (ConnectionClosed, OSError):
            pass


class FakeDaemon:
    """Listens on a Unix socket in a short temporary folder and runs
    ``script(peer)`` for each connection in a thread of its own."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tsr", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.path = os.path.join(self.dir, "tessera.sock")
        self.address = SocketAddress("path", self.path)
        self.errors: List[BaseException] = []
        self.peers: List[Peer] = []
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None

    def serve(self, script: Callable[[Peer], None], connections: int = 1) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(connections)
        self._listener = listener

        def run() -> None:
            for _ in range(connections):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                peer = Peer(conn)
                self.peers.append(peer)
                try:
                    script(peer)
                except BaseException as e:  # reported by the fixture
                    self.errors.append(e)
                finally:
                    conn.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self, timeout: float = 10) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "the fake daemon's script did not finish"

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def fake_daemon() -> Iterator[FakeDaemon]:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("needs Unix sockets")
    daemon = FakeDaemon()
    try:
        yield daemon
        daemon.join()
        if daemon.errors:
            raise daemon.errors[0]
    finally:
        daemon.close()
