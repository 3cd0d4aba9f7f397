"""GIMP 3 for the plug-in's tests: the Debian trixie root that
``scripts/setup-gimp-root`` builds (and caches), the plug-in installed there
the way ``plugin-gimp/install.py`` installs it for a user, and a way to run
``gimp-console-3.0`` (or ``gimp-3.0`` under ``xvfb-run``) in it with a batch
script.

Each GIMP run happens in its own mount and network namespace (``unshare``):
the root sees the host's ``/proc`` and one host folder at ``/mnt`` (the plug-in's
home, the scripts, the sockets of the daemons the tests start); the mounts
vanish with the run, and the network namespace keeps Xvfb's display apart from
any other X server on the machine. Every run is wrapped in ``timeout``.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SETUP_ROOT = REPO / "scripts" / "setup-gimp-root"
IN_ROOT = HERE / "in-root"
SCRIPTS = HERE / "gimp_scripts"
#: Where the shared host folder appears inside the root.
MOUNT = "/mnt"
#: Seconds one GIMP run may take (the first one queries every plug-in).
GIMP_TIMEOUT = 180


def _root_path() -> Path:
    configured = os.environ.get("TESSERA_GIMP_ROOT")
    if configured and Path(configured, ".tessera-root").is_file():
        return Path(configured)
    started = time.monotonic()
    done = subprocess.run([str(SETUP_ROOT)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"scripts/setup-gimp-root failed:\n{done.stderr[-4000:]}")
    took = time.monotonic() - started
    if took > 5:
        print(f"\nbuilt the GIMP root in {took:.0f} s", file=sys.stderr)
    return Path(done.stdout.strip().splitlines()[-1])


class GimpRun:
    """What one GIMP run left: its exit status, its output, and the plug-in's
    test log (one dict per event)."""

    def __init__(self, returncode: int, output: str, log_path: Path) -> None:
        self.returncode = returncode
        self.output = output
        self.events: List[Dict[str, Any]] = []
        if log_path.is_file():
            for line in log_path.read_text().splitlines():
                self.events.append(json.loads(line))

    def of(self, kind: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


class Gimp:
    """GIMP 3 in the root, with the plug-in installed in ``home``."""

    def __init__(self, root: Path, shared: Path) -> None:
        self.root = root
        self.shared = shared
        self.home = shared / "home"
        self.plug_ins = self.home / ".config" / "GIMP" / "3.0" / "plug-ins"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "plugin-gimp" / "install.py"),
                "--dest",
                str(self.plug_ins),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.copytree(SCRIPTS, shared / "scripts")
        self._runs = 0

    def inside(self, host_path: Path) -> str:
        """``host_path`` (under the shared folder) as the root sees it."""
        return MOUNT + "/" + str(Path(host_path).relative_to(self.shared))

    def folder(self, name: str) -> Path:
        """A new folder in the shared one."""
        path = self.shared / name
        path.mkdir(parents=True)
        return path

    def command(self, argv: List[str], env: Dict[str, str], timeout: int) -> List[str]:
        unshare = ["unshare", "--mount", "--net", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.insert(1, "--map-root-user")
        environment = {
            "HOME": self.inside(self.home),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TESSERA_DATA_DIR": self.inside(self.shared / "data"),
        }
        environment.update(env)
        return [
            *unshare,
            "--",
            "sh",
            str(IN_ROOT),
            str(self.root),
            str(self.shared),
            "env",
            "-i",
            *(f"{k}={v}" for k, v in environment.items()),
            "timeout",
            "-k",
            "5",
            str(timeout),
            *argv,
        ]

    def start(
        self,
        script: str,
        args: Any = None,
        env: Optional[Dict[str, str]] = None,
        gui: bool = False,
        timeout: int = GIMP_TIMEOUT,
    ) -> "RunningGimp":
        """Starts GIMP with the batch script ``gimp_scripts/<script>``;
        ``args`` is JSON for the script ($TESSERA_TEST_ARGS)."""
        self._runs += 1
        work = self.folder(f"run-{self._runs}-{Path(script).stem}")
        env = dict(env or {})
        if args is not None:
            (work / "args.json").write_text(json.dumps(args))
            env["TESSERA_TEST_ARGS"] = self.inside(work / "args.json")
        log = work / "plugin-log.jsonl"
        env["TESSERA_GIMP_TEST_LOG"] = self.inside(log)
        batch = f'exec(open("{self.inside(self.shared / "scripts" / script)}").read())'
        if gui:
            argv = [
                "xvfb-run",
                "-a",
                "-s",
                "-screen 0 1280x1024x24",
                "gimp-3.0",
                "--no-splash",
                "--batch-interpreter",
                "python-fu-eval",
                "-b",
                batch,
                "--quit",
            ]
        else:
            argv = [
                "gimp-console-3.0",
                "-i",
                "--batch-interpreter",
                "python-fu-eval",
                "-b",
                batch,
                "--quit",
            ]
        output = open(work / "output.txt", "wb")
        process = subprocess.Popen(
            self.command(argv, env, timeout),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()
        return RunningGimp(process, work, log, timeout + 15)

    def run(self, script: str, args: Any = None, **kwargs: Any) -> GimpRun:
        return self.start(script, args, **kwargs).wait()


class RunningGimp:
    def __init__(self, process: subprocess.Popen, work: Path, log: Path, limit: int) -> None:
        self.process = process
        self.work = work
        self.log = log
        self.limit = limit

    def events(self) -> List[Dict[str, Any]]:
        """The plug-in's test log so far."""
        if not self.log.is_file():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait(self) -> GimpRun:
        try:
            self.process.wait(timeout=self.limit)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        output = (self.work / "output.txt").read_text(errors="replace")
        return GimpRun(self.process.returncode, output, self.log)


@pytest.fixture(scope="session")
def gimp(tmp_path_factory) -> Gimp:
    """GIMP 3 in the cached trixie root, with the plug-in installed."""
    root = _root_path()
    shared = tmp_path_factory.mktemp("gimp")
    return Gimp(root, shared)
