"""The link to the daemon: a ``QLocalSocket`` driven by Qt's signals, so that
the GUI thread never waits on it.

- It connects in the background at start-up and, whenever the connection
  drops (the daemon stopped, crashed or restarted), tries again with a
  growing pause (1 s, 2 s, 4 s, then every 10 s), so the docker shows the
  daemon's state without the user doing anything.
- When a job needs the daemon and none answers, it starts ``tessera serve``
  (see :mod:`.launcher`) and waits up to 30 s for it to listen; unless the
  user turned that off, which the error then says. A daemon started here is
  reaped when it ends (it is Krita's child), and one that crashes mid-job is
  reported as a crash, with how it ended.
- While connected it asks for the daemon's status every second and for its
  models when the connection opens, and re-emits them as signals. While no
  daemon runs, the models are read from the data directory's ``models/``
  folder instead, by the daemon's rules.

Framing and routing are ``tessera_client``'s, without I/O: this module feeds
the socket's bytes to a ``FrameReader`` and its messages to a ``Session``, and
writes what the session sends; finding and starting the daemon is
``tessera_client.launcher``'s (through :mod:`.launcher`).
"""

import logging
import subprocess
import time
from typing import Any, Callable, List, Optional, Tuple

from . import launcher
from .proto import (
    OPEN,
    ConnectionClosed,
    DaemonNotRunning,
    FrameReader,
    Session,
    SocketAddress,
    Status,
    TesseraError,
    data_dir,
    frame_parts,
    list_installed,
    socket_address,
)
from .qt import QLocalSocket, QObject, QTimer, pyqtSignal, socket_error_signal, to_bytes

log = logging.getLogger("tessera_krita")

DISCONNECTED, CONNECTING, STARTING, CONNECTED = (
    "disconnected",
    "connecting",
    "starting",
    "connected",
)

#: Pauses between reconnection attempts, in seconds; the last one repeats.
RECONNECT_DELAYS = (1.0, 2.0, 4.0, 10.0)
#: How long a daemon started here may take to listen.
START_TIMEOUT = 30.0
STATUS_INTERVAL_MS = 1000
#: How often daemons started here are checked for having ended.
REAP_INTERVAL_MS = 1000
#: How long a dropped connection waits for the daemon at its other end to exit, to
#: tell a crash from a closed connection.
CRASH_GRACE = 0.5

_NOT_LISTENING = (
    QLocalSocket.LocalSocketError.ServerNotFoundError,
    QLocalSocket.LocalSocketError.ConnectionRefusedError,
)


class DaemonLink(QObject):
    """One connection to the daemon, shared by every window's docker."""

    #: One of DISCONNECTED, CONNECTING, STARTING, CONNECTED.
    stateChanged = pyqtSignal(str)
    #: The latest ``Status``, or ``None`` when not connected.
    statusChanged = pyqtSignal(object)
    #: The daemon's models (a list of ``ModelEntry``).
    modelsChanged = pyqtSignal(object)
    #: A problem with the connection or with starting the daemon, in words.
    problem = pyqtSignal(str)

    def __init__(
        self,
        agent: str,
        settings: Any = None,
        address: Optional[SocketAddress] = None,
        parent: Optional[QObject] = None,
    ) -> None:
        super().__init__(parent)
        self.agent = agent
        self.settings = settings
        self._address = address
        self.state = DISCONNECTED
        self.session: Optional[Session] = None
        self.status: Optional[Status] = None
        #: The daemon's models while connected, else those in the models folder.
        self.models: list = []
        #: Whether :attr:`models` has been filled once (from either source).
        self.models_known = False
        #: Where :attr:`models` came from: "daemon" or "folder".
        self.models_source = ""
        #: The last attempt to connect found no daemon listening.
        self.refused = False
        self.daemon_agent: Optional[str] = None
        self._socket: Optional[QLocalSocket] = None
        self._reader: Optional[FrameReader] = None
        self._waiting: List[Tuple[Callable[[], Any], Callable[[BaseException], Any]]] = []
        self._want_start = False
        self._process: Any = None
        #: The daemon this link started and is connected to, if any.
        self._serving: Any = None
        #: Daemons started here that have not been reaped yet.
        self._children: List[subprocess.Popen] = []
        #: Exit statuses of reaped daemons, by process id.
        self.exited: dict = {}
        self._start_deadline = 0.0
        self._attempt = 0
        self._status_pending = False
        self._closed = False

        self._reconnect = QTimer(self)
        self._reconnect.setSingleShot(True)
        self._reconnect.timeout.connect(self._retry)
        self._status_timer = QTimer(self)
        self._status_timer.setInterval(STATUS_INTERVAL_MS)
        self._status_timer.timeout.connect(self.refresh_status)
        self._reaper = QTimer(self)
        self._reaper.setInterval(REAP_INTERVAL_MS)
        self._reaper.timeout.connect(self.reap)
        self._connecting: Optional[QLocalSocket] = None
        self._immediate_error: Any = None

    # --- Where the daemon is ----------------------------------------------------

    @property
    def address(self) -> SocketAddress:
        """The socket: the one given, else ``$TESSERA_SOCKET``, else the default."""
        return self._address if self._address is not None else socket_address()

    @property
    def data_dir(self) -> str:
        """The daemon's data directory: what it says, else where it would be."""
        if self.status is not None and self.status.data_dir:
            return self.status.data_dir
        return data_dir().path

    # --- Connecting ---------------------------------------------------------------

    def start(self) -> None:
        """Connects in the background (without starting a daemon)."""
        self._closed = False
        if self.state == DISCONNECTED:
            self._open(start=False)

    def when_connected(
        self,
        on_ready: Callable[[], Any],
        on_error: Callable[[BaseException], Any],
        start_daemon: bool = True,
    ) -> None:
        """Calls ``on_ready()`` once connected (at once if already), starting
        the daemon first if none answers and that is allowed; else
        ``on_error(exception)``."""
        self._closed = False
        if self.state == CONNECTED:
            on_ready()
            return
        self._waiting.append((on_ready, on_error))
        if start_daemon:
            self._want_start = True
        if self.state == DISCONNECTED:
            self._reconnect.stop()
            self._open(start=start_daemon)

    def forget(self, on_ready: Callable[[], Any]) -> None:
        """Drops a :meth:`when_connected` request that is still waiting."""
        self._waiting = [w for w in self._waiting if w[0] is not on_ready]

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.stateChanged.emit(state)

    def _open(self, start: bool) -> None:
        self._want_start = self._want_start or start
        if self.state != STARTING:
            self._set_state(CONNECTING)
        socket = QLocalSocket(self)
        self._socket = socket
        self._reader = FrameReader()
        socket.connected.connect(lambda: self._on_connected(socket))
        socket.readyRead.connect(lambda: self._on_ready_read(socket))
        socket.disconnected.connect(lambda: self._on_disconnected(socket))
        socket_error_signal(socket).connect(lambda error: self._on_error(socket, error))
        address = self.address
        log.debug("connecting to %s", address)
        self._connecting, self._immediate_error = socket, None
        try:
            socket.connectToServer(address.name)
        finally:
            self._connecting = None
        error, self._immediate_error = self._immediate_error, None
        if error is not None:
            # Refused on the spot (nothing listens): said at once, not after a
            # turn of the event loop, which Krita may not take for seconds.
            self._handle_error(socket, error)

    def _on_connected(self, socket: QLocalSocket) -> None:
        if socket is not self._socket:
            return
        self.session = Session(self._send, self.agent, on_open=self._on_open)
        try:
            self.session.start()
        except (OSError, ConnectionError) as e:
            self._drop(socket, ConnectionClosed(str(e)))

    def _on_open(self, daemon_agent: str) -> None:
        log.info("connected to %s at %s", daemon_agent, self.address)
        self.daemon_agent = daemon_agent
        self._attempt = 0
        self._serving, self._process = self._process, None
        self._want_start = False
        self.refused = False
        self._set_state(CONNECTED)
        self._status_timer.start()
        self.refresh_status()
        self.refresh_models()
        waiting, self._waiting = self._waiting, []
        for on_ready, _ in waiting:
            on_ready()

    def _on_ready_read(self, socket: QLocalSocket) -> None:
        if socket is not self._socket or self._reader is None:
            return
        data = to_bytes(socket.readAll())
        try:
            messages = self._reader.feed(data)
            for message in messages:
                if self.session is None:
                    break
                self.session.receive(message)
        except TesseraError as e:
            log.warning("closing the connection: %s", e)
            self._drop(socket, e)

    def _on_error(self, socket: QLocalSocket, error: Any) -> None:
        if socket is self._connecting:
            # Reported from inside connectToServer(): handled once it returns.
            self._immediate_error = error
            return
        QTimer.singleShot(0, lambda: self._handle_error(socket, error))

    def _handle_error(self, socket: QLocalSocket, error: Any) -> None:
        if socket is not self._socket:
            return
        if self.session is None and error in _NOT_LISTENING:
            self._not_listening(socket)
            return
        if error == QLocalSocket.LocalSocketError.PeerClosedError:
            self._drop(socket, None)
            return
        self._drop(socket, ConnectionClosed(socket.errorString()))

    def _on_disconnected(self, socket: QLocalSocket) -> None:
        if socket is self._socket:
            self._drop(socket, None)

    def _discard_socket(self, socket: QLocalSocket) -> None:
        if socket is self._socket:
            self._socket = None
            self._reader = None
        try:
            socket.blockSignals(True)
            socket.abort()
        except RuntimeError:  # already deleted by Qt
            return
        socket.deleteLater()

    def _not_listening(self, socket: QLocalSocket) -> None:
        """Nobody listens at the socket: start a daemon, wait for one that is
        starting, or report and retry later."""
        self._discard_socket(socket)
        self.refused = True
        if self._process is not None:
            if self._process.poll() is not None:
                reason = launcher.start_failure(self._process, self.data_dir)
                self._process = None
                self._fail_waiting(ConnectionError(reason))
                return
            if time.monotonic() > self._start_deadline:
                self._process = None
                self._fail_waiting(
                    ConnectionError(
                        f"The daemon started but did not listen on {self.address} within "
                        f"{START_TIMEOUT:.0f} s; see its log."
                    )
                )
                return
            QTimer.singleShot(100, self._retry_start)
            return
        if self._want_start and self._waiting and self._may_start():
            try:
                program = launcher.find_tessera(self.settings.tessera_path if self.settings else "")
                self._process = launcher.start_daemon(program, self.data_dir)
            except launcher.LaunchError as e:
                self._fail_waiting(ConnectionError(str(e)))
                return
            self._track(self._process)
            log.info("started %s serve (process %s)", program, self._process.pid)
            self._start_deadline = time.monotonic() + START_TIMEOUT
            self._set_state(STARTING)
            QTimer.singleShot(100, self._retry_start)
            return
        if self._want_start and self._waiting:
            self._fail_waiting(launcher.AutoStartOff(str(self.address)))
        else:
            self._fail_waiting(DaemonNotRunning(str(self.address)))
        self.refresh_models()

    def _may_start(self) -> bool:
        return self.settings is None or bool(self.settings.auto_start)

    def _retry_start(self) -> None:
        if self.state == STARTING and self._socket is None and not self._closed:
            self._open(start=True)

    def _fail_waiting(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, []
        self._want_start = False
        self._set_state(DISCONNECTED)
        self._schedule_reconnect()
        for _, on_error in waiting:
            on_error(error)
        if waiting and not isinstance(error, DaemonNotRunning):
            self.problem.emit(str(error))

    def _drop(self, socket: QLocalSocket, error: Optional[BaseException]) -> None:
        """The connection ended: fail what waited on it, then reconnect later."""
        if socket is not self._socket:
            return
        self._discard_socket(socket)
        session, self.session = self.session, None
        was_open = session is not None and session.state == OPEN
        self._status_timer.stop()
        self._status_pending = False
        serving, self._serving = self._serving, None
        if error is None and was_open and session.busy_jobs and serving is not None:
            error = self._crash_of(serving)
        if session is not None:
            session.close(error)
        if self.status is not None:
            self.status = None
            self.statusChanged.emit(None)
        if not was_open and self._waiting:
            # The handshake failed: a version mismatch, or not a Tessera daemon.
            self._fail_waiting(error or ConnectionClosed("the daemon closed the connection"))
            return
        if was_open:
            log.info("disconnected from the daemon: %s", error or "closed")
        self._set_state(DISCONNECTED)
        self.reap()
        self.refresh_models()
        self._schedule_reconnect()

    # --- Daemons started here ---------------------------------------------------

    def _track(self, process: subprocess.Popen) -> None:
        self._children.append(process)
        self._reaper.start()

    def reap(self) -> None:
        """Collects daemons started here that have ended, so that none lingers
        as a zombie process while Krita runs."""
        for process in list(self._children):
            code = process.poll()
            if code is None:
                continue
            self._children.remove(process)
            self.exited[process.pid] = code
            how = launcher.exit_description(code)
            log.info("the daemon (process %s) ended: %s", process.pid, how)
        if not self._children:
            self._reaper.stop()

    def _crash_of(self, process: subprocess.Popen) -> Optional[BaseException]:
        """The error for a job whose daemon (started here) dropped the
        connection: a crash when the process ended abnormally, else ``None``."""
        try:
            code = process.wait(timeout=CRASH_GRACE)
        except subprocess.TimeoutExpired:
            return None  # still running: it closed the connection, it did not crash
        self.reap()
        if launcher.ended_abnormally(code):
            return launcher.DaemonCrashed(launcher.exit_description(code))
        return None

    def _schedule_reconnect(self) -> None:
        if self._closed:
            return
        delay = RECONNECT_DELAYS[min(self._attempt, len(RECONNECT_DELAYS) - 1)]
        self._attempt += 1
        self._reconnect.start(int(delay * 1000))

    def _retry(self) -> None:
        if self.state == DISCONNECTED and not self._closed:
            self._open(start=False)

    def close(self) -> None:
        """Closes the connection for good (Krita is closing); the daemon
        cancels this connection's jobs."""
        self._closed = True
        self._reconnect.stop()
        self._status_timer.stop()
        if self._socket is not None:
            self._drop(self._socket, ConnectionClosed("the plug-in closed the connection"))
        self._set_state(DISCONNECTED)

    def reconnect_now(self) -> None:
        """Tries to connect at once (the docker's refresh button)."""
        self._attempt = 0
        self.reap()
        if self.state == DISCONNECTED:
            self._reconnect.stop()
            self._open(start=False)
        elif self.state == CONNECTED:
            self.refresh_status()
            self.refresh_models()

    # --- Sending ----------------------------------------------------------------

    def _send(self, message: Any) -> None:
        socket = self._socket
        if socket is None:
            raise ConnectionClosed("the connection to the daemon is closed")
        for part in frame_parts(message):
            if socket.write(bytes(part)) < 0:
                raise ConnectionClosed(f"cannot write to the daemon: {socket.errorString()}")

    # --- Status and models ------------------------------------------------------

    def refresh_status(self) -> None:
        if self.session is None or self.session.state != OPEN or self._status_pending:
            return
        self._status_pending = True
        session = self.session

        def done(status: Status) -> None:
            self._status_pending = False
            if session is self.session:
                self.status = status
                self.statusChanged.emit(status)

        def failed(error: BaseException) -> None:
            self._status_pending = False

        session.request_status(done, failed)

    def _set_models(self, models: list, source: str) -> None:
        changed = not self.models_known or source != self.models_source or models != self.models
        self.models, self.models_source, self.models_known = list(models), source, True
        if changed:
            self.modelsChanged.emit(self.models)

    def refresh_models(self) -> None:
        """Asks the daemon for its models, or reads the models folder when no
        daemon is connected; :attr:`modelsChanged` tells when they change."""
        if self.session is None or self.session.state != OPEN:
            if self.state != CONNECTED:
                try:
                    found = list_installed(self.data_dir)
                except Exception:  # no home folder, say: nothing to offer
                    log.warning("cannot read the models folder", exc_info=True)
                    found = []
                self._set_models(found, "folder")
            return
        session = self.session

        def done(models: list) -> None:
            if session is self.session:
                self._set_models(models, "daemon")

        def failed(error: BaseException) -> None:
            log.warning("cannot list the daemon's models: %s", error)

        session.request_models(done, failed)
