"""A stand-in for ``tessera serve`` that speaks the real protocol (through
``tessera_client``'s codec) and upscales by pixel repetition, so that the
plug-in's reading, writing and error paths can be checked exactly in every
GIMP precision. The end-to-end tests use the real daemon."""

import socket
import threading
import time
from typing import List, Optional

from tessera_client import (
    Accepted,
    Done,
    ErrorInfo,
    ErrorKind,
    GetStatus,
    Handshake,
    Image,
    ListModels,
    ModelEntry,
    ModelKind,
    Models,
    Progress,
    Rejected,
    StageTiming,
    Status,
    Submit,
    read_frame,
    write_frame,
)

FAKE_UPSCALERS = ("fake-x2", "fake-sharp")


def repeat_pixels(image: Image, scale: int) -> Image:
    """``image`` enlarged ``scale`` times by repeating each pixel."""
    size = image.pixel_bytes
    data = bytes(image.data)
    rows = []
    for y in range(image.height):
        row = data[y * image.width * size : (y + 1) * image.width * size]
        wide = b"".join(row[x * size : (x + 1) * size] * scale for x in range(image.width))
        rows.append(wide * scale)
    return Image(
        image.width * scale,
        image.height * scale,
        image.channels,
        image.sample,
        image.transfer,
        b"".join(rows),
    )


class FakeDaemon:
    """Listens on ``path`` until :meth:`close`. ``reject`` makes every
    submission fail with that ``(ErrorKind, message)``."""

    def __init__(
        self,
        path: str,
        progress_steps: int = 3,
        step_delay: float = 0.0,
        models: Optional[List[ModelEntry]] = None,
    ) -> None:
        self.path = path
        #: What ``ListModels`` answers: by default the :data:`FAKE_UPSCALERS`.
        self.models = (
            [
                ModelEntry(ModelKind.UPSCALER, name, f"upscalers/{name}.pth", 1)
                for name in FAKE_UPSCALERS
            ]
            if models is None
            else list(models)
        )
        self.progress_steps = progress_steps
        #: Seconds between progress events, to make a job last.
        self.step_delay = step_delay
        self.reject: Optional[tuple] = None
        #: Jobs whose client went away before their end.
        self.abandoned: List[int] = []
        #: Every ``Submit`` received, in order.
        self.submissions: List[Submit] = []
        self._jobs = 0
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(8)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                hello = read_frame(conn)
                assert isinstance(hello, Handshake), hello
                write_frame(conn, Handshake(hello.protocol_version, "fake-tessera 0"))
                while True:
                    message = read_frame(conn)
                    self._answer(conn, message)
            except (ConnectionError, OSError):
                return

    def _answer(self, conn: socket.socket, message) -> None:
        if isinstance(message, ListModels):
            write_frame(conn, Models(self.models))
        elif isinstance(message, GetStatus):
            write_frame(conn, Status("0", "none", "CPU", None, 0.0, 0, 1, "/fake"))
        elif isinstance(message, Submit):
            with self._lock:
                self.submissions.append(message)
                self._jobs += 1
                job = self._jobs
            if self.reject is not None:
                kind, text = self.reject
                write_frame(conn, Rejected(message.request, ErrorInfo(kind, text)))
                return
            write_frame(conn, Accepted(message.request, job, 0))
            steps = self.progress_steps
            try:
                for tile in range(1, steps + 1):
                    time.sleep(self.step_delay)
                    progress = Progress(job, 0, 1, "upscale", 1, 1, tile, steps, tile / (steps + 1))
                    write_frame(conn, progress)
                result = repeat_pixels(message.image, int(message.params.scale))
                write_frame(conn, Done(job, result, [StageTiming("upscale", 0.001)]))
            except OSError:
                self.abandoned.append(job)
                raise
        else:
            raise AssertionError(f"the fake daemon does not expect {message!r}")


__all__ = ["FAKE_UPSCALERS", "ErrorKind", "FakeDaemon", "repeat_pixels"]
