"""A blocking client for the Tessera daemon.

::

    from tessera_client import Client, Image, Channels, SampleFormat, Transfer, JobParams

    with Client(agent="krita-plugin 0.1.0") as client:
        image = Image(w, h, Channels.BGRA, SampleFormat.U8, Transfer.SRGB, pixels)
        result, timings = client.upscale(image, JobParams(scale=2), on_progress=print)

One connection carries any number of jobs and requests. A background thread
reads every frame and hands it to a :class:`~.session.Session`, the same
routing the Krita plug-in drives from Qt's event loop: ``Accepted``/``Rejected``
to the submission with the same ``request`` number, ``Progress``/``Done``/``Failed``
to the job with the same ``job`` number, ``Status``/``Models``/``ShuttingDown``
to the oldest waiting request of that type. Callers wait in their own thread,
and progress callbacks run there too (never on the reader thread). Writes are
serialised by a lock, so :meth:`Client.cancel` may be called from any thread,
e.g. a UI's Cancel button while another thread waits in :meth:`Client.upscale`.
"""

import collections
import logging
import queue
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple, Union

from . import transport
from .codec import read_frame, write_frame
from .errors import ConnectionClosed, TesseraError
from .framing import MAX_FRAME_FROM_DAEMON
from .messages import (
    Cancel,
    Done,
    Error,
    ErrorKind,
    GetStatus,
    Image,
    JobParams,
    ListModels,
    LoraWeight,
    Message,
    ModelEntry,
    Models,
    Progress,
    Shutdown,
    ShuttingDown,
    StageTiming,
    Status,
)
from .paths import SocketAddress, data_dir, socket_address
from .session import JobTicket, Session

__all__ = ["Client", "Job"]

log = logging.getLogger("tessera_client")

#: Longest accepted daemon handshake frame.
_MAX_HANDSHAKE_BYTES = 64 * 1024
# Marks "use the client's reply_timeout".
_DEFAULT = object()

ProgressCallback = Callable[[Progress], Any]
WarningCallback = Callable[[str], Any]


class _Ended:
    """Put on a job's event queue when it fails or the connection ends first."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Job:
    """A submitted job. ``job`` is the daemon's job number once accepted;
    :meth:`wait` returns its ``Done`` message or raises its failure."""

    def __init__(self, client: "Client") -> None:
        #: The submission's request number.
        self.request: Optional[int] = None
        #: The daemon's job number (``None`` until accepted).
        self.job: Optional[int] = None
        #: Jobs ahead of this one when it was accepted.
        self.position: Optional[int] = None
        #: The latest progress seen by :meth:`wait`.
        self.last_progress: Optional[Progress] = None
        #: The job's warnings seen so far by :meth:`wait`, oldest first (a
        #: network moved to the CPU, a call retried with smaller tiles).
        self.warnings: List[str] = []
        self._client = client
        self._answered = threading.Event()
        self._refusal: Optional[BaseException] = None
        self._events: queue.Queue = queue.Queue()
        self._outcome: Optional[Union[Done, BaseException]] = None
        # The session's callbacks run on the reader thread: they only hand over.
        self._ticket = JobTicket(
            on_accepted=self._accepted,
            on_progress=self._events.put,
            on_done=self._events.put,
            on_failed=self._failed,
        )

    def __repr__(self) -> str:
        return f"Job(request={self.request}, job={self.job}, position={self.position})"

    @property
    def finished(self) -> bool:
        """Whether :meth:`wait` has seen the job's end."""
        return self._outcome is not None

    def cancel(self) -> None:
        """Asks the daemon to drop or stop the job (see :meth:`Client.cancel`)."""
        self._client.cancel(self)

    def _accepted(self, ticket: JobTicket) -> None:
        self.job = ticket.job
        self.position = ticket.position
        self._answered.set()

    def _failed(self, error: BaseException) -> None:
        if self._answered.is_set():
            self._events.put(_Ended(error))
        else:  # rejected, or the connection ended before the daemon answered
            self._refusal = error
            self._outcome = error
            self._answered.set()

    def _note_warnings(self, warnings: List[str], on_warning: Optional[WarningCallback]) -> None:
        """Records the warnings of a ``Progress`` or ``Done`` (the job's whole
        list so far) and hands each new one to ``on_warning``."""
        fresh = warnings[len(self.warnings) :]
        self.warnings.extend(fresh)
        if on_warning is not None:
            for warning in fresh:
                on_warning(warning)

    def wait(
        self,
        on_progress: Optional[ProgressCallback] = None,
        timeout: Optional[float] = None,
        on_warning: Optional[WarningCallback] = None,
    ) -> Done:
        """Waits for the job's end, calling ``on_progress`` (in this thread)
        with each :class:`Progress`, and ``on_warning`` once with each new
        warning of the job (also kept in :attr:`warnings`). Returns the
        ``Done`` message; raises :class:`TesseraError` for ``Failed`` (kind
        ``CANCELLED`` after a cancel), :class:`ConnectionClosed` if the
        connection ends first, and ``TimeoutError`` after ``timeout`` seconds
        (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._outcome is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"job {self.job} did not finish within {timeout} s") from None
            if isinstance(event, Progress):
                self.last_progress = event
                self._note_warnings(event.warnings, on_warning)
                if on_progress is not None:
                    on_progress(event)
            elif isinstance(event, Done):
                self._note_warnings(event.warnings, on_warning)
                self._outcome = event
            elif isinstance(event, _Ended):
                self._outcome = event.error
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome


class _Waiter:
    """One request waiting for its reply."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Optional[Message] = None
        self.error: Optional[BaseException] = None

    def answer(self, reply: Message) -> None:
        self.reply = reply
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


class Client:
    """A connection to the daemon, handshake done.

    :param address: where the daemon listens: a :class:`SocketAddress`, a
        socket path (or a pipe name on Windows), or ``None`` for the default of
        :func:`~tessera_client.paths.socket_address` (``$TESSERA_SOCKET``, …).
    :param agent: who is speaking, for the daemon's log.
    :param data_dir: the daemon's data directory, if not the default; it
        determines the default socket.
    :param connect_timeout: seconds for connecting and for the handshake.
    :param reply_timeout: default seconds to wait for ``Accepted``, ``Status``,
        ``Models`` (without hashes) and ``ShuttingDown``; ``None`` waits forever.
    :param max_frame_bytes: the largest frame accepted from the daemon; by
        default anything the length prefix can say (4 GiB - 1), since a large
        result may exceed the daemon's own 1 GiB limit on what it receives.

    Raises :class:`DaemonNotRunning` when no daemon listens,
    :class:`TesseraError` (``VERSION_MISMATCH``) when it speaks another
    protocol version, and ``TimeoutError`` when it does not answer.
    """

    def __init__(
        self,
        address: Union[SocketAddress, str, None] = None,
        agent: str = "tessera-client",
        data_dir: Optional[str] = None,
        connect_timeout: Optional[float] = 10.0,
        reply_timeout: Optional[float] = 30.0,
        max_frame_bytes: int = MAX_FRAME_FROM_DAEMON,
    ) -> None:
        self.address = _resolve_address(address, data_dir)
        self.reply_timeout = reply_timeout
        self.max_frame_bytes = max_frame_bytes
        #: Errors from the daemon that answered no pending request, e.g.
        #: ``UNKNOWN_JOB`` after cancelling a job that had just finished.
        self.errors: Deque[Error] = collections.deque(maxlen=32)
        self._lock = threading.Lock()  # guards the session and the outbox
        self._write_lock = threading.Lock()  # one writer at a time, in outbox order
        #: What the session asked to send, written by :meth:`_flush` outside ``_lock``.
        self._outbox: List[Message] = []
        self._session = Session(self._outbox.append, agent, on_daemon_error=self.errors.append)
        self._closed = False
        self._failure: Optional[BaseException] = None

        self._stream = transport.connect(self.address, connect_timeout)
        try:
            self._handshake(connect_timeout)
        except BaseException:
            self._stream.close()
            raise
        self._reader = threading.Thread(
            target=self._read_loop, name="tessera-client-reader", daemon=True
        )
        self._reader.start()

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> "Client":
        """The same as ``Client(...)``: connects and shakes hands."""
        return cls(*args, **kwargs)

    # --- Connection ---------------------------------------------------------

    def _handshake(self, timeout: Optional[float]) -> None:
        self._stream.settimeout(timeout)
        self._session.start()
        self._flush()
        try:
            reply = read_frame(self._stream, _MAX_HANDSHAKE_BYTES)
        except ConnectionClosed:
            raise ConnectionClosed(
                f"the daemon at {self.address} closed the connection during the handshake"
            ) from None
        except TimeoutError:
            raise TimeoutError(
                f"the daemon at {self.address} did not answer the handshake within {timeout} s"
            ) from None
        self._stream.settimeout(None)
        self._session.receive(reply)
        #: The daemon's handshake agent, e.g. ``"tessera 0.1.0"``.
        self.daemon_agent = self._session.daemon_agent

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def _submissions(self) -> Dict[int, JobTicket]:
        """Submissions the daemon has not answered yet."""
        with self._lock:
            return self._session.submissions

    def close(self) -> None:
        """Closes the connection. The daemon cancels this connection's jobs;
        threads waiting here get :class:`ConnectionClosed`."""
        self._fail_all(ConnectionClosed("the client closed the connection"))
        reader = getattr(self, "_reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _flush(self) -> None:
        """Writes what the session asked to send, in its order; a broken
        connection fails everything waiting and raises :class:`ConnectionClosed`."""
        with self._write_lock:
            with self._lock:
                messages = self._outbox[:]
                del self._outbox[:]
                closed = self._closed
            if closed:
                if messages:
                    raise self._closed_error()
                return
            for message in messages:
                try:
                    write_frame(self._stream, message)
                except OSError as e:
                    error = ConnectionClosed(f"the connection to the daemon broke: {e}")
                    self._fail_all(error)
                    raise error from e

    def _closed_error(self) -> BaseException:
        return self._failure or ConnectionClosed("the connection is closed")

    # --- Requests -----------------------------------------------------------

    def submit(
        self,
        image: Image,
        params: Union[JobParams, Mapping[str, Any], None] = None,
        validate: bool = True,
        timeout: Any = _DEFAULT,
    ) -> Job:
        """Sends an image and waits until the daemon queues it; returns the
        :class:`Job`. Raises :class:`TesseraError` if the image is invalid
        (checked here first unless ``validate`` is false) or the daemon
        rejects the submission (``QUEUE_FULL``, ``MODEL_NOT_FOUND``, …).

        ``params`` is a :class:`JobParams`, a mapping of its fields (e.g.
        ``{"scale": 2.0}``), or ``None`` for the defaults."""
        params = _job_params(params)
        if validate:
            image.validate()
        job = Job(self)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._session.submit(image, params, job._ticket)
            job.request = job._ticket.request
        self._flush()
        wait_for = self.reply_timeout if timeout is _DEFAULT else timeout
        if not job._answered.wait(wait_for):
            with self._lock:
                answered = job._answered.is_set()
                if not answered:
                    # An abandoned submission is cancelled as soon as it is accepted.
                    self._session.cancel(job._ticket)
            if not answered:
                raise TimeoutError(f"the daemon did not accept the job within {wait_for} s")
        if job._refusal is not None:
            raise job._refusal
        return job

    def upscale(
        self,
        image: Image,
        params: Union[JobParams, Mapping[str, Any], None] = None,
        on_progress: Optional[ProgressCallback] = None,
        timeout: Optional[float] = None,
        validate: bool = True,
        on_warning: Optional[WarningCallback] = None,
    ) -> Tuple[Image, List[StageTiming]]:
        """Submits ``image``, waits for the result and returns it with the
        timings. ``on_progress`` is called in this thread with every
        :class:`Progress`, ``on_warning`` once with each warning of the job
        (e.g. a network that fell back to the CPU: the job still finishes).
        If ``on_progress`` raises, or ``timeout`` expires, or this thread is
        interrupted, the job is cancelled and the error raised."""
        job = self.submit(image, params, validate=validate)
        try:
            done = job.wait(on_progress=on_progress, timeout=timeout, on_warning=on_warning)
        except BaseException:
            if not job.finished:
                try:
                    self.cancel(job)
                except (ConnectionError, OSError):
                    pass
            raise
        return done.image, done.timings

    def cancel(self, job: Union[Job, int, None] = None) -> None:
        """Asks the daemon to stop a job: a :class:`Job`, a job number, or
        ``None`` for every job of this client. Returns at once; the job then
        ends with ``Failed`` of kind ``CANCELLED`` (or its result, if it
        finished first). Safe to call from any thread."""
        with self._lock:
            if isinstance(job, Job):
                self._session.cancel(job._ticket)
            elif job is None:
                for ticket in self._session.tickets():
                    self._session.cancel(ticket)
            else:
                if self._closed:
                    raise self._closed_error()
                self._outbox.append(Cancel(int(job)))
        self._flush()

    def _request(self, message: Message, expect: type, timeout: Optional[float]) -> Any:
        waiter = _Waiter()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._session.request(message, expect, waiter.answer, waiter.fail)
        self._flush()
        if not waiter.event.wait(timeout):
            # It stays queued, so that its late reply is not taken for another's.
            raise TimeoutError(
                f"the daemon did not answer {type(message).__name__} within {timeout} s"
            )
        if waiter.error is not None:
            raise waiter.error
        return waiter.reply

    def status(self, timeout: Any = _DEFAULT) -> Status:
        """The daemon's state: version, device, running job, queue length."""
        return self._request(
            GetStatus(), Status, self.reply_timeout if timeout is _DEFAULT else timeout
        )

    def list_models(self, hashes: bool = False, timeout: Any = _DEFAULT) -> List[ModelEntry]:
        """The models in the daemon's data directory. ``hashes`` asks for
        their SHA-256, which is slow the first time; it waits without a
        timeout unless one is given."""
        if timeout is _DEFAULT:
            timeout = None if hashes else self.reply_timeout
        reply = self._request(ListModels(hashes), Models, timeout)
        return reply.models

    def shutdown(self, timeout: Any = _DEFAULT) -> None:
        """Asks the daemon to cancel every job and exit; returns once it has
        acknowledged. The connection closes soon after."""
        self._request(
            Shutdown(), ShuttingDown, self.reply_timeout if timeout is _DEFAULT else timeout
        )

    # --- The reader thread ----------------------------------------------------

    def _read_loop(self) -> None:
        error: Optional[BaseException] = None
        try:
            while True:
                message = read_frame(self._stream, self.max_frame_bytes)
                with self._lock:
                    if self._closed:
                        break
                    self._session.receive(message)
                self._flush()
        except ConnectionClosed:
            pass
        except TesseraError as e:
            error = e
        except OSError as e:
            error = ConnectionClosed(f"the connection to the daemon broke: {e}")
        except Exception as e:  # a bug here: fail loudly rather than hang
            log.error("the tessera_client reader failed", exc_info=True)
            error = ConnectionClosed(f"the client's reader failed: {e!r}")
        if error is None:
            if self._session.stopping:
                error = TesseraError(ErrorKind.SHUTTING_DOWN, "the daemon shut down")
            else:
                error = ConnectionClosed("the daemon closed the connection")
        self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        """Closes the connection and hands ``error`` to everyone waiting."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._failure = error
            del self._outbox[:]
            self._session.close(error)
        self._stream.close()


def _job_params(params: Union[JobParams, Mapping[str, Any], None]) -> JobParams:
    if params is None:
        return JobParams()
    if isinstance(params, JobParams):
        return params
    fields = dict(params)
    # LoRAs may come as LoraWeight, {"name", "weight"} mappings or (name, weight) pairs.
    fields["loras"] = [
        lora
        if isinstance(lora, LoraWeight)
        else LoraWeight(**lora)
        if isinstance(lora, Mapping)
        else LoraWeight(*lora)
        for lora in fields.get("loras", [])
    ]
    return JobParams(**fields)


def _resolve_address(
    address: Union[SocketAddress, str, None], data: Optional[str]
) -> SocketAddress:
    if isinstance(address, SocketAddress):
        return address
    if address is not None:
        return socket_address(address)
    return socket_address(None, data_dir(data))
