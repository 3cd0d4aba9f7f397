"""The plug-in inside Krita: the shared services, the actions and the docker.

One connection to the daemon and one upscaler serve every window; each
window gets the two actions (Tools ▸ Scripts, shortcuts bindable in
Settings ▸ Configure Krita ▸ Keyboard Shortcuts) and can show the docker
(Settings ▸ Dockers ▸ Tessera Upscaler).
"""

import logging
import os
from typing import Any, Optional

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from . import VERSION, document, logs
from .connection import DaemonLink
from .panel import Panel
from .qt import QMessageBox
from .settings import KritaStore, Settings
from .upscaler import Upscaler

log = logging.getLogger("tessera_krita")

DOCKER_ID = "tessera_krita_docker"
ACTION_UPSCALE = "tessera_upscale"
ACTION_CANCEL = "tessera_cancel"
AGENT = f"krita-plugin {VERSION}"


class Services:
    """What every window shares."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = Settings(KritaStore(app))
        self.link = DaemonLink(AGENT, self.settings)
        self.upscaler = Upscaler(app, self.link, self.settings)
        self.upscaler.conversionOffered.connect(self._offer_conversion)
        self.upscaler.finished.connect(self._floating_message)
        self._from_action = False
        try:
            logs.setup(self.link.data_dir)
        except Exception:  # no home folder: run without a log file
            log.warning("no log file", exc_info=True)

    def upscale_from_action(self) -> None:
        self._from_action = True
        self.upscaler.upscale()

    def _window(self) -> Any:
        window = self.app.activeWindow()
        return window.qwindow() if window is not None else None

    def _offer_conversion(self, doc: Any, conversion: Any, message: str) -> None:
        if doc is None or conversion is None or self.app.batchmode():
            return
        answer = QMessageBox.question(
            self._window(),
            "Tessera",
            message + "\n\nConvert the document to {} {} now?".format(conversion[1], "RGB"),
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        try:
            document.convert_document(doc, conversion)
        except document.UserError as e:
            QMessageBox.warning(self._window(), "Tessera", str(e))
            return
        self.upscaler.upscale(doc)

    def _floating_message(self, outcome: Any) -> None:
        """Results of the action show on the canvas too: the docker may be hidden."""
        from_action, self._from_action = self._from_action, False
        if not from_action:
            return
        window = self.app.activeWindow()
        view = window.activeView() if window is not None else None
        show = getattr(view, "showFloatingMessage", None)
        if show is None:
            return
        try:
            show("Tessera: " + outcome.message, self.app.icon("krita_tool_freehand"), 4000, 1)
        except (TypeError, RuntimeError):
            pass

    def shutdown(self) -> None:
        self.upscaler.cancel()
        self.link.close()


_services: Optional[Services] = None


def services() -> Services:
    global _services
    if _services is None:
        _services = Services(Krita.instance())
    return _services


class TesseraExtension(Extension):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        shared = services()
        shared.link.start()
        notifier = Krita.instance().notifier()
        notifier.applicationClosing.connect(shared.shutdown)

    def createActions(self, window: Any) -> None:
        upscale = window.createAction(
            ACTION_UPSCALE, "Upscale Selection or Layer (Tessera)", "tools/scripts"
        )
        upscale.triggered.connect(lambda: services().upscale_from_action())
        cancel = window.createAction(ACTION_CANCEL, "Cancel Tessera Upscale", "tools/scripts")
        cancel.triggered.connect(lambda: services().upscaler.cancel())


class TesseraDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("Tessera Upscaler")
        shared = services()
        self.panel = Panel(shared.link, shared.upscaler, shared.settings, self)
        self.setWidget(self.panel)

    def canvasChanged(self, canvas: Any) -> None:
        pass


_registered = False


def register() -> None:
    """Adds the extension and the docker to Krita, once."""
    global _registered
    if _registered:
        return
    _registered = True
    app = Krita.instance()
    app.addExtension(TesseraExtension(app))
    app.addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockPosition.DockRight, TesseraDocker)
    )
    log.debug("registered in Krita %s (pid %s)", app.version(), os.getpid())
