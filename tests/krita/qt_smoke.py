"""The plug-in's Qt side without Krita, under whichever PyQt this Python
has (PyQt5 for Krita 5, PyQt6 for Krita 6): the docker panel is built, the
``QLocalSocket`` link connects to a daemon, shows its status and models, and
an upscale of a stand-in document goes through to a new layer, with
progress, and a cancel. Prints one JSON line; run by ``test_qt.py``.

    QT_QPA_PLATFORM=offscreen python3 qt_smoke.py SOCKET
"""

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "plugin-krita"), str(REPO / "shared" / "python")]

from tessera_krita import qt  # noqa: E402
from tessera_krita.connection import CONNECTED, DaemonLink  # noqa: E402
from tessera_krita.panel import Panel  # noqa: E402
from tessera_krita.proto import SocketAddress  # noqa: E402
from tessera_krita.settings import DictStore, Settings  # noqa: E402
from tessera_krita.upscaler import Upscaler  # noqa: E402


class Rect:
    def __init__(self, x, y, w, h):
        self._r = (x, y, w, h)

    def x(self):
        return self._r[0]

    def y(self):
        return self._r[1]

    def width(self):
        return self._r[2]

    def height(self):
        return self._r[3]


class Node:
    """Enough of ``krita.Node`` for the plug-in: pixels in a dict by position."""

    def __init__(self, doc, name, data=b"", rect=(0, 0, 0, 0)):
        self.doc, self._name, self.data, self.rect = doc, name, data, rect
        self.parent = None
        self.children = []

    def name(self):
        return self._name

    def type(self):
        return "paintlayer"

    def uniqueId(self):
        return id(self)

    def colorModel(self):
        return "RGBA"

    def colorDepth(self):
        return "U8"

    def colorProfile(self):
        return "sRGB-elle-V2-srgbtrc.icc"

    def projectionPixelData(self, x, y, w, h):
        assert (x, y, w, h) == self.rect
        return qt.QByteArray(self.data)

    def setPixelData(self, data, x, y, w, h):
        self.data, self.rect = bytes(data), (x, y, w, h)

    def childNodes(self):
        return list(self.children)

    def parentNode(self):
        return self.parent

    def addChildNode(self, child, above):
        child.parent = self
        index = self.children.index(above) + 1 if above is not None else len(self.children)
        self.children.insert(index, child)
        self.doc.changes.append("add " + child.name())


class Document:
    def __init__(self, w, h, data):
        self.w, self.h, self.changes = w, h, []
        self.root = Node(self, "root")
        self.layer = Node(self, "Layer 1", data, (0, 0, w, h))
        self.root.children.append(self.layer)
        self.layer.parent = self.root

    def __eq__(self, other):
        return self is other

    def width(self):
        return self.w

    def height(self):
        return self.h

    def selection(self):
        return None

    def activeNode(self):
        return self.layer

    def rootNode(self):
        return self.root

    def waitForDone(self):
        pass

    def refreshProjection(self):
        pass

    def resolution(self):
        return 72

    def scaleImage(self, w, h, xres, yres, strategy):
        self.changes.append(f"scale {w}x{h}")
        self.w, self.h = w, h

    def createNode(self, name, kind):
        return Node(self, name)

    def setActiveNode(self, node):
        pass


class App:
    def __init__(self, doc):
        self.doc = doc

    def documents(self):
        return [self.doc]

    def activeDocument(self):
        return self.doc


def wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    loop = qt.QEventLoop()
    while not predicate() and time.monotonic() < deadline:
        qt.QTimer.singleShot(20, loop.quit)
        qt.exec_(loop)
    return predicate()


def main() -> int:
    app = qt.QApplication(sys.argv[:1])
    settings = Settings(DictStore())
    settings.output = "in-place"
    settings.set_value("scale", 2)
    link = DaemonLink("qt-smoke", settings, SocketAddress("path", sys.argv[1]))
    doc = Document(8, 4, bytes(range(128)))
    upscaler = Upscaler(App(doc), link, settings)
    panel = Panel(link, upscaler, settings)
    panel.show()
    out = {"qt": qt.QT_MAJOR}
    link.start()
    out["connected"] = wait(lambda: link.state == CONNECTED and link.status is not None)
    out["status"] = panel.status_label.text()
    out["models"] = [
        panel.inputs["upscaler"].itemText(i) for i in range(panel.inputs["upscaler"].count())
    ]
    # The shape: main parameters above the buttons, the rest folded away, all
    # in a scroll area that asks for no more than the top part's height.
    advanced = panel.advanced_box
    out["layout"] = {
        "main": sorted(k for k, w in panel.inputs.items() if not advanced.isAncestorOf(w)),
        "advanced": sorted(k for k, w in panel.inputs.items() if advanced.isAncestorOf(w)),
        "choices_advanced": advanced.isAncestorOf(panel.output_combo)
        and advanced.isAncestorOf(panel.source_combo)
        and advanced.isAncestorOf(panel.auto_start_box),
        "folded": not advanced.isVisible(),
        "in_scroll_area": panel.scroll.widget().isAncestorOf(panel.upscale_button),
        "minimum": panel.minimumSizeHint().height(),
        "first_run_hint": panel.first_run_label.isVisible(),
        "rich_tooltips": all(
            qt.Qt.mightBeRichText(w.toolTip())
            for w in panel.findChildren(qt.QWidget)
            if w.toolTip()
        ),
    }
    panel.advanced_toggle.click()
    out["layout"]["unfolded"] = advanced.isVisible()
    panel.advanced_toggle.click()
    # At its minimum height the docker still shows the buttons and the result line.
    size = panel.size()
    panel.resize(size.width(), panel.minimumSizeHint().height())
    wait(lambda: False, 0.3)
    viewport = panel.scroll.viewport()
    out["layout"]["at_minimum"] = {
        name: widget.mapTo(viewport, qt.QtCore.QPoint(0, widget.height())).y() <= viewport.height()
        for name, widget in (
            ("upscale", panel.upscale_button),
            ("cancel", panel.cancel_button),
            ("result", panel.message_label),
        )
    }
    panel.resize(size)
    outcomes, values = [], []
    upscaler.finished.connect(outcomes.append)
    panel.progress_bar.valueChanged.connect(values.append)
    panel.upscale_button.click()
    wait(lambda: outcomes)
    result = outcomes[0]
    out["upscale"] = {"ok": result.ok, "message": result.message, "changes": doc.changes}
    out["layers"] = [(n.name(), n.rect) for n in doc.root.children]
    out["progress"] = values
    # A cancel as soon as progress shows: nothing changes.
    doc = upscaler.app.doc = Document(8, 4, bytes(range(128)))
    before = list(doc.changes)
    outcomes.clear()
    upscaler.progressed.connect(lambda f, t: f > 0 and panel.cancel_button.click())
    panel.upscale_button.click()
    wait(lambda: outcomes)
    out["cancel"] = {
        "cancelled": outcomes[0].cancelled,
        "message": panel.message_label.text(),
        "unchanged": doc.changes == before,
    }
    # An error is shown in words with a link to the log folder.
    outcomes.clear()
    doc.layer.type = lambda: "transparencymask"
    panel.upscale_button.click()
    wait(lambda: outcomes)
    out["error"] = {"ok": outcomes[0].ok, "html": panel.message_label.text()}
    link.close()
    print(json.dumps(out))
    app.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
