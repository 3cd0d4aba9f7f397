"""The plug-in in GIMP 3 against the real daemon with the tiny test models:
``tessera serve`` runs outside the GIMP root (started as
``tests/python/conftest.py`` starts it for the Python tests), its socket in
the folder the root sees at /mnt.

- The new layer equals what ``tessera upscale`` (the CLI) returns for the
  same pixels and flags, for an 8-bit and a 16-bit image, at the selection's
  offset in the image scaled to fit it, with the upscaler alone; and with the
  Clarity pipeline, on the tiny Stable Diffusion test models in a second
  daemon's data directory.
- Killing the plug-in mid-job, as GIMP's Cancel does, cancels the job and
  leaves the daemon serving the next request.
- The daemon's refusals reach GIMP as its error message.
- With no daemon running, the plug-in starts one itself.
"""

import importlib.util
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from gimp_cases import Case, kill_plugin_at_first_progress
from gimp_pixels import read_png, write_png

from tessera_client import Channels, Client, DaemonNotRunning, SampleFormat

REPO = Path(__file__).resolve().parents[2]
TINY = "tiny-x4"
# Small tiles, so that modest images make many network calls.
CONFIG = "[upscale]\ntile = 32\noverlap = 4\n"
#: The upscaler alone: the data directory has no Stable Diffusion model.
UPSCALE = {"scale": 2.0, "upscaler": TINY, "preset": "upscaler"}

# Big enough for several tiles: the layer at (5, 7), the selection partly
# off the layer's top-left corner.
E2E = {
    "image_size": (160, 120),
    "layer_size": (120, 100),
    "layer_offset": (5, 7),
    "selection": (2, 20, 90, 70),
}


def _python_conftest():
    """``tests/python/conftest.py``: its ``Daemon`` starts ``target/debug/tessera
    serve`` in a data directory with the tiny model."""
    path = REPO / "tests" / "python" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tessera_python_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PYTHON_CONFTEST = _python_conftest()


@pytest.fixture(scope="module")
def daemon(gimp):
    running = PYTHON_CONFTEST.Daemon(gimp.shared / "real-daemon", CONFIG)
    yield running
    running.stop()


def _env(gimp, daemon):
    """The plug-in's environment for ``daemon``, which must still run."""
    code = daemon.process.poll()
    if code is not None:
        logs = "".join(p.read_text() for p in (Path(daemon.root) / "logs").glob("*.log"))
        raise AssertionError(f"the daemon exited with {code}; its log ends:\n{logs[-3000:]}")
    return {"TESSERA_SOCKET": gimp.inside(Path(daemon.socket))}


@pytest.mark.parametrize("precision", ["U8_NON_LINEAR", "U16_NON_LINEAR"])
def test_new_layer_equals_the_cli_result(gimp, daemon, precision):
    folder = gimp.folder(f"e2e-{precision.lower()}")
    case = Case(gimp, folder, "e2e", precision=precision, arguments=UPSCALE, **E2E)
    run = gimp.run("upscale_cases.py", [case.spec], env=_env(gimp, daemon))
    outcome = case.outcome()
    assert "exception" not in outcome, outcome["exception"] + run.output
    assert outcome["status"] == "success", f"{outcome}\n{run.output}"

    # The selection clipped to the layer: image (5, 20) to (92, 90). Its
    # 174×140 result would reach past the 160×120 canvas: the image is scaled
    # ×2 first (the default output), the layer lands on the scaled selection.
    x, y, width, height = case.region()
    assert (x, y, width, height) == (0, 13, 87, 70)
    assert outcome["image_after"]["size"] == [320, 240]
    assert outcome["result"]["offset"] == [10, 40]
    assert outcome["result"]["size"] == [2 * width, 2 * height]
    assert outcome["stack_after"] == ["top", "source ×2 (Tessera)", "source", "background"]
    submit = run.of("submit")[0]
    assert (submit["channels"], submit["sample"], submit["transfer"]) == (
        "RGBA",
        case.sample.name,
        "SRGB",
    )
    assert run.of("progress"), "no progress reached GIMP"

    # The CLI, on the same pixels.
    source, result = folder / "selection.png", folder / "cli.png"
    write_png(str(source), width, height, Channels.RGBA, case.sample, case.sent())
    ran = daemon.cli("upscale", "--no-start", *_flags(UPSCALE), str(source), "-o", str(result))
    assert ran.returncode == 0, ran.stderr
    cli_width, cli_height, channels, sample, pixels = read_png(str(result))
    assert (cli_width, cli_height, channels, sample) == (
        2 * width,
        2 * height,
        Channels.RGBA,
        case.sample,
    )
    assert case.sample in (SampleFormat.U8, SampleFormat.U16)
    assert case.result_pixels() == pixels


def test_the_daemons_warnings_reach_gimp(gimp):
    """A daemon whose (simulated) GPU fails its probe at start warns every job
    that the CPU took over (``TESSERA_FAULTS``, docs/hardening.md); the plug-in
    passes the warning to GIMP's messages and the job still succeeds."""
    faults = {"TESSERA_FAULTS": "accelerator, probe"}
    warned = PYTHON_CONFTEST.Daemon(gimp.shared / "warned-daemon", CONFIG, env=faults)
    try:
        folder = gimp.folder("e2e-warned")
        case = Case(gimp, folder, "e2e", precision="U8_NON_LINEAR", arguments=UPSCALE, **E2E)
        run = gimp.run("upscale_cases.py", [case.spec], env=_env(gimp, warned))
        outcome = case.outcome()
        assert outcome["status"] == "success", f"{outcome}\n{run.output}"
        texts = [e["text"] for e in run.of("warning")]
        assert len(texts) == 1 and "simulated GPU is not used" in texts[0], texts
    finally:
        warned.stop()


def _flags(arguments):
    """The ``tessera upscale`` flags for the plug-in's ``arguments``: the job
    arguments are named like the CLI's flags."""
    flags = []
    for name, value in arguments.items():
        flags += [f"--{name}", str(value)]
    return flags


PIPELINE = REPO / "tests" / "fixtures" / "pipeline"
#: Clarity with the tiny upscaler and small diffusion tiles (16 latents,
#: 128 pixels), so that a small image makes several tiles.
CLARITY = {
    "scale": 2.0,
    "upscaler": TINY,
    "preset": "clarity",
    "tile-width": 16,
    "tile-height": 16,
}


@pytest.fixture(scope="module")
def diffusion_daemon(gimp):
    """A daemon with the tiny Clarity pipeline, laid out as the Rust
    end-to-end tests lay it out (``Daemon::prepare_diffusion`` in
    ``tests/support/lib.rs``): the checkpoint, VAE and tile ControlNet as the
    only model of their folders (the defaults fall back to them), the LoRAs and
    the negative embedding under the names Clarity's default prompts use."""
    root = gimp.shared / "diffusion-daemon"
    models = root / "models"
    shutil.copytree(PIPELINE / "tiny-clarity", models / "checkpoints" / "tiny-clarity")
    shutil.copytree(PIPELINE / "tiny-clarity", models / "vae" / "tiny-clarity")
    shutil.copytree(PIPELINE / "tiny-tile", models / "controlnet" / "tiny-tile")
    (models / "loras").mkdir()
    for lora in ("more_details", "SDXLrender_v2.0"):
        shutil.copy(PIPELINE / "tiny-lora.safetensors", models / "loras" / f"{lora}.safetensors")
    (models / "embeddings").mkdir()
    shutil.copy(PIPELINE / "tiny-embedding.pt", models / "embeddings" / "JuggernautNegative-neg.pt")
    running = PYTHON_CONFTEST.Daemon(root, f'[upscale]\ndefault_upscaler = "{TINY}"\n')
    yield running
    running.stop()


def test_clarity_diffusion_layer_equals_the_cli_result(gimp, diffusion_daemon):
    """The Clarity pipeline, called from a script with Clarity's defaults
    but small tiles: the new layer holds exactly what ``tessera upscale
    --preset clarity`` returns with the same flags (same request and seed, same
    bytes), and that is not what the upscaler alone returns."""
    folder = gimp.folder("e2e-clarity")
    case = Case(gimp, folder, "clarity", arguments=CLARITY, **E2E)
    run = gimp.run("upscale_cases.py", [case.spec], env=_env(gimp, diffusion_daemon))
    outcome = case.outcome()
    assert "exception" not in outcome, outcome["exception"] + run.output
    assert outcome["status"] == "success", f"{outcome}\n{run.output}"
    x, y, width, height = case.region()
    assert (x, y, width, height) == (0, 13, 87, 70)
    assert outcome["result"]["offset"] == [10, 40]
    assert outcome["result"]["size"] == [174, 140]
    assert outcome["stack_after"] == ["top", "source ×2 (Tessera)", "source", "background"]
    params = run.of("submit")[0]["params"]
    assert (params["preset"], params["tile_width"], params["seed"]) == (0, 16, 1337)
    # 174×140 pixels in tiles of 128: several of them, each denoised.
    texts = [e["text"] for e in run.of("progress")]
    assert any("denoise" in text and "tile 2 of" in text for text in texts), texts

    source = folder / "selection.png"
    write_png(str(source), width, height, Channels.RGBA, case.sample, case.sent())

    def cli(arguments, name):
        result = folder / name
        ran = diffusion_daemon.cli(
            "upscale", "--no-start", *_flags(arguments), str(source), "-o", str(result)
        )
        assert ran.returncode == 0, ran.stderr
        return read_png(str(result))

    cli_width, cli_height, channels, sample, pixels = cli(CLARITY, "cli.png")
    assert (cli_width, cli_height, channels, sample) == (174, 140, Channels.RGBA, SampleFormat.U8)
    assert case.result_pixels() == pixels
    upscaled = cli({**CLARITY, "preset": "upscaler"}, "cli-upscaler.png")[4]
    assert len(upscaled) == len(pixels) and upscaled != pixels, "nothing was diffused"


def test_an_unknown_model_is_explained_in_gimp(gimp, daemon):
    folder = gimp.folder("e2e-unknown-model")
    case = Case(gimp, folder, "unknown", arguments={**UPSCALE, "upscaler": "4x-Nope"}, **E2E)
    run = gimp.run("upscale_cases.py", [case.spec], env=_env(gimp, daemon))
    outcome = case.outcome()
    assert outcome["status"] == "execution-error", f"{outcome}\n{run.output}"
    assert outcome["error"].startswith(
        'Tessera could not upscale: there is no upscaler named "4x-Nope" in '
    ), outcome["error"]
    assert outcome["error"].endswith("; available: tiny-x4.")
    assert outcome["stack_after"] == outcome["stack_before"]


def _wait_idle(client: Client, seconds: float) -> float:
    """Seconds until the daemon runs no job (fails after ``seconds``)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        status = client.status()
        if status.running is None and status.queued == 0:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"the daemon still works after {seconds} s: {client.status()}")


def test_killing_the_plugin_cancels_the_job_and_the_daemon_serves_on(gimp, daemon):
    folder = gimp.folder("e2e-killed")
    # ×4 of 512×512 in 32-pixel tiles: 362 progress events, about 6 s here.
    doomed = Case(
        gimp,
        folder,
        "doomed",
        selection=None,
        layer_size=(512, 512),
        image_size=(512, 512),
        layer_offset=(0, 0),
        arguments={**UPSCALE, "scale": 4.0},
    )
    after = Case(gimp, folder, "after", arguments=UPSCALE, **E2E)
    busy = []
    with Client(daemon.socket, agent="pytest-observer") as observer:
        running = gimp.start("upscale_cases.py", [doomed.spec, after.spec], env=_env(gimp, daemon))
        pid = kill_plugin_at_first_progress(
            running, before_kill=lambda: busy.append(observer.status())
        )
        # The job stops at its next network call, long before it could finish.
        assert _wait_idle(observer, 10.0) < 2.0
        run = running.wait()
        assert daemon.process.poll() is None, "the daemon died"
        status = observer.status()
        assert (status.running, status.queued) == (None, 0)
    job = busy[0].running
    assert job is not None and busy[0].running_fraction < 0.5, busy
    # The daemon's log tells why the job ended.
    log = "".join(p.read_text() for p in (Path(daemon.root) / "logs").glob("*.log"))
    assert f"stopping its job {job}\n" in log
    assert f"job {job} ended: cancelled" in log
    killed = doomed.outcome()
    assert killed["status"] != "success", killed
    assert killed["stack_after"] == killed["stack_before"]
    assert [e["event"] for e in run.events if e["pid"] == pid][-1] == "progress"
    assert not [e for e in run.events if e["pid"] == pid and e["event"] == "done"]
    # The next request, from a new plug-in process in the same GIMP, is served.
    outcome = after.outcome()
    assert outcome["status"] == "success", f"{outcome}\n{run.output}"
    assert outcome["result"]["size"] == [174, 140]


def test_the_plugin_starts_the_daemon_when_none_runs(gimp):
    """No daemon listens on the socket: the plug-in finds ``tessera`` (here by
    ``TESSERA_BIN``, inside the root) and starts it; the daemon outlives GIMP."""
    folder = gimp.folder("e2e-autostart")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    shutil.copy2(PYTHON_CONFTEST.tessera_bin(), bin_dir / "tessera")
    ort = Path(PYTHON_CONFTEST.ort_lib())
    shutil.copy2(ort, bin_dir / ort.name)
    data = folder / "data"
    (data / "models" / "upscalers").mkdir(parents=True)
    shutil.copy(PYTHON_CONFTEST.TINY_MODEL, data / "models" / "upscalers" / "tiny-x4.safetensors")
    (data / "config.toml").write_text(CONFIG)
    socket = folder / "tessera.sock"
    env = {
        "TESSERA_BIN": gimp.inside(bin_dir / "tessera"),
        "TESSERA_ORT_LIB": gimp.inside(bin_dir / ort.name),
        "TESSERA_DATA_DIR": gimp.inside(data),
        "TESSERA_SOCKET": gimp.inside(socket),
    }
    case = Case(gimp, folder, "autostart", arguments=UPSCALE, **E2E)
    run = gimp.run("upscale_cases.py", [case.spec], env=env)
    started = run.of("daemon-started")
    try:
        outcome = case.outcome()
        assert outcome["status"] == "success", f"{outcome}\n{run.output}"
        assert outcome["result"]["size"] == [174, 140]
        assert len(started) == 1, run.events
        # GIMP has quit; the daemon it started still serves, on the same socket.
        with Client(str(socket), agent="pytest") as client:
            assert client.status().data_dir == gimp.inside(data)
            client.shutdown()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                Client(str(socket), agent="pytest-probe").close()
            except (DaemonNotRunning, ConnectionError):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the daemon did not shut down")
    finally:
        for event in started:
            try:
                os.kill(event["daemon_pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
