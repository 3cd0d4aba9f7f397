"""A real ``tessera serve`` for the Python end-to-end tests: built by cargo
(``scripts/test`` does it), in a temporary data directory with the tiny test
upscaler, on its own socket."""

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

from tessera_client import Client, DaemonNotRunning

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "tests" / "fixtures" / "esrgan" / "tiny-x4.safetensors"


def tessera_bin() -> Path:
    exe = REPO / "target" / "debug" / ("tessera.exe" if os.name == "nt" else "tessera")
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: build it first (cargo build, as scripts/test does)")
    return exe


def ort_lib() -> str:
    configured = os.environ.get("TESSERA_ORT_LIB")
    if configured:
        return configured
    for folder in (REPO / ".cache" / "ort-data" / "runtime", REPO / ".cache" / "onnxruntime"):
        candidates = sorted(folder.glob("libonnxruntime.*")) + sorted(folder.glob("*.dll"))
        for candidate in candidates:
            return str(candidate)
    pytest.fail("no ONNX Runtime library: set TESSERA_ORT_LIB or run scripts/test")


class Daemon:
    """A daemon process and the environment that reaches it."""

    def __init__(self, root: Path, config: str, env: Optional[Dict[str, str]] = None) -> None:
        self.root = root
        self.socket = str(root / "tessera.sock")
        upscalers = root / "models" / "upscalers"
        upscalers.mkdir(parents=True)
        shutil.copy(TINY_MODEL, upscalers / "tiny-x4.safetensors")
        (root / "config.toml").write_text(config)
        self.env = dict(os.environ)
        self.env.update(
            TESSERA_DATA_DIR=str(root), TESSERA_SOCKET=self.socket, TESSERA_ORT_LIB=ort_lib()
        )
        self.env.update(env or {})
        self.env.pop("ORT_DYLIB_PATH", None)
        self.process = subprocess.Popen(
            [str(tessera_bin()), "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                Client(self.socket, agent="pytest-probe").close()
                return
            except DaemonNotRunning:
                if self.process.poll() is not None:
                    raise RuntimeError(self.process.stderr.read().decode()) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self, **kwargs) -> Client:
        return Client(self.socket, agent="pytest", **kwargs)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(tessera_bin()), *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.process.stderr.close()


@pytest.fixture
def daemon(tmp_path):
    """A daemon with the tiny model and 32-pixel tiles, so that modest images
    make many network calls."""
    running = Daemon(tmp_path / "data", "[upscale]\ntile = 32\noverlap = 4\n")
    yield running
    running.stop()
