"""One connection's protocol state, without I/O: the caller feeds it every
message that arrives and sends what it hands over, so that a blocking thread
(:class:`~.client.Client`) and an event loop (the Krita plug-in's
``QLocalSocket``) drive the same rules.

The session does the handshake and routes the daemon's answers as
``docs/protocol.md`` §7 "Connection lifecycle" says: ``Accepted``/``Rejected``
by request number, ``Progress``/``Done``/``Failed`` by job number (those that
overtake their job's ``Accepted`` are held until it comes), ``Status``,
``Models`` and ``ShuttingDown`` to the oldest request of their kind, an
``Error`` to the oldest request waiting (``UnknownJob`` needs no answer).

Callbacks run in the caller's thread, from :meth:`Session.receive`,
:meth:`Session.cancel` or :meth:`Session.close`; ``send`` is called the same
way and must not block on the session. No threads, sockets or Qt here.
"""

import collections
import itertools
import logging
from typing import Any, Callable, Deque, Dict, List, Optional

from .errors import ConnectionClosed, ProtocolError, TesseraError
from .messages import (
    CONNECTION_ERRORS,
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Done,
    Error,
    ErrorKind,
    Failed,
    GetStatus,
    Handshake,
    ListModels,
    Models,
    Progress,
    Rejected,
    Shutdown,
    ShuttingDown,
    Status,
    Submit,
)

log = logging.getLogger("tessera_client")

HANDSHAKING, OPEN, CLOSED = "handshaking", "open", "closed"

#: Job events kept while waiting for their job's Accepted.
_MAX_EARLY = 10_000


def _ignore(*_args: Any) -> None:
    pass


class JobTicket:
    """A submitted job, as the session tracks it, with the callbacks that
    report on it. Exactly one of ``on_done`` and ``on_failed`` is called, once."""

    def __init__(
        self,
        on_accepted: Callable[["JobTicket"], Any] = _ignore,
        on_progress: Callable[[Progress], Any] = _ignore,
        on_done: Callable[[Done], Any] = _ignore,
        on_failed: Callable[[BaseException], Any] = _ignore,
    ) -> None:
        self.on_accepted = on_accepted
        self.on_progress = on_progress
        self.on_done = on_done
        self.on_failed = on_failed
        #: The submission's request number.
        self.request: Optional[int] = None
        #: The daemon's job number, once accepted.
        self.job: Optional[int] = None
        #: Jobs ahead of this one when it was accepted.
        self.position: Optional[int] = None
        self.cancel_requested = False
        self.finished = False

    def _finish(self, outcome: Any) -> None:
        if self.finished:
            return
        self.finished = True
        if isinstance(outcome, Done):
            self.on_done(outcome)
        else:
            self.on_failed(outcome)


class _Waiter:
    def __init__(self, expect: type, on_reply: Callable, on_error: Callable) -> None:
        self.expect = expect
        self.on_reply = on_reply
        self.on_error = on_error


class Session:
    """The protocol over one connection. ``send`` writes one message (or
    queues it for the caller to write); ``on_open`` gets the daemon's agent
    once the handshake is done; ``on_daemon_error`` gets each ``Error`` that
    answers no request (``UnknownJob`` after cancelling a job that had just
    ended, say)."""

    def __init__(
        self,
        send: Callable[[Any], None],
        agent: str,
        on_open: Callable[[str], Any] = _ignore,
        on_daemon_error: Callable[[Error], Any] = _ignore,
    ) -> None:
        self._send = send
        self.agent = agent
        self.on_open = on_open
        self.on_daemon_error = on_daemon_error
        self.state = HANDSHAKING
        #: The daemon's handshake agent, e.g. ``tessera 0.1.0``, once open.
        self.daemon_agent: Optional[str] = None
        self._requests = itertools.count(1)
        self._submissions: Dict[int, JobTicket] = {}
        self._jobs: Dict[int, JobTicket] = {}
        self._waiters: Deque[_Waiter] = collections.deque()
        self._stopping = False
        #: Job events that arrived before their job's Accepted.
        self._early: list = []

    # --- Outgoing ---------------------------------------------------------------

    def start(self) -> None:
        """Sends the handshake; call once the transport is connected."""
        self._send(Handshake(PROTOCOL_VERSION, self.agent))

    def _check_open(self) -> None:
        if self.state == CLOSED:
            raise ConnectionClosed("the connection to the daemon is closed")
        if self.state != OPEN:
            raise ConnectionClosed("the connection to the daemon is not open yet")

    def submit(self, image: Any, params: Any, ticket: JobTicket) -> JobTicket:
        """Sends ``Submit``; ``ticket``'s callbacks report what follows."""
        self._check_open()
        ticket.request = next(self._requests)
        self._submissions[ticket.request] = ticket
        self._send(Submit(ticket.request, image, params))
        return ticket

    def cancel(self, ticket: JobTicket) -> None:
        """Asks the daemon to stop the job (now, or as soon as it is accepted)."""
        if ticket.finished or ticket.cancel_requested:
            return
        ticket.cancel_requested = True
        if ticket.job is not None and self.state == OPEN:
            self._send(Cancel(ticket.job))

    def request_status(
        self, on_reply: Callable[[Status], Any], on_error: Callable[[BaseException], Any] = _ignore
    ) -> None:
        self.request(GetStatus(), Status, on_reply, on_error)

    def request_models(
        self,
        on_reply: Callable[[list], Any],
        on_error: Callable[[BaseException], Any] = _ignore,
        hashes: bool = False,
    ) -> None:
        self.request(ListModels(hashes), Models, lambda m: on_reply(m.models), on_error)

    def request_shutdown(
        self,
        on_reply: Callable[[ShuttingDown], Any],
        on_error: Callable[[BaseException], Any] = _ignore,
    ) -> None:
        self.request(Shutdown(), ShuttingDown, on_reply, on_error)

    def request(self, message: Any, expect: type, on_reply: Callable, on_error: Callable) -> None:
        """Sends ``message``; ``on_reply`` gets the first ``expect`` that
        comes for it, ``on_error`` a :class:`TesseraError` instead. A request
        stays queued until answered, so that a late reply is never taken for
        a later request's."""
        self._check_open()
        self._waiters.append(_Waiter(expect, on_reply, on_error))
        self._send(message)

    @property
    def busy_jobs(self) -> int:
        """Submissions and jobs not finished yet."""
        return len(self._submissions) + len(self._jobs)

    @property
    def submissions(self) -> Dict[int, JobTicket]:
        """Submissions not answered yet, by request number."""
        return dict(self._submissions)

    def tickets(self) -> List[JobTicket]:
        """Every submission and job not finished yet."""
        return list(self._submissions.values()) + list(self._jobs.values())

    @property
    def stopping(self) -> bool:
        """Whether the daemon said it is shutting down."""
        return self._stopping

    # --- Incoming ---------------------------------------------------------------

    def receive(self, message: Any) -> None:
        """Routes one message from the daemon. Raises :class:`TesseraError`
        (a :class:`ProtocolError` included) when the connection must close:
        the caller then closes the transport and calls :meth:`close`."""
        if self.state == CLOSED:
            return
        if self.state == HANDSHAKING:
            self._receive_handshake(message)
            return
        if isinstance(message, (Progress, Done, Failed)):
            ticket = self._jobs.get(message.job)
            if ticket is None:
                if self._submissions and len(self._early) < _MAX_EARLY:
                    # Perhaps ours, ahead of its Accepted (a daemon may race
                    # them): kept until a submission is answered.
                    self._early.append(message)
                else:
                    log.debug(
                        "ignoring %s of job %s: not ours", type(message).__name__, message.job
                    )
                return
            if isinstance(message, Progress):
                ticket.on_progress(message)
                return
            del self._jobs[message.job]
            ticket._finish(
                message if isinstance(message, Done) else TesseraError.from_info(message.error)
            )
        elif isinstance(message, Accepted):
            ticket = self._submissions.pop(message.request, None)
            if ticket is None:
                log.warning("cancelling job %s: no submission %s", message.job, message.request)
                self._send(Cancel(message.job))
                return
            ticket.job = message.job
            ticket.position = message.position
            self._jobs[message.job] = ticket
            if ticket.cancel_requested:
                self._send(Cancel(message.job))
            ticket.on_accepted(ticket)
            early = [m for m in self._early if m.job == message.job]
            self._early = (
                [] if not self._submissions else [m for m in self._early if m.job != message.job]
            )
            for event in early:
                self.receive(event)
        elif isinstance(message, Rejected):
            ticket = self._submissions.pop(message.request, None)
            if ticket is None:
                log.warning("ignoring a rejection of unknown submission %s", message.request)
                return
            ticket._finish(TesseraError.from_info(message.error))
            if not self._submissions:
                self._early = []
        elif isinstance(message, (Status, Models, ShuttingDown)):
            if isinstance(message, ShuttingDown):
                self._stopping = True
            waiter = next((w for w in self._waiters if w.expect is type(message)), None)
            if waiter is not None:
                self._waiters.remove(waiter)
                waiter.on_reply(message)
            elif not isinstance(message, ShuttingDown):
                log.debug("ignoring an unsolicited %s", type(message).__name__)
        elif isinstance(message, Error):
            if message.kind in CONNECTION_ERRORS:
                raise TesseraError(message.kind, message.message)
            if message.kind == ErrorKind.UNKNOWN_JOB:
                log.info("daemon: %s", message.message)
                self.on_daemon_error(message)
                return
            waiter = self._waiters.popleft() if self._waiters else None
            if waiter is not None:
                waiter.on_error(TesseraError(message.kind, message.message))
            else:
                log.warning("daemon: %s", TesseraError(message.kind, message.message))
                self.on_daemon_error(message)
        else:
            raise ProtocolError(f"a daemon may not send {type(message).__name__}")

    def _receive_handshake(self, message: Any) -> None:
        if isinstance(message, Error):
            raise TesseraError(message.kind, message.message)
        if not isinstance(message, Handshake):
            raise ProtocolError(f"the daemon answered the handshake with {type(message).__name__}")
        if message.protocol_version != PROTOCOL_VERSION:
            raise TesseraError(
                ErrorKind.VERSION_MISMATCH,
                f"the daemon ({message.agent}) speaks protocol version "
                f"{message.protocol_version} and this client version {PROTOCOL_VERSION}; "
                "install the plug-in and the daemon of the same release",
            )
        self.state = OPEN
        self.daemon_agent = message.agent
        self.on_open(message.agent)

    def close(self, error: Optional[BaseException] = None) -> None:
        """Ends the session: every job, submission and request still waiting
        fails with ``error`` (by default: the daemon closed the connection)."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if error is None:
            if self._stopping:
                error = TesseraError(ErrorKind.SHUTTING_DOWN, "the daemon shut down")
            else:
                error = ConnectionClosed("the daemon closed the connection")
        tickets = list(self._submissions.values()) + list(self._jobs.values())
        waiters = list(self._waiters)
        self._submissions.clear()
        self._jobs.clear()
        self._waiters.clear()
        for ticket in tickets:
            ticket._finish(error)
        for waiter in waiters:
            waiter.on_error(error)
