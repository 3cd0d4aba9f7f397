"""The words the docker shows: progress, the daemon's state, errors.

No Qt and no Krita here.
"""

import html
from typing import Optional, Sequence

from .launcher import AutoStartOff, DaemonCrashed
from .proto import ConnectionClosed, DaemonNotRunning, ErrorKind, Progress, Status, TesseraError

#: The check box that lets the plug-in start the daemon (named in messages).
AUTO_START_LABEL = "Start the daemon when needed"

#: The one command that installs the default models.
INSTALL_COMMAND = "tessera-install"

#: A headline per error kind; the daemon's own sentence follows it.
_HEADLINES = {
    ErrorKind.PROTOCOL: "The plug-in and the daemon did not understand each other.",
    ErrorKind.VERSION_MISMATCH: "The plug-in and the daemon are from different releases.",
    ErrorKind.FRAME_TOO_LARGE: "The image is too large to send to the daemon.",
    ErrorKind.INVALID_IMAGE: "The daemon could not read the image.",
    ErrorKind.INVALID_PARAMS: "A setting is out of range.",
    ErrorKind.MODEL_NOT_FOUND: "A model is missing.",
    ErrorKind.MODEL_INVALID: "A model file cannot be used.",
    ErrorKind.RUNTIME: "The AI runtime failed.",
    ErrorKind.CANCELLED: "Cancelled.",
    ErrorKind.UNKNOWN_JOB: "The job had already ended.",
    ErrorKind.QUEUE_FULL: "The daemon's queue is full; try again when a job has finished.",
    ErrorKind.TOO_MANY_JOBS: "Too many jobs are waiting; wait for one to finish.",
    ErrorKind.IMAGE_TOO_LARGE: "The image is too large for the daemon's limits.",
    ErrorKind.SHUTTING_DOWN: "The daemon is shutting down.",
    ErrorKind.IO: "The daemon could not read or write a file.",
    ErrorKind.INTERNAL: "The daemon hit a bug.",
    ErrorKind.TOO_MANY_CONNECTIONS: "The daemon serves too many programs at once; close one.",
}


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def error_text_cancelled() -> str:
    return "Cancelled; the document was left as it was."


def error_text(error: BaseException) -> str:
    """One or two plain sentences about ``error`` for the user."""
    if isinstance(error, TesseraError):
        headline = _HEADLINES.get(error.kind, "The daemon reported an error.")
        if error.kind == ErrorKind.CANCELLED:
            return error_text_cancelled()
        detail = _sentence(error.message)
        return headline + (" " + detail if detail else "")
    if isinstance(error, AutoStartOff):
        return (
            f"The Tessera daemon is not running, and \u201c{AUTO_START_LABEL}\u201d is off "
            "(Advanced). Tick it, or start the daemon yourself with `tessera serve`."
        )
    if isinstance(error, DaemonNotRunning):
        return "The Tessera daemon is not running. Start it with `tessera serve`."
    if isinstance(error, DaemonCrashed):
        return (
            f"The Tessera daemon crashed ({error.how}) before the job finished; the document "
            "was left as it was. Its log is in the log folder."
        )
    if isinstance(error, ConnectionClosed):
        return (
            "The connection to the Tessera daemon was lost before the job finished (the "
            "daemon crashed or was killed); the document was left as it was."
        )
    return _sentence(str(error)) or type(error).__name__


def is_cancelled(error: BaseException) -> bool:
    return isinstance(error, TesseraError) and error.kind == ErrorKind.CANCELLED


def progress_text(progress: Progress) -> str:
    """E.g. ``Stage 1/2 · denoise · step 3/7 · tile 2/6 · 3 min 20 s left``;
    parts that say nothing (one stage, one step, one tile, no estimate yet)
    are left out."""
    parts = []
    if progress.stages > 1:
        parts.append(f"Stage {progress.stage + 1}/{progress.stages}")
    parts.append(progress.phase or "working")
    if progress.steps > 1:
        parts.append(f"step {progress.step}/{progress.steps}")
    if progress.tiles > 1:
        parts.append(f"tile {progress.tile}/{progress.tiles}")
    eta = getattr(progress, "eta_seconds", None)
    if eta is not None:
        parts.append(f"{duration(eta)} left")
    text = " · ".join(parts)
    return text[0].upper() + text[1:]


def warnings_note(warnings: Sequence[str]) -> str:
    """The daemon's warnings about a job, as a sentence after its result: e.g.
    ``Note: CUDA is not used: … (the CPU took over).``"""
    if not warnings:
        return ""
    text = "; ".join(w.rstrip(".") for w in warnings)
    return f"Note: {text}."


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    total = max(0, int(round(seconds)))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {(total % 3600) // 60:02d} min"


def percent(fraction: float) -> int:
    """A progress bar value, 0 to 1000 (tenths of a percent), from a fraction."""
    if fraction != fraction:
        return 0
    return max(0, min(1000, int(round(fraction * 1000))))


def status_text(status: Optional[Status], state: str, refused: bool = False) -> str:
    """The daemon line of the docker: connected or not, busy, queue, device.
    ``refused``: the last attempt found no daemon, so a new attempt in the
    background still reads "not running" (it is answered in milliseconds)."""
    if state != "connected" or status is None:
        if state == "starting":
            return "Starting the Tessera daemon…"
        if state == "connecting" and not refused:
            return "Connecting to the Tessera daemon…"
        if state == "connected":
            return "Connected"
        return "Daemon not running"
    busy = f"busy ({status.running_fraction * 100:.0f}%)" if status.running else "idle"
    queued = f"{status.queued} queued"
    return "Connected · {} · {} · {}".format(busy, queued, status.device or "unknown device")


def tooltip_html(text: str) -> str:
    """``text`` as a tooltip that Qt wraps: rich text (Qt shows plain text
    on one line, however long), each line of ``text`` a line of its own."""
    lines = [html.escape(line) for line in text.split("\n")]
    return "<qt>" + "<br>".join(lines) + "</qt>"


def first_run_html() -> str:
    """The hint shown while the data directory has no models at all."""
    return (
        "<b>No models are installed yet.</b> Install the default ones (about 4 GB) "
        f"with the command <code>{INSTALL_COMMAND}</code>, then press ⟳."
    )
