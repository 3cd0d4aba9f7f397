"""Finding and starting the daemon, in the docker's words: the rules are
``tessera_client.launcher``'s (the same for every client, see
``docs/architecture.md``, "Starting the daemon"); this module adds the
docker's setting for the program and the sentences the docker shows.

No Qt here; starting a process takes a few milliseconds, and the caller
polls for it to listen without blocking.
"""

import subprocess
from typing import Mapping, Optional

from .proto import DaemonNotRunning, tessera_client

_core = tessera_client.launcher

EXE = _core.EXE
LaunchError = _core.LaunchError
DaemonCrashed = _core.DaemonCrashed
candidates = _core.candidates
child_environment = _core.child_environment
ended_abnormally = _core.ended_abnormally
exit_description = _core.exit_description
start_daemon = _core.start_daemon
start_log_path = _core.start_log_path


class AutoStartOff(DaemonNotRunning):
    """No daemon answers, and the user turned off starting one."""


def find_tessera(configured: str = "", env: Optional[Mapping[str, str]] = None) -> str:
    """The program to run: ``configured`` (the docker's setting) when given,
    else the client's search. Raises :class:`LaunchError` in words for the docker."""
    try:
        return _core.find_tessera(configured, env)
    except _core.ProgramInvalid as e:
        if not configured:
            raise
        raise LaunchError(
            f"The tessera program set in the settings ({e.path}) does not exist or cannot be run."
        ) from None
    except _core.ProgramNotFound as e:
        raise LaunchError(
            "The Tessera daemon is not running and the tessera program was not found on PATH "
            f"(nor in {', '.join(e.looked)}). Install Tessera, or set the program's path in "
            "the docker's Advanced section."
        ) from None


def start_failure(process: subprocess.Popen, data_dir: str) -> str:
    """Why a daemon that exited during its start failed, from its output."""
    reason = _core.start_failure_reason(data_dir, process.returncode)
    return f"The daemon could not start: {reason}"
