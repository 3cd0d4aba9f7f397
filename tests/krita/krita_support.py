"""Shared set-up of the Krita plug-in's tests.

- The plug-in's source folder on ``sys.path``: its pure modules need neither
  Qt nor Krita.
- For the tests inside Krita: the release zip, built by the build script and
  installed by Krita's own *Import Python Plugin* code into a private Krita
  profile (``XDG_CONFIG_HOME``/``XDG_DATA_HOME`` in a temporary folder, the
  plug-in enabled in its ``kritarc``); ``run_krita`` runs a script in
  ``kritarunner`` or the full GUI under ``timeout``.
- A real ``tessera serve`` on its own socket with the tiny test model, as in
  ``tests/python/conftest.py``.

Krita missing: the in-Krita tests are skipped, unless
``TESSERA_REQUIRE_KRITA=1`` (set by ``scripts/test``) makes that a failure.
"""

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugin-krita"
IN_KRITA = Path(__file__).resolve().parent / "in_krita"
TINY_MODEL = REPO / "tests" / "fixtures" / "esrgan" / "tiny-x4.safetensors"
IMPORTER = Path("/usr/share/krita/pykrita/plugin_importer/plugin_importer.py")

if str(PLUGIN) not in sys.path:
    sys.path.insert(0, str(PLUGIN))

#: Seconds any one editor run may take before ``timeout`` kills it.
KRITA_TIMEOUT = int(os.environ.get("TESSERA_KRITA_TIMEOUT", "300"))


def require(what: str, found: bool, hint: str = "scripts/setup-krita installs it") -> None:
    if found:
        return
    message = f"{what} is missing ({hint})"
    if os.environ.get("TESSERA_REQUIRE_KRITA") == "1":
        pytest.fail(message)
    pytest.skip(message)


def short_temp_dir(prefix: str) -> Path:
    """A folder with a short path: Unix socket paths are limited to 103 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None))


# --- The plug-in, built and installed -------------------------------------------


@pytest.fixture(scope="session")
def plugin_zip(tmp_path_factory) -> Path:
    """The release zip, built by the build script as a user would."""
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run(
        [sys.executable, str(PLUGIN / "build.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return Path(run.stdout.strip())


def krita_importer():
    """Krita's own *Import Python Plugin from File…* logic (plain Python)."""
    require("Krita's plugin_importer", IMPORTER.is_file())
    spec = importlib.util.spec_from_file_location("krita_plugin_importer", IMPORTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class KritaHome:
    """A private Krita profile with the plug-in installed and enabled."""

    def __init__(self, root: Path, plugin_zip: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.config = root / "config"
        self.data = root / "data"
        self.cache = root / "cache"
        self.runtime = root / "runtime"
        self.resources = self.data / "krita"
        for folder in (self.home, self.config, self.resources, self.cache, self.runtime):
            folder.mkdir(parents=True, exist_ok=True)
        self.runtime.chmod(0o700)
        importer = krita_importer().PluginImporter(
            str(plugin_zip), str(self.resources), lambda plugin: True
        )
        self.imported = importer.import_all()
        self.write_kritarc({})

    @property
    def kritarc(self) -> Path:
        return self.config / "kritarc"

    def write_kritarc(
        self, extra_plugins: Dict[str, bool], tessera: Optional[Dict[str, str]] = None
    ) -> None:
        """A fresh ``kritarc``: the plug-ins enabled, the ``[tessera]`` settings
        given, and nothing else, so Krita starts with its default workspace."""
        plugins = {"tessera_krita": True, **extra_plugins}
        lines = ["[python]"] + [
            f"enable_{k}={'true' if v else 'false'}" for k, v in plugins.items()
        ]
        if tessera:
            lines += ["", "[tessera]"] + [f"{k}={v}" for k, v in tessera.items()]
        self.kritarc.write_text("\n".join(lines) + "\n")

    def env(self, **extra: str) -> Dict[str, str]:
        env = dict(os.environ)
        for name in ("TESSERA_DATA_DIR", "TESSERA_SOCKET", "DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(name, None)
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.config),
            XDG_DATA_HOME=str(self.data),
            XDG_CACHE_HOME=str(self.cache),
            XDG_RUNTIME_DIR=str(self.runtime),
            PYTHONDONTWRITEBYTECODE="1",
        )
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def krita_home(tmp_path_factory, plugin_zip) -> KritaHome:
    require("kritarunner (Debian package krita)", shutil.which("kritarunner") is not None)
    return KritaHome(tmp_path_factory.mktemp("krita-home"), plugin_zip)


class KritaRun:
    def __init__(self, report: dict, output: str, seconds: float, returncode: int) -> None:
        self.report = report
        self.output = output
        self.seconds = seconds
        self.returncode = returncode


def start_krita(
    home: KritaHome, module: str, spec: dict, env: Dict[str, str], gui: bool = False
) -> subprocess.Popen:
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = home.env(**env)
    env["TESSERA_KRITA_SPEC"] = str(spec_path)
    env["PYTHONPATH"] = os.pathsep.join([str(IN_KRITA), str(home.resources / "pykrita")])
    if gui:
        require("xvfb-run (Debian package xvfb)", shutil.which("xvfb-run") is not None)
        require("krita", shutil.which("krita") is not None)
        screen = spec.get("screen", [1280, 1024])
        # -a looks for a free display from -n up; a random start keeps runs
        # started at the same moment (other test sessions) from racing for :99.
        first_display = str(random.randint(100, 30000))
        command = [
            "timeout", "-k", "10", str(KRITA_TIMEOUT),
            "xvfb-run", "-n", first_display, "-a",
            "-s", f"-screen 0 {screen[0]}x{screen[1]}x24", "krita", "--nosplash",
        ]  # fmt: skip
    else:
        env["QT_QPA_PLATFORM"] = "offscreen"
        command = [
            "timeout", "-k", "10", str(KRITA_TIMEOUT), "kritarunner", "-s", module, "-f", "main",
        ]  # fmt: skip
    # E.g. "chroot /srv/trixie" to run another Krita (with /tmp and the
    # repository bind-mounted at the same paths), as for Krita 5.2.
    wrapper = os.environ.get("TESSERA_KRITA_WRAPPER", "").split()
    command = wrapper + command
    log = open(out_dir / "krita-output.txt", "w")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(out_dir)
    )
    log.close()
    process.tessera_started = time.monotonic()  # type: ignore[attr-defined]
    process.tessera_out_dir = out_dir  # type: ignore[attr-defined]
    return process


def finish_krita(process: subprocess.Popen) -> KritaRun:
    out_dir: Path = process.tessera_out_dir  # type: ignore[attr-defined]
    returncode = process.wait(timeout=KRITA_TIMEOUT + 60)
    seconds = time.monotonic() - process.tessera_started  # type: ignore[attr-defined]
    output = (out_dir / "krita-output.txt").read_text(errors="replace")
    tail = "\n".join(
        line for line in output.splitlines()[-80:] if not line.startswith("krita.lib.resources")
    )
    report_path = out_dir / "report.json"
    if not report_path.is_file():
        pytest.fail(f"Krita wrote no report (exit status {returncode}); its output:\n{tail}")
    report = json.loads(report_path.read_text())
    if report.get("error"):
        pytest.fail(f"the script inside Krita failed:\n{report['error']}\nKrita's output:\n{tail}")
    return KritaRun(report, output, seconds, returncode)


def run_krita(home: KritaHome, module: str, spec: dict, env: Dict[str, str], gui=False):
    return finish_krita(start_krita(home, module, spec, env, gui))


# --- The daemon ------------------------------------------------------------------


def tessera_bin() -> Path:
    exe = REPO / "target" / "debug" / "tessera"
    require(str(exe), exe.is_file(), "cargo build -p tessera, as scripts/test does")
    return exe


def require_daemon() -> None:
    """The daemon's binary and the tiny model the tests give it."""
    tessera_bin()
    require(f"the tiny test model {TINY_MODEL}", TINY_MODEL.is_file(), "it comes with the daemon")


def ort_lib() -> str:
    configured = os.environ.get("TESSERA_ORT_LIB")
    if configured:
        return configured
    for folder in (REPO / ".cache" / "ort-data" / "runtime", REPO / ".cache" / "onnxruntime"):
        for candidate in sorted(folder.glob("libonnxruntime.*")):
            return str(candidate)
    require("an ONNX Runtime library", False, "set TESSERA_ORT_LIB or run scripts/test")
    return ""


class Daemon:
    """``tessera serve`` in its own data directory with the tiny model."""

    def __init__(self, root: Path, config: str = "", env: Optional[Dict[str, str]] = None) -> None:
        from tessera_client import Client, DaemonNotRunning

        self.root = root
        self.socket = str(root / "tessera.sock")
        upscalers = root / "models" / "upscalers"
        upscalers.mkdir(parents=True, exist_ok=True)
        shutil.copy(TINY_MODEL, upscalers / "tiny-x4.safetensors")
        (root / "config.toml").write_text(config)
        self.env = {
            "TESSERA_DATA_DIR": str(root),
            "TESSERA_SOCKET": self.socket,
            "TESSERA_ORT_LIB": ort_lib(),
            **(env or {}),
        }
        self.process: Optional[subprocess.Popen] = None
        self._client = Client
        self._not_running = DaemonNotRunning

    def start(self) -> "Daemon":
        env = dict(os.environ, **self.env)
        env.pop("ORT_DYLIB_PATH", None)
        self.process = subprocess.Popen(
            [str(tessera_bin()), "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "serve.log", "ab"),
        )
        self.wait_listening(self.process)
        return self

    def wait_listening(self, process: Optional[subprocess.Popen] = None, timeout=30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._client(self.socket, agent="pytest-probe").close()
                return
            except self._not_running:
                if process is not None and process.poll() is not None:
                    log = (self.root / "serve.log").read_text(errors="replace")
                    raise RuntimeError("the daemon exited:\n" + log) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self):
        return self._client(self.socket, agent="pytest")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, **self.env)
        return subprocess.run(
            [str(tessera_bin()), *args], env=env, capture_output=True, text=True, timeout=300
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=10)

    def shutdown_any(self) -> None:
        """Stops whatever daemon listens on the socket (one the plug-in started)."""
        try:
            with self.client() as client:
                client.shutdown()
        except (ConnectionError, OSError):
            pass


#: The daemon's tiles are small, so that modest images make many network calls.
DAEMON_CONFIG = "[upscale]\ntile = 32\noverlap = 4\n"


@pytest.fixture(scope="module")
def daemon():
    require_daemon()
    root = short_temp_dir("tk")
    running = Daemon(root, DAEMON_CONFIG).start()
    yield running
    running.stop()
    shutil.rmtree(root, ignore_errors=True)


class FakeDaemon:
    def __init__(self, *args: str) -> None:
        self.root = short_temp_dir("tf")
        self.socket = str(self.root / "tessera.sock")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "fake_daemon.py"), self.socket, *args]
        )
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            assert time.monotonic() < deadline and self.process.poll() is None
            time.sleep(0.02)

    @property
    def env(self) -> Dict[str, str]:
        return {"TESSERA_SOCKET": self.socket, "TESSERA_DATA_DIR": str(self.root)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def fake_daemon():
    started: List[FakeDaemon] = []

    def start(*args: str) -> FakeDaemon:
        fake = FakeDaemon(*args)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


GUI_DRIVER = Path(__file__).resolve().parent / "gui_driver"


def install_gui_driver(home: KritaHome, tessera: Optional[Dict[str, str]] = None) -> None:
    """Adds the test-only driver plug-in to the profile and enables it, with
    the plug-in's ``[tessera]`` settings given (a fresh ``kritarc`` otherwise)."""
    pykrita = home.resources / "pykrita"
    shutil.copy(GUI_DRIVER / "tessera_selftest.desktop", pykrita)
    target = pykrita / "tessera_selftest"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(GUI_DRIVER / "tessera_selftest", target)
    home.write_kritarc({"tessera_selftest": True}, tessera)
