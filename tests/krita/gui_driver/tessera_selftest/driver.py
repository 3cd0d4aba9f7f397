"""The GUI scenario; see the package's docstring."""

import hashlib
import os
import threading
import time

import kritatest
from krita import Krita
from PyQt5.QtWidgets import (
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QLabel,
    QProgressBar,
    QPushButton,
)

DOCKER_ID = "tessera_krita_docker"

_started = False


def start():
    global _started
    if _started:
        return
    _started = True
    from PyQt5.QtCore import QTimer

    QTimer.singleShot(500, run)


def watchdog(seconds):
    def kill():
        time.sleep(seconds)
        os._exit(3)

    threading.Thread(target=kill, daemon=True).start()


def snapshot(doc):
    doc.waitForDone()
    doc.refreshProjection()
    layers = []
    for child in doc.rootNode().childNodes():
        b = child.bounds()
        data = bytes(child.pixelData(b.x(), b.y(), b.width(), b.height()))
        layers.append([child.name(), kritatest.rect_of(b), hashlib.sha256(data).hexdigest()])
    merged = bytes(doc.pixelData(0, 0, doc.width(), doc.height()))
    return {
        "size": [doc.width(), doc.height()],
        "layers": layers,
        "merged": hashlib.sha256(merged).hexdigest(),
    }


class DockerProbe:
    """Watches the docker's widgets the way a user sees them."""

    def __init__(self, dock):
        self.dock = dock
        self.bar = dock.findChild(QProgressBar, "tessera_progress")
        self.stage = dock.findChild(QLabel, "tessera_stage")
        self.message = dock.findChild(QLabel, "tessera_message")
        self.status = dock.findChild(QLabel, "tessera_status")
        self.upscale = dock.findChild(QPushButton, "tessera_upscale_button")
        self.cancel = dock.findChild(QPushButton, "tessera_cancel_button")
        self.values = []
        self.stages = []
        self.bar.valueChanged.connect(self._value)

    def _value(self, value):
        self.values.append(value)
        text = self.stage.text()
        if not self.stages or self.stages[-1] != text:
            self.stages.append(text)

    def reset(self):
        self.values = []
        self.stages = []

    def idle(self):
        return self.upscale.isEnabled() and not self.cancel.isEnabled()


def widgets_of(dock):
    found = {}
    for widget in dock.findChildren(QComboBox) + dock.findChildren(QLabel):
        name = widget.objectName()
        if name.startswith("tessera_"):
            found[name] = type(widget).__name__
    for widget in dock.widget().findChildren(object):
        name = widget.objectName() if hasattr(widget, "objectName") else ""
        if name.startswith("tessera_param_"):
            found[name] = type(widget).__name__
    return found


def run():
    spec = kritatest.spec()
    out_dir = spec["out_dir"]
    watchdog(spec.get("watchdog", 240))
    app = Krita.instance()

    def body(report):
        report["krita"] = app.version()
        window = app.activeWindow()
        qwindow = window.qwindow()
        actions = {name: app.action(name) for name in ("tessera_upscale", "tessera_cancel")}
        report["actions"] = {
            name: (action.text() if action is not None else None)
            for name, action in actions.items()
        }
        dock = qwindow.findChild(QDockWidget, DOCKER_ID)
        report["docker_found"] = dock is not None
        report["dockers"] = [d.objectName() for d in qwindow.findChildren(QDockWidget)]
        dock.setVisible(True)
        dock.raise_()
        probe = DockerProbe(dock)
        report["docker_widgets"] = widgets_of(dock)
        from tessera_krita.extension import services

        outcomes = []
        services().upscaler.finished.connect(
            lambda o: outcomes.append(
                {"ok": o.ok, "cancelled": o.cancelled, "error": repr(o.error)}
            )
        )
        report["outcomes"] = outcomes

        doc, layer = kritatest.make_document(
            spec["width"], spec["height"], "U8", "sRGB-elle-V2-srgbtrc.icc", name="gui"
        )
        window.addView(doc)
        app.setActiveDocument(doc)
        doc.setActiveNode(layer)
        kritatest.select(doc, spec["selection"])
        kritatest.pump(0.5)
        report["connected"] = kritatest.wait_until(lambda: "Connected" in probe.status.text(), 30)
        report["status_text"] = probe.status.text()

        # The daemon's models reach the docker; choose the test model there.
        combo = dock.findChild(QComboBox, "tessera_param_upscaler")
        kritatest.wait_until(lambda: combo.findData(spec["model"]) >= 0, 10)
        report["models_in_combo"] = [combo.itemText(i) for i in range(combo.count())]
        combo.setCurrentIndex(combo.findData(spec["model"]))
        dock.findChild(QDoubleSpinBox, "tessera_param_scale").setValue(spec["scale"])
        output = dock.findChild(QComboBox, "tessera_output")
        output.setCurrentIndex(output.findData("new-document"))

        # 1. Upscale through the action, cancel through the action mid-job.
        before = snapshot(doc)
        documents_before = len(app.documents())
        probe.reset()
        cancelled = []

        def cancel_on_first_progress(value):
            # Like a user watching the docker, but without a user's delay.
            if value > 0 and not cancelled:
                cancelled.append(probe.cancel.isEnabled())
                actions["tessera_cancel"].trigger()

        probe.bar.valueChanged.connect(cancel_on_first_progress)
        actions["tessera_upscale"].trigger()
        report["progress_reached_docker"] = kritatest.wait_until(lambda: cancelled, 120)
        probe.bar.valueChanged.disconnect(cancel_on_first_progress)
        report["busy_when_cancelled"] = bool(cancelled and cancelled[0])
        report["idle_after_cancel"] = kritatest.wait_until(probe.idle, 60)
        kritatest.pump(0.5)
        report["cancel"] = {
            "values": probe.values,
            "stages": probe.stages,
            "message": probe.message.text(),
            "document_untouched": snapshot(doc) == before,
            "documents": [documents_before, len(app.documents())],
        }

        # 2. Upscale in place through the docker's button; then undo it.
        output.setCurrentIndex(output.findData("in-place"))
        probe.reset()
        probe.upscale.click()
        report["idle_after_upscale"] = kritatest.wait_until(
            lambda: probe.idle() and probe.message.text(), 240
        )
        kritatest.pump(0.5)
        after = snapshot(doc)
        report["in_place"] = {
            "message": probe.message.text(),
            "stages": probe.stages,
            "final_value": probe.values[-1] if probe.values else None,
            "before": before,
            "after": after,
        }
        undo = app.action("edit_undo")
        undo.trigger()
        kritatest.wait_until(lambda: len(snapshot(doc)["layers"]) < len(after["layers"]), 20)
        report["after_one_undo"] = snapshot(doc)
        undo.trigger()
        kritatest.wait_until(lambda: snapshot(doc)["size"] == before["size"], 20)
        report["after_two_undos"] = snapshot(doc)

    try:
        kritatest.run_reported(body, os.path.join(out_dir, "report.json"))
    finally:
        for document in app.documents():
            document.setModified(False)
        window = app.activeWindow()
        if window is not None:
            window.qwindow().close()
