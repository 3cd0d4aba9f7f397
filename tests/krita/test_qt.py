"""The plug-in's Qt side without Krita (``qt_smoke.py``), under PyQt5 as
Krita 5 has it, and under PyQt6 as Krita 6 has it when a Python with PyQt6
is named in ``TESSERA_PYQT6_PYTHON``."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from krita_support import require

from tessera_krita.params import SPECS

HERE = Path(__file__).resolve().parent


def pyqt5_python():
    python = shutil.which("python3", path="/usr/bin") or ""
    found = (
        bool(python)
        and subprocess.run([python, "-c", "import PyQt5.QtNetwork"], capture_output=True).returncode
        == 0
    )
    require("PyQt5 for /usr/bin/python3 (Debian package python3-pyqt5)", found)
    return python


def smoke(python, fake_daemon, qt):
    fake = fake_daemon("--steps", "5", "--delay", "0.05")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", TESSERA_QT=qt)
    run = subprocess.run(
        [python, str(HERE / "qt_smoke.py"), fake.socket],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def check(out, qt):
    assert out["qt"] == int(qt)
    assert out["connected"], out
    assert out["status"] == "Connected · idle · 0 queued · fake"
    assert out["models"] == ["Daemon default", "fake-x2"]
    layout = out["layout"]
    assert layout["main"] == ["creativity", "preset", "prompt", "resemblance", "scale"]
    assert layout["advanced"] == sorted(
        spec.key for spec in SPECS if spec.key not in layout["main"]
    )
    assert layout["choices_advanced"] and layout["folded"] and layout["unfolded"]
    assert layout["in_scroll_area"]
    # The docker never asks for more than 400 px, and shows at that height the
    # buttons and the result line.
    assert layout["minimum"] <= 400, layout
    assert layout["at_minimum"] == {"upscale": True, "cancel": True, "result": True}
    assert not layout["first_run_hint"]  # the daemon has a model
    assert layout["rich_tooltips"]
    assert out["upscale"]["ok"], out["upscale"]["message"]
    assert out["upscale"]["changes"] == ["scale 16x8", "add Layer 1 ×2 (16×8) [Tessera]"]
    assert out["layers"] == [
        ["Layer 1", [0, 0, 8, 4]],
        ["Layer 1 ×2 (16×8) [Tessera]", [0, 0, 16, 8]],
    ]
    assert [v for v in out["progress"] if 0 < v < 1000], out["progress"]
    assert out["cancel"] == {
        "cancelled": True,
        "message": "Cancelled; the document was left as it was.",
        "unchanged": True,
    }

    assert not out["error"]["ok"]
    html = out["error"]["html"]
    assert "The active node is a mask (Layer 1); select the layer to upscale." in html
    assert '<a href="file:///' in html and '/logs">Open the log folder</a>' in html


def test_pyqt5(fake_daemon):
    check(smoke(pyqt5_python(), fake_daemon, "5"), "5")


def test_pyqt6(fake_daemon):
    python = os.environ.get("TESSERA_PYQT6_PYTHON")
    if not python:
        pytest.skip("set TESSERA_PYQT6_PYTHON to a Python with PyQt6 to check the Krita 6 path")
    check(smoke(python, fake_daemon, "6"), "6")
