"""The one set of rules for finding and starting the daemon
(``tessera_client.launcher``), used by both editor plug-ins."""

import os
import stat
import sys
from pathlib import Path

import pytest

from tessera_client import launcher
from tessera_client.errors import DaemonNotRunning


def _program(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_install_folders_are_the_installers_then_cargos_then_usr_local():
    linux = launcher.install_folders({"HOME": "/home/ana"}, "linux")
    assert linux == ["/home/ana/.local/bin", "/home/ana/.cargo/bin", "/usr/local/bin"]
    mac = launcher.install_folders({"HOME": "/Users/ana"}, "darwin")
    assert mac == ["/Users/ana/.local/bin", "/Users/ana/.cargo/bin", "/usr/local/bin"]
    windows = launcher.install_folders(
        {"USERPROFILE": "C:/Users/ana", "HOME": "/msys/home", "LOCALAPPDATA": "C:/L"}, "win32"
    )
    assert [p.replace("\\", "/") for p in windows] == [
        "C:/L/Programs/Tessera",
        "C:/Users/ana/.cargo/bin",
    ]
    no_local = launcher.install_folders({"USERPROFILE": "C:/Users/ana"}, "win32")
    assert no_local[0].replace("\\", "/") == "C:/Users/ana/AppData/Local/Programs/Tessera"
    assert launcher.install_folders({}, "linux") == ["/usr/local/bin"]


def test_the_search_order_is_configured_then_env_then_path_then_folders(tmp_path):
    on_path = _program(tmp_path / "path" / launcher.EXE)
    installed = _program(tmp_path / ".local" / "bin" / launcher.EXE)
    chosen = _program(tmp_path / "chosen")
    env = {"PATH": str(on_path.parent), "HOME": str(tmp_path)}
    assert launcher.find_tessera("", env) == str(on_path)
    assert launcher.find_tessera("", dict(env, TESSERA_BIN=str(chosen))) == str(chosen)
    assert launcher.find_tessera(str(chosen), dict(env, TESSERA_BIN="/nope")) == str(chosen)
    env["PATH"] = ""
    assert launcher.find_tessera("", env) == str(installed)
    assert launcher.candidates("", env)[0] == str(installed)


def test_a_wrong_path_stops_the_search_and_a_missing_program_names_the_folders(tmp_path):
    env = {"PATH": "", "HOME": str(tmp_path), "TESSERA_BIN": str(tmp_path / "nope")}
    with pytest.raises(launcher.ProgramInvalid, match="TESSERA_BIN is set to .*nope") as caught:
        launcher.find_tessera("", env)
    assert caught.value.source == "TESSERA_BIN"
    with pytest.raises(launcher.ProgramInvalid) as caught:
        launcher.find_tessera(str(tmp_path / "gone"), env, configured_source="the setting")
    assert caught.value.source == "the setting"
    del env["TESSERA_BIN"]
    with pytest.raises(launcher.ProgramNotFound) as missing:
        launcher.find_tessera("", env)
    assert str(tmp_path / ".local" / "bin") in missing.value.looked
    assert "set TESSERA_BIN" in str(missing.value)


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for tessera")
def test_a_daemon_that_exits_is_explained_in_its_own_words(tmp_path):
    program = _program(
        tmp_path / "tessera",
        "#!/bin/sh\necho 'INFO starting' >&2\necho 'tessera: no ONNX Runtime library found' >&2\n"
        "echo 'bye' >&2\nexit 1\n",
    )

    def connect():
        raise DaemonNotRunning("/run/t.sock")

    data = str(tmp_path / "data")
    with pytest.raises(launcher.StartFailed) as caught:
        launcher.start_and_connect(str(program), data, connect, "/run/t.sock", timeout=10)
    assert caught.value.reason == "no ONNX Runtime library found"
    assert caught.value.log_path == os.path.join(data, "logs", "daemon-start.log")
    assert launcher.start_failure_reason(str(tmp_path / "none"), 3) == "it exited with status 3"


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for tessera")
def test_the_first_answer_is_returned_and_a_silent_daemon_times_out(tmp_path):
    program = _program(tmp_path / "tessera", "#!/bin/sh\nexec sleep 5\n")
    calls = []

    def connect():
        calls.append(1)
        if len(calls) < 3:
            raise DaemonNotRunning("/run/t.sock")
        return "connected"

    spawned = []
    data = str(tmp_path / "data")
    got = launcher.start_and_connect(str(program), data, connect, "x", on_spawn=spawned.append)
    assert got == "connected" and len(calls) == 3 and spawned
    os.kill(spawned[0], 9)

    def never():
        raise DaemonNotRunning("/run/t.sock")

    with pytest.raises(launcher.StartTimedOut, match="did not listen on /run/t.sock within 0 s"):
        launcher.start_and_connect(str(program), data, never, "/run/t.sock", timeout=0.3)


def test_how_a_daemon_ended():
    assert launcher.exit_description(-9) == "killed by signal 9 (SIGKILL)"
    assert launcher.exit_description(101) == "exit status 101"
    assert not launcher.ended_abnormally(0) and not launcher.ended_abnormally(-15)
    assert launcher.ended_abnormally(101) and launcher.ended_abnormally(-11)
    assert not launcher.ended_abnormally(None)
