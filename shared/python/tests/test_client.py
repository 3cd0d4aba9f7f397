"""The client against a scripted fake daemon on a real Unix socket: the
handshake, request/reply routing, job event correlation, cancellation from
another thread, and how each way of failing surfaces. Where the numbers fit,
the fake daemon replays the golden frames byte for byte."""

import os
import socket
import threading
import time

import pytest

from tessera_client import (
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Channels,
    Client,
    ConnectionClosed,
    DaemonNotRunning,
    Done,
    Error,
    ErrorInfo,
    ErrorKind,
    Failed,
    GetStatus,
    Handshake,
    Image,
    JobParams,
    LoraWeight,
    Models,
    Progress,
    ProtocolError,
    SampleFormat,
    SocketAddress,
    StageTiming,
    Status,
    Submit,
    TesseraError,
    Transfer,
    decode,
    read_payload,
)

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")

RGBA8 = Image(
    2, 1, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, bytes([255, 0, 0, 255, 0, 128, 255, 64])
)


def gray(value: int) -> Image:
    return Image(1, 1, Channels.GRAY, SampleFormat.U8, Transfer.SRGB, bytes([value]))


def progress(job: int, fraction: float) -> Progress:
    return Progress(job, 0, 1, "denoise", 1, 4, 1, 1, fraction)


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- Connecting -----------------------------------------------------------------


def test_the_handshake_goes_first_and_status_comes_back(fake_daemon, read_golden):
    def script(peer):
        peer.handshake("tessera 9.9.9")
        peer.expect(GetStatus)
        peer.send_raw(read_golden("09-status"))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address, agent="krita-plugin 0.1.0") as client:
        assert client.daemon_agent == "tessera 9.9.9"
        status = client.status()
    assert status == decode(read_golden("09-status")[4:])
    assert status.running == 42
    hello = fake_daemon.peers[0].received[0]
    assert hello == Handshake(PROTOCOL_VERSION, "krita-plugin 0.1.0")


def test_an_address_may_be_a_plain_path(fake_daemon):
    fake_daemon.serve(lambda peer: (peer.handshake(), peer.wait_closed()))
    with Client(fake_daemon.path) as client:
        assert client.address == SocketAddress("path", fake_daemon.path)


def test_a_version_mismatch_is_a_typed_error(fake_daemon, read_golden):
    def script(peer):
        peer.expect(Handshake)
        peer.send_raw(read_golden("14-error-01-version-mismatch"))

    fake_daemon.serve(script)
    with pytest.raises(TesseraError) as caught:
        Client(fake_daemon.address)
    assert caught.value.kind == ErrorKind.VERSION_MISMATCH
    assert "update Tessera" in str(caught.value)


def test_a_daemon_handshake_of_another_version_is_a_mismatch(fake_daemon):
    def script(peer):
        peer.expect(Handshake)
        peer.send(Handshake(PROTOCOL_VERSION + 1, "tessera 2.0.0"))
        peer.wait_closed()

    fake_daemon.serve(script)
    with pytest.raises(TesseraError) as caught:
        Client(fake_daemon.address)
    assert caught.value.kind == ErrorKind.VERSION_MISMATCH
    assert "tessera 2.0.0" in caught.value.message


def test_a_silent_daemon_times_the_handshake_out(fake_daemon):
    def script(peer):
        peer.expect(Handshake)
        peer.wait_closed()

    fake_daemon.serve(script)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="handshake"):
        Client(fake_daemon.address, connect_timeout=0.3)
    assert time.monotonic() - started < 3


def test_a_daemon_that_hangs_up_during_the_handshake(fake_daemon):
    fake_daemon.serve(lambda peer: peer.expect(Handshake))
    with pytest.raises(ConnectionClosed, match="handshake"):
        Client(fake_daemon.address)


def test_no_socket_means_the_daemon_is_not_running(tmp_path):
    with pytest.raises(DaemonNotRunning) as caught:
        Client(str(tmp_path / "absent.sock"))
    assert "tessera serve" in str(caught.value)
    assert isinstance(caught.value, ConnectionError)


def test_a_stale_socket_file_means_the_daemon_is_not_running(fake_daemon):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(fake_daemon.path)
    stale.close()
    assert os.path.exists(fake_daemon.path)
    with pytest.raises(DaemonNotRunning, match="stale"):
        Client(fake_daemon.address)


def test_an_overlong_socket_path_is_explained(tmp_path):
    with pytest.raises(ConnectionError, match="TESSERA_SOCKET"):
        Client("/tmp/" + "x" * 120)


# --- Jobs ---------------------------------------------------------------------------


def test_upscale_replays_a_recorded_job(fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        submit = peer.expect(Submit)
        assert submit == Submit(1, RGBA8, JobParams())
        for name in ("02-accepted", "04-progress", "05-done"):
            peer.send_raw(read_golden(name))
        peer.wait_closed()

    fake_daemon.serve(script)
    seen = []
    with Client(fake_daemon.address) as client:
        image, timings = client.upscale(RGBA8, on_progress=seen.append)
    done = decode(read_golden("05-done")[4:])
    assert image == done.image
    assert timings == [
        StageTiming("upscale", 0.5),
        StageTiming("denoise", 12.25),
        StageTiming("decode", 0.1),
    ]
    assert seen == [decode(read_golden("04-progress")[4:])]


def test_the_submission_frame_is_byte_exact(fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        assert read_payload(peer.sock) == read_golden("01-submit")[4:]
        peer.send(Accepted(1, 42, 0))
        peer.send(Done(42, gray(1), []))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        assert client.upscale(RGBA8, JobParams()) == (gray(1), [])


def test_concurrent_jobs_get_their_own_events(fake_daemon):
    def script(peer):
        peer.handshake()
        first, second = peer.expect(Submit), peer.expect(Submit)
        job_of = {first.request: 70, second.request: 71}
        value_of = {70: first.image.data[0], 71: second.image.data[0]}
        # Answer out of order, interleave the progress, finish the second first.
        peer.send(Accepted(second.request, 71, 1))
        peer.send(Accepted(first.request, 70, 0))
        for fraction in (0.25, 0.5, 0.75):
            peer.send(progress(70, fraction))
            peer.send(progress(71, fraction / 2))
        peer.send(Done(71, gray(value_of[71] + 1), [StageTiming("b", 2.0)]))
        peer.send(Failed(99, ErrorInfo(ErrorKind.CANCELLED, "not ours")))  # ignored
        peer.send(Done(70, gray(value_of[70] + 1), [StageTiming("a", 1.0)]))
        assert set(job_of.values()) == {70, 71}
        peer.wait_closed()

    fake_daemon.serve(script)
    results = {}
    progress_seen = {10: [], 20: []}

    def run(client, value):
        results[value] = client.upscale(gray(value), on_progress=progress_seen[value].append)

    with Client(fake_daemon.address) as client:
        threads = [threading.Thread(target=run, args=(client, v)) for v in (10, 20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert results[10][0] == gray(11) and results[20][0] == gray(21)
    assert {results[10][1][0].name, results[20][1][0].name} == {"a", "b"}
    for seen in progress_seen.values():
        assert len(seen) == 3
        assert len({p.job for p in seen}) == 1
        assert [p.fraction for p in seen] == sorted(p.fraction for p in seen)
    assert {progress_seen[10][0].job, progress_seen[20][0].job} == {70, 71}


def test_a_rejection_raises_its_kind(fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)  # request 1
        peer.send(Accepted(1, 5, 0))
        peer.expect(Submit)  # request 2, refused with the recorded frame
        peer.send_raw(read_golden("03-rejected"))
        peer.send(Done(5, gray(0), []))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        job = client.submit(gray(1))
        assert (job.job, job.position, job.request) == (5, 0, 1)
        with pytest.raises(TesseraError) as caught:
            client.submit(gray(2))
        assert caught.value.kind == ErrorKind.QUEUE_FULL
        assert job.wait().job == 5


def test_a_failed_job_raises_its_kind(fake_daemon):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 3, 0))
        peer.send(Failed(3, ErrorInfo(ErrorKind.MODEL_NOT_FOUND, "no upscaler “x”")))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        with pytest.raises(TesseraError) as caught:
            client.upscale(gray(1), JobParams(2.0, "x"))
    assert caught.value.kind == ErrorKind.MODEL_NOT_FOUND
    assert caught.value.kind_name == "model-not-found"


def test_an_invalid_image_is_refused_before_sending(fake_daemon):
    fake_daemon.serve(lambda peer: (peer.handshake(), peer.wait_closed()))
    with Client(fake_daemon.address) as client:
        bad = Image(2, 2, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, bytes(15))
        with pytest.raises(TesseraError) as caught:
            client.upscale(bad)
        assert caught.value.kind == ErrorKind.INVALID_IMAGE
    assert [type(m) for m in fake_daemon.peers[0].received] == [Handshake]


def test_cancel_from_another_thread_while_upscale_waits(fake_daemon):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 8, 0))
        peer.send(progress(8, 0.1))
        assert peer.expect(Cancel) == Cancel(8)
        peer.send(Failed(8, ErrorInfo(ErrorKind.CANCELLED, "the job was cancelled")))
        peer.wait_closed()

    fake_daemon.serve(script)
    started = threading.Event()
    outcome = []

    def work(client):
        try:
            client.upscale(gray(1), on_progress=lambda p: started.set())
        except TesseraError as e:
            outcome.append(e)

    with Client(fake_daemon.address) as client:
        worker = threading.Thread(target=work, args=(client,))
        worker.start()
        assert started.wait(5)
        client.cancel()
        worker.join(5)
    assert outcome and outcome[0].kind == ErrorKind.CANCELLED


def test_a_cancel_before_acceptance_is_sent_once_the_job_has_a_number(fake_daemon):
    submitted, cancelled = threading.Event(), threading.Event()

    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        submitted.set()
        assert cancelled.wait(5)
        peer.send(Accepted(1, 12, 3))
        assert peer.expect(Cancel) == Cancel(12)
        peer.send(Failed(12, ErrorInfo(ErrorKind.CANCELLED, "cancelled while queued")))
        peer.wait_closed()

    fake_daemon.serve(script)
    outcome = []

    def work(client):
        try:
            client.upscale(gray(1))
        except TesseraError as e:
            outcome.append(e)

    with Client(fake_daemon.address) as client:
        worker = threading.Thread(target=work, args=(client,))
        worker.start()
        assert submitted.wait(5)
        wait_until(lambda: client._submissions)
        client.cancel()
        cancelled.set()
        worker.join(5)
    assert outcome and outcome[0].kind == ErrorKind.CANCELLED


def test_a_raising_progress_callback_cancels_the_job(fake_daemon):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 4, 0))
        peer.send(progress(4, 0.5))
        assert peer.expect(Cancel) == Cancel(4)
        peer.wait_closed()

    def stop(p):
        raise KeyError("user pressed stop")

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        with pytest.raises(KeyError):
            client.upscale(gray(1), on_progress=stop)


def test_a_job_wait_timeout_leaves_the_job_running(fake_daemon):
    release = threading.Event()

    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 6, 0))
        assert release.wait(5)
        peer.send(Done(6, gray(9), []))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        job = client.submit(gray(1))
        with pytest.raises(TimeoutError):
            job.wait(timeout=0.1)
        release.set()
        assert job.wait(timeout=5).image == gray(9)
        assert job.finished
        assert job.wait().job == 6  # the outcome is kept


def test_each_warning_of_a_job_is_handed_over_once(fake_daemon):
    moved = "VAE decoder x could not be prepared on CUDA (no cuDNN); it runs on the CPU (slower)"
    retried = "UNet+ControlNet x ran out of GPU memory; it runs with 1 tile per call from now on"

    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 8, 0))
        # Each message carries the job's whole list so far; Done may add to it.
        peer.send(Progress(8, 0, 1, "decode", 1, 1, 1, 1, 0.2, None, [moved]))
        peer.send(Progress(8, 0, 1, "denoise", 1, 4, 1, 1, 0.5, None, [moved]))
        peer.send(Progress(8, 0, 1, "denoise", 2, 4, 1, 1, 0.6, None, [moved, retried]))
        peer.send(Done(8, gray(2), [], [moved, retried, "a third"]))
        peer.wait_closed()

    fake_daemon.serve(script)
    told = []
    with Client(fake_daemon.address) as client:
        job = client.submit(gray(1))
        done = job.wait(on_warning=told.append)
    assert told == [moved, retried, "a third"]
    assert job.warnings == told
    assert done.warnings == told


# --- Requests and errors --------------------------------------------------------------


def test_list_models_with_and_without_hashes(fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        assert read_payload(peer.sock) == read_golden("10-list-models-hashes")[4:]
        peer.send(Error(ErrorKind.IO, "cannot read models/: permission denied"))
        assert read_payload(peer.sock) == read_golden("10-list-models")[4:]
        peer.send_raw(read_golden("11-models"))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        with pytest.raises(TesseraError) as caught:
            client.list_models(hashes=True)
        assert caught.value.kind == ErrorKind.IO
        models = client.list_models()
    assert models == decode(read_golden("11-models")[4:]).models
    assert isinstance(decode(read_golden("11-models")[4:]), Models)


def test_an_unknown_job_error_after_a_cancel_disturbs_nothing(fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        assert peer.expect(Cancel) == Cancel(99)
        peer.expect(GetStatus)
        peer.send_raw(read_golden("14-error-09-unknown-job"))
        peer.send_raw(read_golden("09-status-idle"))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        client.cancel(99)
        assert client.status().running is None
        assert [e.kind for e in client.errors] == [ErrorKind.UNKNOWN_JOB]
        assert not client.closed


def test_a_late_reply_goes_to_the_request_that_timed_out(fake_daemon):
    release = threading.Event()
    early = Status("0.1.0", "", "CPU", None, 0.0, 0, 1, "/early")
    late = Status("0.1.0", "", "CPU", None, 0.0, 0, 1, "/late")

    def script(peer):
        peer.handshake()
        peer.expect(GetStatus)
        assert release.wait(5)
        peer.send(early)
        peer.expect(GetStatus)
        peer.send(late)
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        with pytest.raises(TimeoutError):
            client.status(timeout=0.1)
        release.set()
        assert client.status().data_dir == "/late"


def test_shutdown_is_acknowledged_and_then_the_connection_ends(fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 2, 0))
        assert read_payload(peer.sock) == read_golden("12-shutdown")[4:]
        peer.send(Failed(2, ErrorInfo(ErrorKind.SHUTTING_DOWN, "the daemon shut down")))
        peer.send_raw(read_golden("13-shutting-down"))

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        job = client.submit(gray(1))
        client.shutdown()
        with pytest.raises(TesseraError) as caught:
            job.wait(timeout=5)
        assert caught.value.kind == ErrorKind.SHUTTING_DOWN
        wait_until(lambda: client.closed)
        with pytest.raises(TesseraError) as caught:
            client.status()
        assert caught.value.kind == ErrorKind.SHUTTING_DOWN
    assert [type(m) for m in fake_daemon.peers[0].received] == [Handshake, Submit]


def test_a_connection_error_from_the_daemon_fails_everything(fake_daemon, read_golden):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 2, 0))
        peer.expect(GetStatus)
        peer.send_raw(read_golden("14-error-00-protocol"))

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        job = client.submit(gray(1))
        with pytest.raises(TesseraError) as caught:
            client.status()
        assert caught.value.kind == ErrorKind.PROTOCOL
        with pytest.raises(TesseraError):
            job.wait(timeout=5)
        assert client.closed


def test_garbage_from_the_daemon_is_a_protocol_error(fake_daemon):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 2, 0))
        peer.send_raw(b"\x04\x00\x00\x00\x63\x00\x00\x00")  # message tag 99

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        with pytest.raises(ProtocolError, match="unknown message tag 99"):
            client.upscale(gray(1))


def test_an_oversized_frame_from_the_daemon_is_refused(fake_daemon):
    def script(peer):
        peer.handshake()
        peer.expect(GetStatus)
        peer.send_raw(b"\xff\xff\xff\x7f")

    fake_daemon.serve(script)
    with Client(fake_daemon.address, max_frame_bytes=1 << 20) as client:
        with pytest.raises(ProtocolError) as caught:
            client.status()
    assert caught.value.kind == ErrorKind.FRAME_TOO_LARGE


def test_a_dropped_connection_fails_the_waiting_job(fake_daemon):
    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 2, 0))
        peer.send(progress(2, 0.3))

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        with pytest.raises(ConnectionClosed):
            client.upscale(gray(1))
        with pytest.raises(ConnectionClosed):
            client.status()


def test_closing_the_client_wakes_a_waiting_thread(fake_daemon):
    accepted = threading.Event()

    def script(peer):
        peer.handshake()
        peer.expect(Submit)
        peer.send(Accepted(1, 2, 0))
        accepted.set()
        peer.wait_closed()

    fake_daemon.serve(script)
    client = Client(fake_daemon.address)
    outcome = []

    def work():
        try:
            client.upscale(gray(1))
        except ConnectionClosed as e:
            outcome.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    assert accepted.wait(5)
    client.close()
    worker.join(5)
    assert outcome
    client.close()  # idempotent


def test_messages_a_daemon_may_not_send_close_the_connection(fake_daemon):
    def script(peer):
        peer.handshake()
        peer.expect(GetStatus)
        peer.send(Submit(1, gray(1)))

    fake_daemon.serve(script)
    with Client(fake_daemon.address) as client:
        with pytest.raises(ProtocolError, match="may not send Submit"):
            client.status()


def test_connect_and_params_as_a_mapping(fake_daemon):
    def script(peer):
        peer.handshake()
        assert peer.expect(Submit).params == JobParams(
            2.0,
            "4x-UltraSharp",
            creativity=0.5,
            loras=[LoraWeight("more_details", 0.5), LoraWeight("b", 1.0), LoraWeight("c")],
        )
        peer.send(Accepted(1, 1, 0))
        peer.send(Done(1, gray(5), []))
        peer.wait_closed()

    fake_daemon.serve(script)
    with Client.connect(fake_daemon.address) as client:
        params = {
            "scale": 2.0,
            "upscaler": "4x-UltraSharp",
            "creativity": 0.5,
            # LoRAs as pairs, mappings or LoraWeight.
            "loras": [("more_details", 0.5), {"name": "b", "weight": 1.0}, LoraWeight("c")],
        }
        image, _ = client.upscale(gray(1), params)
    assert image == gray(5)
