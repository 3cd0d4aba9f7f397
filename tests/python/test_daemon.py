"""The Python client against the real daemon: results, progress, cancel,
clients that vanish, typed errors."""

import struct
import threading

import PIL.Image
import pytest

from tessera_client import (
    Channels,
    ErrorKind,
    Image,
    JobParams,
    Progress,
    SampleFormat,
    TesseraError,
    Transfer,
)

TINY = JobParams.upscaler_only(4.0, "tiny-x4")


def gradient(width: int, height: int) -> Image:
    data = bytearray()
    for y in range(height):
        for x in range(width):
            data += bytes((x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 128))
    return Image(width, height, Channels.RGB, SampleFormat.U8, Transfer.SRGB, bytes(data))


def test_upscale_returns_4x_with_progress_in_order(daemon):
    events = []
    with daemon.client() as client:
        result, timings = client.upscale(gradient(70, 40), TINY, on_progress=events.append)
    assert (result.width, result.height) == (280, 160)
    assert result.channels == Channels.RGB and result.sample == SampleFormat.U8
    assert len(result.data) == 280 * 160 * 3
    assert [t.name for t in timings] == ["load", "upscale", "resize"]
    assert all(isinstance(e, Progress) for e in events)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    upscale = [e for e in events if e.phase == "upscale"]
    # 70×40 in 32-pixel tiles: a 3×2 grid. Progress the client has not read yet
    # is coalesced, so count tiles from the events' totals, not their number.
    assert upscale and upscale[-1].tiles >= 6 and upscale[-1].tile == upscale[-1].tiles
    assert [e.tile for e in upscale] == sorted(e.tile for e in upscale)


def test_bgra_float_and_16_bit_layers_come_back_in_their_own_format(daemon):
    rgba_bytes = bytes([255, 40, 0, 255, 10, 200, 30, 128])
    bgra_bytes = bytes([0, 40, 255, 255, 30, 200, 10, 128])
    rgba = Image(2, 1, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, rgba_bytes)
    bgra = Image(2, 1, Channels.BGRA, SampleFormat.U8, Transfer.SRGB, bgra_bytes)
    f32 = Image(
        2, 1, Channels.RGBA, SampleFormat.F32, Transfer.LINEAR, struct.pack("<8f", *[0.5] * 8)
    )
    with daemon.client() as client:
        from_rgba, _ = client.upscale(rgba, TINY)
        from_bgra, _ = client.upscale(bgra, TINY)
        assert from_bgra.channels == Channels.BGRA and (from_bgra.width, from_bgra.height) == (8, 4)
        swapped = bytearray(from_bgra.data)
        swapped[0::4], swapped[2::4] = from_bgra.data[2::4], from_bgra.data[0::4]
        assert bytes(swapped) == bytes(from_rgba.data), "BGRA is RGBA with red and blue swapped"
        linear, _ = client.upscale(f32, TINY)
        assert (linear.channels, linear.sample, linear.transfer) == (
            Channels.RGBA,
            SampleFormat.F32,
            Transfer.LINEAR,
        )
        alphas = struct.unpack(f"<{8 * 4 * 4}f", linear.data)[3::4]
        assert all(abs(a - 0.5) < 1e-3 for a in alphas)


def test_cancel_drops_a_queued_job_and_stops_a_running_one(daemon):
    with daemon.client() as client:
        running = client.submit(gradient(512, 512), TINY)
        queued = client.submit(gradient(16, 16), TINY)
        queued.cancel()
        started = threading.Event()

        def on_progress(progress):
            if not started.is_set():
                started.set()
                running.cancel()

        for job, callback in ((running, on_progress), (queued, None)):
            with pytest.raises(TesseraError) as raised:
                job.wait(on_progress=callback, timeout=60)
            assert raised.value.kind == ErrorKind.CANCELLED
        assert started.is_set()
        result, _ = client.upscale(gradient(4, 4), TINY)
        assert result.width == 16
        status = client.status()
        assert status.running is None and status.queued == 0


def test_a_vanishing_client_does_not_disturb_another(daemon):
    leaver = daemon.client()
    job = leaver.submit(gradient(512, 512), TINY)
    first = threading.Event()
    waiter = threading.Thread(
        target=lambda: _wait_quietly(job, first), name="leaver-wait", daemon=True
    )
    waiter.start()
    assert first.wait(30), "the big job started"
    leaver.close()
    with daemon.client() as stayer:
        result, _ = stayer.upscale(gradient(10, 10), TINY)
        assert result.width == 40
        status = stayer.status()
        assert (status.running, status.queued, status.clients) == (None, 0, 1)


def _wait_quietly(job, first):
    try:
        job.wait(on_progress=lambda _: first.set(), timeout=60)
    except Exception:
        pass


def test_bad_submissions_get_typed_errors_and_the_daemon_keeps_serving(daemon):
    with daemon.client() as client:
        short = Image(4, 4, Channels.RGB, SampleFormat.U8, Transfer.SRGB, bytes(47))
        with pytest.raises(TesseraError) as raised:
            client.submit(short, TINY, validate=False)
        assert raised.value.kind == ErrorKind.INVALID_IMAGE
        with pytest.raises(TesseraError) as raised:
            client.submit(gradient(4, 4), JobParams.upscaler_only(4.0, "nope"))
        assert raised.value.kind == ErrorKind.MODEL_NOT_FOUND
        assert "tiny-x4" in raised.value.message
        with pytest.raises(TesseraError) as raised:
            client.submit(gradient(4, 4), JobParams.upscaler_only(40.0, "tiny-x4"))
        assert raised.value.kind == ErrorKind.INVALID_PARAMS
        result, _ = client.upscale(gradient(4, 4), TINY)
        assert result.width == 16


def test_the_python_client_and_the_cli_get_the_same_pixels(daemon, tmp_path):
    source = gradient(9, 7)
    path, out = tmp_path / "in.png", tmp_path / "out.png"
    PIL.Image.frombytes("RGB", (source.width, source.height), source.data).save(path)
    ran = daemon.cli(
        "upscale",
        "--no-start",
        "--preset",
        "upscaler",
        "--scale",
        "4",
        "--model",
        "tiny-x4",
        str(path),
        "-o",
        str(out),
    )
    assert ran.returncode == 0, ran.stderr
    with daemon.client() as client:
        result, _ = client.upscale(source, TINY)
    with PIL.Image.open(out) as written:
        assert written.mode == "RGB" and written.size == (36, 28)
        assert written.tobytes() == bytes(result.data)


def test_models_are_listed_with_hashes(daemon):
    with daemon.client() as client:
        models = client.list_models(hashes=True)
    (tiny,) = [m for m in models if m.name == "tiny-x4"]
    assert tiny.file == "upscalers/tiny-x4.safetensors"
    assert tiny.sha256 is not None and len(tiny.sha256) == 64


def test_the_models_folder_read_from_disk_is_the_daemons_list(daemon):
    """What the plug-ins show while no daemon runs is what the daemon lists."""
    import os

    from tessera_client import list_installed

    models = daemon.root / "models"
    files = {
        "checkpoints/juggernaut.safetensors": 11,
        "checkpoints/legacy.ckpt": 4,
        "checkpoints/readme.txt": 2,
        "checkpoints/sd15/unet/diffusion_pytorch_model.bin": 6,
        "checkpoints/sd15/model_index.json": 3,
        "vae/ft-mse.safetensors": 5,
        "controlnet/tile.pth": 7,
        "controlnet/.partial.pth": 1,
        "upscalers/same.pth": 2,
        "upscalers/same.safetensors": 3,
        "loras/more_details.safetensors": 8,
        "embeddings/neg.pt": 1,
        "embeddings/neg.txt": 1,
    }
    for name, size in files.items():
        path = models / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"m" * size)
    os.symlink(models / "vae" / "ft-mse.safetensors", models / "vae" / "linked.pt")
    with daemon.client() as client:
        listed = client.list_models()
    assert list_installed(str(daemon.root)) == listed
    assert {m.name for m in listed} >= {"juggernaut", "sd15", "linked", "same", "neg"}
