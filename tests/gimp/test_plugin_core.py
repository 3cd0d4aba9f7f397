"""The plug-in's GIMP-free parts (``tessera_gimp``) and its installer, on the
host's Python: arguments, pixel layouts, finding and starting the daemon,
the messages."""

import importlib.util
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

import tessera_gimp as core
from tessera_client import (
    Channels,
    ConnectionClosed,
    DaemonNotRunning,
    ErrorKind,
    JobParams,
    Progress,
    SampleFormat,
    TesseraError,
    Transfer,
)

REPO = Path(__file__).resolve().parents[2]


def _load_installer():
    spec = importlib.util.spec_from_file_location("install", REPO / "plugin-gimp" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Arguments ----------------------------------------------------------------


def test_arguments_have_unique_names_and_sane_defaults():
    names = [a.name for a in core.ARGUMENTS]
    assert names == ["scale", "upscaler", "output"]
    for argument in core.ARGUMENTS:
        if argument.kind == "double":
            assert argument.minimum <= argument.default <= argument.maximum
        if argument.kind == "choice":
            assert argument.default in [nick for nick, _, _ in argument.choices]


def test_every_job_argument_is_a_job_parameter():
    defaults = {a.name: a.default for a in core.ARGUMENTS}
    params = core.job_params(defaults)
    assert params == {"scale": 2.0, "upscaler": None}
    JobParams(**params)  # every key is a field


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"scale": 3, "upscaler": "4x-UltraSharp", "output": "new-image"}, (3.0, "4x-UltraSharp")),
        ({"scale": 1.5, "upscaler": "  ", "output": "new-layer"}, (1.5, None)),
        ({"scale": 16.0, "upscaler": None, "output": "new-layer"}, (16.0, None)),
    ],
)
def test_job_params_from_values(values, expected):
    params = core.job_params(values)
    assert (params["scale"], params["upscaler"]) == expected
    assert isinstance(params["scale"], float)


# --- Pixel layouts ------------------------------------------------------------


@pytest.mark.parametrize(
    "precision, base, alpha, expected",
    [
        ("u8-non-linear", "rgb", True, ("R'G'B'A u8", Channels.RGBA, SampleFormat.U8, "SRGB")),
        ("u8-perceptual", "rgb", False, ("R~G~B~ u8", Channels.RGB, SampleFormat.U8, "SRGB")),
        ("u8-linear", "gray", True, ("YA u8", Channels.GRAY_ALPHA, SampleFormat.U8, "LINEAR")),
        ("u16-non-linear", "gray", False, ("Y' u16", Channels.GRAY, SampleFormat.U16, "SRGB")),
        ("u16-linear", "rgb", True, ("RGBA u16", Channels.RGBA, SampleFormat.U16, "LINEAR")),
        ("u32-linear", "rgb", True, ("RGBA float", Channels.RGBA, SampleFormat.F32, "LINEAR")),
        ("half-non-linear", "rgb", True, ("R'G'B'A half", Channels.RGBA, SampleFormat.F16, "SRGB")),
        ("float-linear", "rgb", False, ("RGB float", Channels.RGB, SampleFormat.F32, "LINEAR")),
        (
            "double-perceptual",
            "gray",
            True,
            ("Y~A float", Channels.GRAY_ALPHA, SampleFormat.F32, "SRGB"),
        ),
    ],
)
def test_layout_for_each_precision(precision, base, alpha, expected):
    babl, channels, sample, transfer = expected
    assert core.layout_for(precision, base, alpha) == (
        babl,
        channels,
        sample,
        Transfer[transfer],
    )


def test_indexed_and_unknown_precisions_are_refused_in_words():
    with pytest.raises(core.UnsupportedImage, match="RGB and grayscale.*Image ▸ Mode"):
        core.layout_for("u8-non-linear", "indexed", False)
    with pytest.raises(core.UnsupportedImage, match="u64-linear"):
        core.layout_for("u64-linear", "rgb", True)


# --- Finding the program --------------------------------------------------------


def _program(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_tessera_bin_wins(tmp_path):
    program = _program(tmp_path / "my-tessera")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    _program(on_path / "tessera")
    env = {"TESSERA_BIN": str(program), "PATH": str(on_path), "HOME": str(tmp_path)}
    assert core.find_tessera(env) == str(program)


def test_tessera_on_path_then_home_folders(tmp_path):
    on_path = tmp_path / "bin"
    on_path.mkdir()
    env = {"PATH": str(on_path), "HOME": str(tmp_path)}
    cargo = tmp_path / ".cargo" / "bin"
    cargo.mkdir(parents=True)
    _program(cargo / "tessera")
    assert core.find_tessera(env) == str(cargo / "tessera")
    _program(on_path / "tessera")
    assert core.find_tessera(env) == str(on_path / "tessera")


def test_missing_program_says_where_it_looked(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    (tmp_path / "tessera").write_text("not executable")
    with pytest.raises(core.TesseraMissing) as caught:
        core.find_tessera(env)
    message = str(caught.value)
    assert message.startswith("Tessera is not running, and its program `tessera` was not found")
    assert str(tmp_path / ".local" / "bin") in message
    assert "set TESSERA_BIN" in message


def test_wrong_tessera_bin_is_named(tmp_path):
    env = {"TESSERA_BIN": str(tmp_path / "nope"), "PATH": "", "HOME": str(tmp_path)}
    with pytest.raises(core.TesseraMissing, match="TESSERA_BIN is set to .*nope"):
        core.find_tessera(env)


# --- Starting the daemon ------------------------------------------------------


@pytest.fixture
def daemon_env(tmp_path):
    data = tmp_path / "data"
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "TESSERA_DATA_DIR": str(data),
        "TESSERA_SOCKET": str(tmp_path / "t.sock"),
    }


def _fake_tessera(tmp_path: Path) -> Path:
    """A ``tessera`` program whose ``serve`` runs the stand-in daemon and
    writes its process id next to it."""
    paths = [str(REPO / "shared" / "python"), str(Path(__file__).parent)]
    return _program(
        tmp_path / "tessera",
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        f"sys.path[:0] = {paths!r}\n"
        "from gimp_fake_daemon import FakeDaemon\n"
        "assert sys.argv[1:] == ['serve'], sys.argv\n"
        "time.sleep(0.3)  # a daemon takes a moment to listen\n"
        "FakeDaemon(os.environ['TESSERA_SOCKET'])\n"
        f"open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n",
    )


def test_connect_or_start_starts_a_detached_daemon(tmp_path, daemon_env):
    daemon_env["TESSERA_BIN"] = str(_fake_tessera(tmp_path))
    started, spawned = [], []
    client = core.connect_or_start(daemon_env, on_start=started.append, on_spawn=spawned.append)
    try:
        assert started == [daemon_env["TESSERA_BIN"]]
        assert client.daemon_agent == "fake-tessera 0"
        assert [m.name for m in client.list_models()] == ["fake-x2", "fake-sharp"]
        pid = int((tmp_path / "pid").read_text())
        assert spawned == [pid]
        # Its own session: GIMP killing the plug-in does not reach it.
        assert os.getsid(pid) == pid != os.getsid(0)
        # Once running, it is reused: the program is not needed any more.
        daemon_env["TESSERA_BIN"] = str(tmp_path / "gone")
        started.clear()
        core.connect_or_start(daemon_env, on_start=started.append).close()
        assert started == []
    finally:
        client.close()
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
    assert (tmp_path / "data" / "logs" / "daemon-start.log").is_file()


def test_a_daemon_that_cannot_start_is_explained(tmp_path, daemon_env):
    daemon_env["TESSERA_BIN"] = str(
        _program(
            tmp_path / "tessera",
            "#!/bin/sh\necho 'tessera: cannot load the ONNX Runtime library' >&2\nexit 1\n",
        )
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError) as caught:
        core.connect_or_start(daemon_env)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(
        "Tessera's service could not start: cannot load the ONNX Runtime library"
    )
    assert "daemon-start.log" in message


def test_a_daemon_that_never_listens_times_out(tmp_path, daemon_env):
    pid_file = tmp_path / "pid"
    program = _program(tmp_path / "tessera", f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 30\n")
    try:
        with pytest.raises(RuntimeError, match="did not answer on .* within 1 s"):
            core.start_daemon(str(program), daemon_env, timeout=1.0)
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


# --- Words ----------------------------------------------------------------------


def test_progress_text():
    one = Progress(1, 0, 1, "upscale", 1, 1, 3, 12, 0.2)
    assert core.progress_text(one) == "Tessera: upscale, tile 3 of 12"
    many = Progress(1, 1, 2, "denoise", 4, 7, 2, 6, 0.7)
    assert core.progress_text(many) == "Tessera: stage 2 of 2, denoise, step 4 of 7, tile 2 of 6"


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            TesseraError(ErrorKind.MODEL_NOT_FOUND, "there is no upscaler named “x”; available: a"),
            "Tessera could not upscale: there is no upscaler named “x”; available: a.",
        ),
        (
            TesseraError(ErrorKind.IMAGE_TOO_LARGE, "the output would be too large."),
            "Tessera could not upscale: the output would be too large.",
        ),
        (
            ConnectionClosed("gone"),
            "The connection to Tessera broke before the result arrived; "
            "its service may have stopped (gone).",
        ),
        (
            DaemonNotRunning("/run/t.sock"),
            "Tessera is not running and could not be reached: the Tessera daemon is not "
            "running (nothing listens at /run/t.sock); start it with `tessera serve`.",
        ),
        (TimeoutError("no answer"), "Tessera did not answer in time: no answer."),
        (RuntimeError("it broke"), "Tessera could not upscale: it broke"),
        (KeyError("x"), "Tessera failed unexpectedly: KeyError('x')"),
    ],
)
def test_error_text(error, expected):
    assert core.error_text(error) == expected


# --- Installing -------------------------------------------------------------------


def test_default_plug_ins_folders():
    install = _load_installer()
    linux = install.default_dest({"HOME": "/home/u"}, "linux")
    assert linux == "/home/u/.config/GIMP/3.0/plug-ins"
    xdg = install.default_dest({"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"}, "linux")
    assert xdg == "/cfg/GIMP/3.0/plug-ins"
    mac = install.default_dest({"HOME": "/Users/u"}, "darwin")
    assert mac == "/Users/u/Library/Application Support/GIMP/3.0/plug-ins"
    windows = install.default_dest({"HOME": "C:/u", "APPDATA": "C:/u/AppData/Roaming"}, "win32")
    assert windows.replace("\\", "/") == "C:/u/AppData/Roaming/GIMP/3.0/plug-ins"


def test_install_puts_an_executable_plug_in_with_its_client(tmp_path):
    install = _load_installer()
    target = Path(install.install(str(tmp_path)))
    assert target == tmp_path / "tessera-upscale"
    script = target / "tessera-upscale.py"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    assert (target / "tessera_gimp.py").is_file()
    client = REPO / "shared" / "python" / "tessera_client"
    installed = sorted(p.name for p in (target / "tessera_client").glob("*.py"))
    assert installed == sorted(p.name for p in client.glob("*.py"))
    # Again: the old copy is replaced, nothing else is left behind.
    (target / "stale.py").write_text("")
    install.install(str(tmp_path))
    assert not (target / "stale.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tessera-upscale"]
