"""One upscale from start to end: read the pixels, make sure a daemon runs,
submit, follow the progress, put the result in, or report why not.

This is the request path that the docker's button, the action and the
in-Krita tests all go through. Nothing is changed in the document until the
result is there, so a cancel or an error leaves it as it was.
"""

import logging
import time
from typing import Any, List, Optional

from . import document as doc_io
from . import params, texts
from .pixels import UnsupportedColorSpace
from .proto import Done, JobTicket, Progress, Region
from .qt import QObject, pyqtSignal
from .region import NothingToUpscale, Rect, preview_region
from .settings import OUTPUT_IN_PLACE

log = logging.getLogger("tessera_krita")

IDLE, CONNECTING, QUEUED, RUNNING, APPLYING = "idle", "connecting", "queued", "running", "applying"


class Outcome:
    """How an upscale ended, for the docker and the tests."""

    def __init__(
        self,
        ok: bool,
        message: str,
        cancelled: bool = False,
        error: Optional[BaseException] = None,
        result: Any = None,
        seconds: float = 0.0,
    ) -> None:
        self.ok = ok
        self.message = message
        self.cancelled = cancelled
        self.error = error
        #: The new layer (in place) or the new document.
        self.result = result
        self.seconds = seconds
        #: What the daemon warned about while it ran the job (e.g. the GPU could not be
        #: used and the CPU took over), oldest first.
        self.warnings: List[str] = []

    def __repr__(self) -> str:
        return f"Outcome(ok={self.ok}, cancelled={self.cancelled}, message={self.message!r})"


class Upscaler(QObject):
    """Runs one upscale at a time through a :class:`~.connection.DaemonLink`."""

    #: The phase: idle, connecting, queued, running, applying.
    phaseChanged = pyqtSignal(str)
    #: fraction (0 to 1), text such as "Upscale · tile 3/12".
    progressed = pyqtSignal(float, str)
    #: An :class:`Outcome`.
    finished = pyqtSignal(object)
    #: A colour space the daemon cannot take: (document, conversion, message).
    conversionOffered = pyqtSignal(object, object, str)
    #: Each new warning of the running job, once (a sentence from the daemon).
    warned = pyqtSignal(str)

    def __init__(
        self, app: Any, link: Any, settings: Any, parent: Optional[QObject] = None
    ) -> None:
        super().__init__(parent)
        self.app = app
        self.link = link
        self.settings = settings
        self.phase = IDLE
        self._source: Optional[doc_io.Source] = None
        self._params: Any = None
        self._output = ""
        self._ticket: Optional[JobTicket] = None
        self._cancelled = False
        self._started = 0.0
        #: The selection a running preview shows (``None``: an upscale).
        self._preview: Optional[Rect] = None
        #: The latest progress of the running job.
        self.last_progress: Optional[Progress] = None
        #: The running job's warnings so far.
        self._warnings: List[str] = []

    @property
    def busy(self) -> bool:
        return self.phase != IDLE

    def _set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.phaseChanged.emit(phase)

    def preview(
        self,
        document: Any = None,
        node: Any = None,
        source: Optional[str] = None,
        values: Optional[dict] = None,
    ) -> bool:
        """Starts a preview of the selection: the daemon computes the
        selection's part of the whole layer's result (from the layer around
        it), which comes back as a temporary layer over the selection (one
        undo step removes it). Returns whether it started."""
        if document is None:
            document = self.app.activeDocument()
        selection = doc_io.selection_rect(document) if document is not None else None
        if selection is None:
            if not self.busy:
                self.finished.emit(
                    Outcome(False, "Select the region to preview first (a rectangle is enough).")
                )
            return False
        return self._start(document, node, source, None, values, selection)

    def upscale(
        self,
        document: Any = None,
        node: Any = None,
        source: Optional[str] = None,
        output: Optional[str] = None,
        values: Optional[dict] = None,
    ) -> bool:
        """Starts an upscale of ``node`` (default: the active layer) of
        ``document`` (default: the active one) with the settings' parameters,
        or those in ``values``. Returns whether it started; the end is
        reported by :attr:`finished` either way."""
        return self._start(document, node, source, output, values, None)

    def _start(
        self,
        document: Any,
        node: Any,
        source: Optional[str],
        output: Optional[str],
        values: Optional[dict],
        preview: Optional[Rect],
    ) -> bool:
        if self.busy:
            self.finished.emit(
                Outcome(False, "An upscale is already running; cancel it or wait for it.")
            )
            return False
        if document is None:
            document = self.app.activeDocument()
        source = source or self.settings.source
        self._output = output or self.settings.output
        try:
            job_params = params.to_job_params(
                values if values is not None else self.settings.values()
            )
            self._source = doc_io.read_source(document, node, source, whole=preview is not None)
            if preview is not None:
                canvas = (self._source.rect.width, self._source.rect.height)
                preview = Rect(*preview).intersected(Rect(0, 0, *canvas))
                if preview.empty:
                    raise NothingToUpscale("The selection lies outside the canvas.")
                wanted = preview_region(canvas, preview, float(job_params.scale))
                job_params.preview = Region(*wanted)
        except UnsupportedColorSpace as e:
            self.conversionOffered.emit(document, e.conversion, e.message)
            self.finished.emit(Outcome(False, e.message, error=e))
            return False
        except (doc_io.UserError, NothingToUpscale, params.InvalidParameter) as e:
            self.finished.emit(Outcome(False, str(e), error=e))
            return False
        self._params = job_params
        self._preview = preview
        self._cancelled = False
        self._ticket = None
        self.last_progress = None
        self._warnings = []
        self._started = time.monotonic()
        image = self._source.image
        log.info(
            "upscaling %s×%s %s/%s ×%s",
            image.width,
            image.height,
            image.channels.name,
            image.sample.name,
            job_params.scale,
        )
        self._set_phase(CONNECTING)
        self.progressed.emit(0.0, "Connecting to the daemon…")
        self.link.when_connected(self._submit, self._failed, start_daemon=True)
        return True

    def cancel(self) -> bool:
        """Stops the running upscale; the document is left as it was.
        Returns whether there was one."""
        if not self.busy or self.phase == APPLYING:
            return False
        if self._cancelled:
            return True  # asked already: the daemon is on it
        self._cancelled = True
        if self._ticket is None:
            self.link.forget(self._submit)
            self._end(Outcome(False, texts.error_text_cancelled(), cancelled=True))
            return True
        self.progressed.emit(self._fraction(), "Cancelling…")
        session = self.link.session
        if session is not None:
            try:
                session.cancel(self._ticket)
            except (ConnectionError, OSError) as e:
                self._failed(e)
        return True

    def _fraction(self) -> float:
        return self.last_progress.fraction if self.last_progress is not None else 0.0

    def _submit(self) -> None:
        if self._cancelled or self._source is None:
            return
        ticket = JobTicket(
            on_accepted=self._accepted,
            on_progress=self._progress,
            on_done=self._done,
            on_failed=self._failed,
        )
        self._ticket = ticket
        try:
            self.link.session.submit(self._source.image, self._params, ticket)
        except (ConnectionError, OSError, ValueError, TypeError) as e:
            self._failed(e)
            return
        self._set_phase(QUEUED)
        self.progressed.emit(
            0.0,
            f"Sent {self._source.image.width}×{self._source.image.height} pixels; "
            "waiting for the daemon…",
        )

    def _accepted(self, ticket: JobTicket) -> None:
        if ticket.position:
            self.progressed.emit(0.0, f"Queued behind {ticket.position} job(s)…")
        else:
            self.progressed.emit(0.0, "Starting…")

    def _note_warnings(self, warnings: Any) -> None:
        """Takes the job's warnings so far (a ``Progress`` or ``Done`` carries the
        whole list, which only grows) and announces the new ones."""
        for warning in list(warnings or [])[len(self._warnings) :]:
            self._warnings.append(warning)
            log.warning("daemon: %s", warning)
            self.warned.emit(warning)

    def _progress(self, progress: Progress) -> None:
        self._note_warnings(getattr(progress, "warnings", None))
        self.last_progress = progress
        self._set_phase(RUNNING)
        if not self._cancelled:
            self.progressed.emit(float(progress.fraction), texts.progress_text(progress))

    def _done(self, done: Done) -> None:
        self._note_warnings(getattr(done, "warnings", None))
        source = self._source
        if self._cancelled or source is None:
            # Cancelled, but it finished first: the user asked for no change.
            self._end(Outcome(False, texts.error_text_cancelled(), cancelled=True))
            return
        self._set_phase(APPLYING)
        self.progressed.emit(1.0, "Adding the result…")
        scale = self._params.scale
        if self._preview is not None:
            self._show_preview(source, done, scale, self._preview)
            return
        try:
            if self._output == OUTPUT_IN_PLACE:
                result = doc_io.in_place(self.app, source, done.image, scale)
                where = "as a new layer"
            else:
                result = doc_io.to_new_document(self.app, source, done.image, scale)
                where = "in a new document"
        except doc_io.UserError as e:
            self._end(Outcome(False, str(e), error=e))
            return
        except Exception as e:  # a Krita API failure: report it, keep Krita alive
            log.exception("could not add the result")
            self._end(Outcome(False, f"The result could not be added: {e}", error=e))
            return
        seconds = time.monotonic() - self._started
        message = (
            f"Upscaled {source.rect.width}×{source.rect.height} to "
            f"{done.image.width}×{done.image.height} {where} in {seconds:.1f} s."
        )
        self._end(Outcome(True, message, result=result, seconds=seconds))

    def _show_preview(self, source: Any, done: Done, scale: float, over: Rect) -> None:
        try:
            result = doc_io.preview_layer(self.app, source, done.image, over, scale)
        except doc_io.UserError as e:
            self._end(Outcome(False, str(e), error=e))
            return
        except Exception as e:  # a Krita API failure: report it, keep Krita alive
            log.exception("could not show the preview")
            self._end(Outcome(False, f"The preview could not be shown: {e}", error=e))
            return
        seconds = time.monotonic() - self._started
        message = (
            f"Preview of {over.width}×{over.height} (×{scale:g}: {done.image.width}×"
            f"{done.image.height}) shown as a layer over the selection in {seconds:.1f} s; "
            "undo (Ctrl+Z) removes it."
        )
        self._end(Outcome(True, message, result=result, seconds=seconds))

    def _failed(self, error: BaseException) -> None:
        if not self.busy:
            return
        cancelled = texts.is_cancelled(error) or (
            self._cancelled and not isinstance(error, ConnectionError)
        )
        message = texts.error_text_cancelled() if cancelled else texts.error_text(error)
        self._end(Outcome(False, message, cancelled=cancelled, error=error))

    def _end(self, outcome: Outcome) -> None:
        outcome.warnings = list(self._warnings)
        if outcome.ok and outcome.warnings:
            outcome.message += " " + texts.warnings_note(outcome.warnings)
        self._ticket = None
        self._source = None
        self._preview = None
        self._set_phase(IDLE)
        if outcome.ok:
            self.progressed.emit(1.0, "Done")
            self.link.refresh_status()
        log.info("upscale ended: %s", outcome)
        self.finished.emit(outcome)
