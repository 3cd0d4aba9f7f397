"""The GUI scenario; see the package's docstring."""

import hashlib
import os
import threading
import time
import traceback

import kritatest
from krita import Krita
from PyQt5.QtCore import QTimer
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
        "resolution": [doc.xRes(), doc.yRes()],
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
    """Phase 1: the document and the docker. Krita 5.2 applies a new view's
    active node only back in its main event loop (not in a nested one), so
    phase 2 runs from a later timer of its own."""
    spec = kritatest.spec()
    watchdog(spec.get("watchdog", 240))
    app = Krita.instance()
    report = {"error": None, "started": time.time()}
    if spec.get("scenario") == "layout":
        QTimer.singleShot(1000, lambda: run_layout(app, spec, report))
        return
    ctx = {"spec": spec, "report": report, "tries": 0}
    try:
        setup(app, spec, report, ctx)
    except BaseException:
        finish(app, spec, report, traceback.format_exc())
        return
    QTimer.singleShot(1000, lambda: settle(app, ctx))


def run_layout(app, spec, report):
    from . import layout

    try:
        report["krita"] = app.version()
        layout.run(app, spec, report, app.activeWindow())
        error = None
    except BaseException:
        error = traceback.format_exc()
    finish(app, spec, report, error)


def setup(app, spec, report, ctx):
    report["krita"] = app.version()
    window = app.activeWindow()
    qwindow = window.qwindow()
    actions = {name: app.action(name) for name in ("tessera_upscale", "tessera_cancel")}
    report["actions"] = {
        name: (action.text() if action is not None else None) for name, action in actions.items()
    }
    dock = qwindow.findChild(QDockWidget, DOCKER_ID)
    report["docker_found"] = dock is not None
    report["dockers"] = [d.objectName() for d in qwindow.findChildren(QDockWidget)]
    dock.setVisible(True)
    dock.raise_()
    report["docker_widgets"] = widgets_of(dock)
    from tessera_krita.extension import services

    outcomes = []
    services().upscaler.finished.connect(
        lambda o: outcomes.append({"ok": o.ok, "cancelled": o.cancelled, "error": repr(o.error)})
    )
    report["outcomes"] = outcomes
    doc, layer = kritatest.make_document(
        spec["width"], spec["height"], "U8", "sRGB-elle-V2-srgbtrc.icc", name="gui",
        resolution=spec.get("resolution", 72.0),
    )  # fmt: skip
    window.addView(doc)
    app.setActiveDocument(doc)
    doc.setActiveNode(layer)
    kritatest.select(doc, spec["selection"])
    ctx.update(window=window, dock=dock, actions=actions, doc=doc, layer=layer)


def settle(app, ctx):
    doc, layer = ctx["doc"], ctx["layer"]
    active = doc.activeNode()
    if (active is None or active.name() != layer.name()) and ctx["tries"] < 20:
        ctx["tries"] += 1
        doc.setActiveNode(layer)
        QTimer.singleShot(250, lambda: settle(app, ctx))
        return
    ctx["report"]["active_node_settled"] = active is not None and active.name() == layer.name()
    try:
        drive(app, ctx)
        error = None
    except BaseException:
        error = traceback.format_exc()
    finish(app, ctx["spec"], ctx["report"], error)


def finish(app, spec, report, error):
    report["error"] = error
    report["seconds"] = time.time() - report["started"]
    try:
        kritatest.write_json(os.path.join(spec["out_dir"], "report.json"), report)
    finally:
        for document in app.documents():
            document.setModified(False)
        window = app.activeWindow()
        if window is not None:
            window.qwindow().close()


def drive(app, ctx):
    spec, report = ctx["spec"], ctx["report"]
    dock, actions, doc = ctx["dock"], ctx["actions"], ctx["doc"]
    probe = DockerProbe(dock)
    report["connected"] = kritatest.wait_until(lambda: "Connected" in probe.status.text(), 30)
    report["status_text"] = probe.status.text()

    # The daemon's models reach the docker; choose the test model there.
    combo = dock.findChild(QComboBox, "tessera_param_upscaler")
    kritatest.wait_until(lambda: combo.findData(spec["model"]) >= 0, 10)
    report["models_in_combo"] = [combo.itemText(i) for i in range(combo.count())]
    combo.setCurrentIndex(combo.findData(spec["model"]))
    dock.findChild(QDoubleSpinBox, "tessera_param_scale").setValue(spec["scale"])
    # The upscaler alone: the test data directory has no SD models.
    preset = dock.findChild(QComboBox, "tessera_param_preset")
    preset.setCurrentIndex(preset.findData("upscaler"))
    report["creativity_enabled_for_upscaler"] = dock.findChild(
        QDoubleSpinBox, "tessera_param_creativity"
    ).isEnabled()
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
    # Then as many undos as it takes to get the document back as it was.
    steps = []
    while snapshot(doc) != before and len(steps) < 4:
        shown = snapshot(doc)
        undo.trigger()
        kritatest.wait_until(lambda shown=shown: snapshot(doc) != shown, 20)
        steps.append(snapshot(doc))
    report["undos_after_the_layer"] = steps
    report["after_all_undos"] = snapshot(doc)

    # 3. Preview the selection through the docker's button; then undo it.
    kritatest.select(doc, spec["selection"])
    preview = dock.findChild(QPushButton, "tessera_preview_button")
    report["preview_button_beside_upscale"] = (
        preview is not None
        and preview.parentWidget() is probe.upscale.parentWidget()
        and abs(preview.y() - probe.upscale.y()) < 4
        and preview.x() > probe.upscale.x()
    )
    before_preview = snapshot(doc)
    probe.reset()
    preview.click()
    report["idle_after_preview"] = kritatest.wait_until(
        lambda: probe.idle() and probe.message.text(), 240
    )
    kritatest.pump(0.5)
    shown = snapshot(doc)
    report["preview"] = {
        "message": probe.message.text(),
        "stages": probe.stages,
        "before": before_preview,
        "after": shown,
        "active": doc.activeNode().name() if doc.activeNode() is not None else None,
    }
    undo.trigger()
    kritatest.wait_until(lambda: snapshot(doc) != shown, 20)
    report["after_preview_undo"] = snapshot(doc)
