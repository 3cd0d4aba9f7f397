"""The Windows transport (a named pipe through CPython's ``_winapi``) on a
stand-in ``_winapi`` (``fake_winapi.py``) whose pipes are Unix sockets: the
whole client over it, and the transport's own handling of missing and busy
pipes, timeouts, close, large writes and the end of the stream. The real
``_winapi`` runs only on Windows, which CI does not have (see docs/windows.md).
"""

import socket
import sys
import threading
import time

import pytest
from fake_winapi import FakeWinapi

from tessera_client import Client, JobParams, SocketAddress, decode
from tessera_client.errors import ConnectionClosed, DaemonNotRunning
from tessera_client.messages import Channels, Image, SampleFormat, StageTiming, Submit, Transfer
from tessera_client.transport import connect

PIPE = SocketAddress("pipe", "tessera-Ana-0badf00d")
RGBA8 = Image(2, 1, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, bytes(range(8)))


@pytest.fixture
def winapi(monkeypatch):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("the stand-in pipes are Unix sockets")
    fake = FakeWinapi()
    monkeypatch.setitem(sys.modules, "_winapi", fake)
    return fake


def test_the_client_runs_a_recorded_job_over_a_pipe(winapi, fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        assert peer.expect(Submit) == Submit(1, RGBA8, JobParams())
        for name in ("02-accepted", "04-progress", "05-done"):
            peer.send_raw(read_golden(name))
        peer.wait_closed()

    fake_daemon.serve(script)
    winapi.pipes[PIPE.name] = fake_daemon.path
    seen = []
    with Client(PIPE) as client:
        image, timings = client.upscale(RGBA8, on_progress=seen.append)
    assert image == decode(read_golden("05-done")[4:]).image
    assert timings[0] == StageTiming("upscale", 0.5)
    assert seen == [decode(read_golden("04-progress")[4:])]
    assert winapi.closed, "the pipe handle is closed with the client"


def test_a_missing_pipe_means_the_daemon_is_not_running(winapi):
    with pytest.raises(DaemonNotRunning) as caught:
        connect(PIPE)
    assert "\\\\.\\pipe\\tessera-Ana-0badf00d" in str(caught.value)


def test_a_busy_pipe_is_waited_for_then_opened(winapi, fake_daemon):
    fake_daemon.serve(lambda peer: peer.wait_closed())
    winapi.pipes[PIPE.name] = fake_daemon.path
    winapi.busy[PIPE.name] = 2
    stream = connect(PIPE, timeout=5.0)
    stream.close()
    assert [name for name, _ in winapi.waits] == [PIPE.name, PIPE.name]
    assert all(0 < ms <= 5000 for _, ms in winapi.waits)


def test_a_pipe_that_stays_busy_times_out(winapi, fake_daemon):
    fake_daemon.serve(lambda peer: None)
    winapi.pipes[PIPE.name] = fake_daemon.path
    winapi.busy[PIPE.name] = 10**9
    with pytest.raises(TimeoutError, match="busy"):
        connect(PIPE, timeout=0.2)
    # Unblock the fake daemon's accept.
    winapi.busy[PIPE.name] = 0
    connect(PIPE).close()


def _pair(winapi, fake_daemon, script):
    fake_daemon.serve(script)
    winapi.pipes[PIPE.name] = fake_daemon.path
    return connect(PIPE)


def test_a_read_timeout_cancels_the_pending_read(winapi, fake_daemon):
    done = threading.Event()
    stream = _pair(winapi, fake_daemon, lambda peer: done.wait(5))
    stream.settimeout(0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        stream.recv_into(memoryview(bytearray(16)))
    assert time.monotonic() - started < 2
    done.set()
    stream.close()


def test_close_wakes_a_blocked_reader(winapi, fake_daemon):
    done = threading.Event()
    stream = _pair(winapi, fake_daemon, lambda peer: done.wait(5))
    got = []
    reader = threading.Thread(target=lambda: got.append(stream.recv_into(memoryview(bytearray(8)))))
    reader.start()
    time.sleep(0.3)
    stream.close()
    reader.join(3)
    assert not reader.is_alive() and got == [0]
    done.set()
    with pytest.raises(ConnectionClosed):
        stream.sendall(b"late")


def test_the_end_of_the_stream_reads_as_zero_bytes(winapi, fake_daemon):
    def script(peer):
        peer.send_raw(b"abc")

    stream = _pair(winapi, fake_daemon, script)
    buffer = bytearray(8)
    assert stream.recv_into(memoryview(buffer)) == 3 and buffer[:3] == b"abc"
    assert stream.recv_into(memoryview(buffer)) == 0
    stream.close()


def test_large_writes_go_out_in_chunks_of_one_mib(winapi, fake_daemon):
    size = (5 << 20) // 2
    received = []

    def script(peer):
        total = 0
        while total < size:
            chunk = peer.sock.recv(1 << 16)
            assert chunk
            total += len(chunk)
        received.append(total)

    stream = _pair(winapi, fake_daemon, script)
    stream.sendall(bytes(size))
    fake_daemon.join()
    assert received == [size]
    assert winapi.writes == [1 << 20, 1 << 20, size - (2 << 20)]
    stream.close()
