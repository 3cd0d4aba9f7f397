"""Finding the ``tessera`` program and starting ``tessera serve`` when no
daemon answers, the way ``tessera upscale`` does: in the background, in its
own process group so that it outlives Krita, with its start-up output in
``<data dir>/logs/daemon-start.log``.

No Qt here; starting a process takes a few milliseconds, and the caller
polls for it to listen without blocking.
"""

import os
import shutil
import subprocess
import sys
from typing import List, Mapping, Optional

from .proto import ConnectionClosed, DaemonNotRunning

EXE = "tessera.exe" if sys.platform == "win32" else "tessera"

#: Environment variables of an AppImage'd or bundled Krita that must not leak
#: into the daemon (its libraries and Python are Krita's own).
_BUNDLE_VARIABLES = ("LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONPATH", "QT_PLUGIN_PATH")


class LaunchError(Exception):
    """The daemon cannot be started; the message says why, for the user."""


class AutoStartOff(DaemonNotRunning):
    """No daemon answers, and the user turned off starting one."""


class DaemonCrashed(ConnectionClosed):
    """A daemon this plug-in started ended abnormally while connected."""

    def __init__(self, how: str) -> None:
        super().__init__(f"the daemon crashed ({how})")
        #: E.g. "killed by signal 9 (SIGKILL)" or "exit status 101".
        self.how = how


def exit_description(returncode: int) -> str:
    """How a process ended, in words, from ``Popen.returncode``."""
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"killed by signal {-returncode}"
        return f"killed by signal {-returncode} ({name})"
    return f"exit status {returncode}"


#: Exit statuses of a daemon that stopped as asked: 0 (``tessera stop``), 2
#: (another daemon already serves), or a stop signal from the user or the system.
_STOPPED = (0, 2, -2, -1, -15)  # SIGINT, SIGHUP, SIGTERM


def ended_abnormally(returncode: Optional[int]) -> bool:
    """Whether a daemon that exited with ``returncode`` crashed."""
    return returncode is not None and returncode not in _STOPPED


def candidates(env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Where an installed ``tessera`` may be besides PATH."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    places = [
        os.path.join(home, ".local", "bin", EXE),
        os.path.join(home, ".cargo", "bin", EXE),
    ]
    local_app_data = env.get("LOCALAPPDATA")
    if local_app_data:
        places.append(os.path.join(local_app_data, "Programs", "Tessera", EXE))
    if sys.platform == "darwin":
        places.append("/Applications/Tessera.app/Contents/MacOS/tessera")
    return places


def find_tessera(configured: str = "", env: Optional[Mapping[str, str]] = None) -> str:
    """The program to run: ``configured`` when given, else ``tessera`` on
    PATH or in a usual install folder. Raises :class:`LaunchError`."""
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise LaunchError(
            f"The tessera program set in the settings ({configured}) does not exist or cannot be "
            "run."
        )
    env = os.environ if env is None else env
    found = shutil.which(EXE, path=env.get("PATH"))
    if found:
        return found
    for place in candidates(env):
        if os.path.isfile(place) and os.access(place, os.X_OK):
            return place
    looked = ", ".join(os.path.dirname(place) for place in candidates(env))
    raise LaunchError(
        "The Tessera daemon is not running and the tessera program was not found on PATH "
        f"(nor in {looked}). Install Tessera, or set the program's path in the docker's "
        "Advanced section."
    )


def child_environment(env: Optional[Mapping[str, str]] = None) -> dict:
    env = dict(os.environ if env is None else env)
    if env.get("APPIMAGE") or getattr(sys, "frozen", False):
        for name in _BUNDLE_VARIABLES:
            env.pop(name, None)
    return env


def start_log_path(data_dir: str) -> str:
    return os.path.join(data_dir, "logs", "daemon-start.log")


def start_daemon(program: str, data_dir: str) -> subprocess.Popen:
    """Starts ``program serve`` detached; returns the process. The daemon
    finds its data directory and socket from the same environment as the
    plug-in (``TESSERA_DATA_DIR``, ``TESSERA_SOCKET``)."""
    log_path = start_log_path(data_dir)
    try:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        log_file = open(log_path, "wb")
    except OSError as e:
        raise LaunchError(f"Cannot write the daemon's log {log_path}: {e}") from None
    kwargs = {}
    if sys.platform == "win32":  # pragma: no cover - Windows
        kwargs["creationflags"] = 0x00000008 | 0x00000200  # DETACHED | NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True
    try:
        return subprocess.Popen(
            [program, "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=child_environment(),
            close_fds=True,
            **kwargs,
        )
    except OSError as e:
        raise LaunchError(f"Cannot start {program}: {e}") from None
    finally:
        log_file.close()


def start_failure(process: subprocess.Popen, data_dir: str) -> str:
    """Why a daemon that exited during its start failed, from its output."""
    try:
        with open(start_log_path(data_dir), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        lines = []
    reason = next(
        (line for line in reversed(lines) if "tessera:" in line or "ERROR" in line),
        lines[-1] if lines else f"it exited with status {process.returncode}",
    )
    if reason.startswith("tessera:"):
        reason = reason[len("tessera:") :].strip()
    return f"The daemon could not start: {reason}"
