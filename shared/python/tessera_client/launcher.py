"""Finding the ``tessera`` program and starting ``tessera serve`` when no
daemon answers: the one set of rules for every Python client (the Krita and
GIMP plug-ins), matching what ``tessera upscale`` does in
``daemon/src/cli/launch.rs``.

Where the program is looked for, in order (``docs/architecture.md``,
"Starting the daemon"):

1. a path the user configured (the Krita docker's setting), else
   ``$TESSERA_BIN``; either must name a program, or the search stops with a
   :class:`ProgramInvalid` naming it;
2. ``tessera`` on ``PATH``;
3. the folder ``tessera-install`` puts it in (the Rust installer's
   ``Home::bin_dir``: ``~/.local/bin``, on Windows
   ``%LOCALAPPDATA%\\Programs\\Tessera``);
4. ``~/.cargo/bin`` (``cargo install``);
5. on Linux and macOS, ``/usr/local/bin`` (missing from the ``PATH`` of apps
   started from a desktop on macOS).

The daemon starts like the CLI starts it: ``<program> serve`` in its own
process group (it outlives the editor), standard input and output closed,
its standard error in ``<data dir>/logs/daemon-start.log``, whose last
``tessera:``/``ERROR`` line explains a failed start.

Nothing here waits on a socket: :func:`start_daemon` returns the process at
once, for an event loop to poll; :func:`start_and_connect` is the blocking
loop for a thread that may wait.
"""

import os
import shutil
import subprocess
import sys
import time
from typing import Callable, List, Mapping, Optional, TypeVar

from .errors import ConnectionClosed, DaemonNotRunning

#: The program's file name on this platform.
EXE = "tessera.exe" if sys.platform == "win32" else "tessera"
#: Set to the ``tessera`` program to use, when it is not on ``PATH``.
BIN_ENV = "TESSERA_BIN"
#: How long a freshly started daemon may take to listen (as in ``launch.rs``).
START_TIMEOUT = 30.0
#: The start-up log's name in ``<data dir>/logs/``.
START_LOG = "daemon-start.log"

#: Environment variables of an AppImage'd or bundled editor that must not leak
#: into the daemon (its libraries and Python are the editor's own).
_BUNDLE_VARIABLES = ("LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONPATH", "QT_PLUGIN_PATH")

#: Exit statuses of a daemon that stopped as asked: 0 (``tessera stop``), 2
#: (another daemon already serves), or a stop signal from the user or the system.
_STOPPED = (0, 2, -2, -1, -15)  # SIGINT, SIGHUP, SIGTERM

T = TypeVar("T")


class LaunchError(Exception):
    """The daemon cannot be started; the message says why."""


class ProgramInvalid(LaunchError):
    """The configured program (or ``$TESSERA_BIN``) is not a program."""

    def __init__(self, path: str, source: str) -> None:
        super().__init__(
            f"{source} is set to {path}, which is not a program; correct {source} or unset it"
        )
        self.path = path
        #: Where the path came from: ``"TESSERA_BIN"`` or the caller's name for its setting.
        self.source = source


class ProgramNotFound(LaunchError):
    """No ``tessera`` program on ``PATH`` nor in the install folders."""

    def __init__(self, looked: List[str]) -> None:
        super().__init__(
            f"the tessera program was not found on PATH nor in {', '.join(looked)}; install "
            f"Tessera, or set {BIN_ENV} to the program's path"
        )
        #: The install folders searched after ``PATH``.
        self.looked = looked


class StartFailed(LaunchError):
    """A daemon started here exited before it listened."""

    def __init__(self, reason: str, log_path: str) -> None:
        super().__init__(f"the daemon could not start: {reason} (full output in {log_path})")
        #: Its own words, from its start-up log.
        self.reason = reason
        self.log_path = log_path


class StartTimedOut(LaunchError):
    """A daemon started here did not listen in time."""

    def __init__(self, address: str, timeout: float, log_path: str) -> None:
        super().__init__(
            f"the daemon started but did not listen on {address} within {timeout:.0f} s "
            f"(see {log_path})"
        )
        self.address = address
        self.timeout = timeout
        self.log_path = log_path


class DaemonCrashed(ConnectionClosed):
    """A daemon started here ended abnormally while connected."""

    def __init__(self, how: str) -> None:
        super().__init__(f"the daemon crashed ({how})")
        #: E.g. "killed by signal 9 (SIGKILL)" or "exit status 101".
        self.how = how


# --- Finding the program ------------------------------------------------------


def _home(env: Mapping[str, str], platform: str) -> str:
    # As the installer's Home::from_env: Windows programs find the profile in USERPROFILE.
    first, second = ("USERPROFILE", "HOME") if platform == "win32" else ("HOME", "USERPROFILE")
    return env.get(first) or env.get(second) or ""


def install_folders(
    env: Optional[Mapping[str, str]] = None, platform: Optional[str] = None
) -> List[str]:
    """The folders searched after ``PATH``, in order (steps 3 to 5 above)."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    home = _home(env, platform)
    folders = []
    if platform == "win32":
        local = env.get("LOCALAPPDATA") or (os.path.join(home, "AppData", "Local") if home else "")
        if local:
            folders.append(os.path.join(local, "Programs", "Tessera"))
    elif home:
        folders.append(os.path.join(home, ".local", "bin"))
    if home:
        folders.append(os.path.join(home, ".cargo", "bin"))
    if platform != "win32":
        folders.append("/usr/local/bin")
    return folders


def candidates(configured: str = "", env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Every place looked at, in order, without repeats."""
    env = os.environ if env is None else env
    found: List[str] = []
    explicit = configured or env.get(BIN_ENV)
    if explicit:
        found.append(explicit)
    on_path = shutil.which(EXE, path=env.get("PATH", os.defpath))
    if on_path:
        found.append(on_path)
    found += [os.path.join(folder, EXE) for folder in install_folders(env)]
    unique: List[str] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def is_program(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_tessera(
    configured: str = "",
    env: Optional[Mapping[str, str]] = None,
    configured_source: str = "the configured program",
) -> str:
    """The program to run: ``configured`` when given, else ``$TESSERA_BIN``,
    else the first program of :func:`candidates`. Raises
    :class:`ProgramInvalid` for a configured path that is no program, and
    :class:`ProgramNotFound` when there is none."""
    env = os.environ if env is None else env
    if configured and not is_program(configured):
        raise ProgramInvalid(configured, configured_source)
    explicit = env.get(BIN_ENV)
    if not configured and explicit and not is_program(explicit):
        raise ProgramInvalid(explicit, BIN_ENV)
    for path in candidates(configured, env):
        if is_program(path):
            return path
    raise ProgramNotFound(install_folders(env))


# --- Starting it ------------------------------------------------------------------


def child_environment(env: Optional[Mapping[str, str]] = None) -> dict:
    """The daemon's environment: this one, less a bundled editor's library
    and Python paths."""
    env = dict(os.environ if env is None else env)
    if env.get("APPIMAGE") or getattr(sys, "frozen", False):
        for name in _BUNDLE_VARIABLES:
            env.pop(name, None)
    return env


def start_log_path(data_dir: str) -> str:
    return os.path.join(data_dir, "logs", START_LOG)


def start_daemon(
    program: str, data_dir: str, env: Optional[Mapping[str, str]] = None
) -> subprocess.Popen:
    """Starts ``program serve`` detached and returns the process at once. The
    daemon finds its data directory and socket from ``env`` (default: this
    process's), as the caller did (``TESSERA_DATA_DIR``, ``TESSERA_SOCKET``).
    Raises :class:`LaunchError`."""
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
            env=child_environment(env),
            close_fds=True,
            **kwargs,
        )
    except OSError as e:
        raise LaunchError(f"Cannot start {program}: {e}") from None
    finally:
        log_file.close()


def start_failure_reason(data_dir: str, returncode: Optional[int]) -> str:
    """Why a daemon that exited during its start failed, in its own words:
    the last ``tessera:`` or ``ERROR`` line of its start-up log (without the
    ``tessera:``), as ``launch.rs`` reads it."""
    try:
        with open(start_log_path(data_dir), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        lines = []
    reason = next(
        (line for line in reversed(lines) if "tessera:" in line or "ERROR" in line),
        lines[-1] if lines else f"it exited with status {returncode}",
    )
    if reason.startswith("tessera:"):
        reason = reason[len("tessera:") :].strip()
    return reason


def start_and_connect(
    program: str,
    data_dir: str,
    connect: Callable[[], T],
    address: str,
    timeout: float = START_TIMEOUT,
    env: Optional[Mapping[str, str]] = None,
    on_spawn: Optional[Callable[[int], object]] = None,
) -> T:
    """Starts the daemon and calls ``connect()`` every 0.1 s until it stops
    raising :class:`DaemonNotRunning`; returns what it returns. Blocks:
    for a thread that may wait (the GIMP plug-in, scripts). Raises
    :class:`StartFailed` when the daemon exits first, :class:`StartTimedOut`
    after ``timeout`` seconds."""
    process = start_daemon(program, data_dir, env)
    if on_spawn is not None:
        on_spawn(process.pid)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect()
        except DaemonNotRunning:
            pass
        code = process.poll()
        if code is not None:
            raise StartFailed(start_failure_reason(data_dir, code), start_log_path(data_dir))
        if time.monotonic() > deadline:
            raise StartTimedOut(address, timeout, start_log_path(data_dir))
        time.sleep(0.1)


# --- How it ended ---------------------------------------------------------------


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


def ended_abnormally(returncode: Optional[int]) -> bool:
    """Whether a daemon that exited with ``returncode`` crashed."""
    return returncode is not None and returncode not in _STOPPED
