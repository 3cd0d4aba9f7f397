"""The docker as a painter first meets it, on a laptop-sized screen beside
Krita's default dockers, with no daemon running and no models installed:

- its size: the docker's minimum height, the main window's, the screen's;
- a screenshot of the whole screen (``QScreen.grabWindow(0)``: what the X
  server shows) compared with the Upscale button as it paints itself, at the
  place the button says it is, to show that the button is on the screen and
  not covered;
- the status line while the plug-in keeps trying to reach the daemon;
- the first-run hint; every tooltip rich text (so that Qt wraps it) and the
  width of one shown;
- an upscale with starting the daemon turned off, and the message it gives.

Everything measured goes into the report; the screenshots are PNG files next
to it."""

import os
import time

import kritatest
from PyQt5.QtCore import QPoint, QRect, Qt
from PyQt5.QtGui import QGuiApplication, QImage
from PyQt5.QtWidgets import (
    QApplication,
    QDockWidget,
    QDoubleSpinBox,
    QLabel,
    QPushButton,
    QToolButton,
    QToolTip,
    QWidget,
)

DOCKER_ID = "tessera_krita_docker"


def rect(r):
    return [r.x(), r.y(), r.width(), r.height()]


def compare(screen_image, widget_image):
    """The share of the widget's pixels that the screen shows unchanged."""
    a = screen_image.convertToFormat(QImage.Format_RGB32)
    b = widget_image.convertToFormat(QImage.Format_RGB32)
    if a.size() != b.size() or a.width() == 0 or a.height() == 0:
        return 0.0
    same = 0
    for y in range(a.height()):
        for x in range(a.width()):
            if a.pixel(x, y) == b.pixel(x, y):
                same += 1
    return same / (a.width() * a.height())


def on_screen(widget, shot, out_dir, name):
    """Where ``widget`` is on the screen, and how much of it the screenshot
    shows as the widget paints itself (``grab()``)."""
    top_left = widget.mapToGlobal(QPoint(0, 0))
    where = QRect(top_left, widget.size())
    grabbed = widget.grab().toImage()
    grabbed.save(os.path.join(out_dir, name + "-grab.png"))
    screen_rect = QRect(0, 0, shot.width(), shot.height())
    inside = screen_rect.contains(where)
    crop = shot.copy(where).toImage()
    crop.save(os.path.join(out_dir, name + "-on-screen.png"))
    return {
        "rect": rect(where),
        "inside_screen": inside,
        "visible": widget.isVisible(),
        "matching_pixels": compare(crop, grabbed) if inside else 0.0,
    }


def shown_tooltip_size(widget):
    """Shows ``widget``'s tooltip as hovering would and measures it."""
    QToolTip.showText(widget.mapToGlobal(QPoint(4, 4)), widget.toolTip(), widget)
    kritatest.pump(0.3)
    tips = [
        w
        for w in QApplication.topLevelWidgets()
        if w.metaObject().className() == "QTipLabel" and w.isVisible()
    ]
    size = [tips[0].width(), tips[0].height()] if tips else None
    return size


def run(app, spec, report, window):
    out_dir = spec["out_dir"]
    qwindow = window.qwindow()
    screen = QGuiApplication.primaryScreen()
    available = screen.availableGeometry()
    report["screen"] = rect(screen.geometry())
    report["available"] = rect(available)
    dockers = qwindow.findChildren(QDockWidget)
    report["default_dockers"] = sorted(d.objectName() for d in dockers if d.isVisible())
    report["window_minimum_before"] = qwindow.minimumSizeHint().height()

    # Krita shows a new plug-in's docker on its first start; otherwise a user
    # ticks it in Settings ▸ Dockers, which is what this does.
    dock = qwindow.findChild(QDockWidget, DOCKER_ID)
    report["docker_found"] = dock is not None
    report["docker_shown_at_start"] = dock.isVisible()
    if not dock.isVisible():
        dock.toggleViewAction().trigger()
    doc, layer = kritatest.make_document(128, 96, "U8", "sRGB-elle-V2-srgbtrc.icc", name="lay")
    window.addView(doc)
    app.setActiveDocument(doc)
    kritatest.pump(1.0)
    # The whole screen, as a maximised window would have it (Xvfb has no
    # window manager to maximise it).
    qwindow.setGeometry(available)
    kritatest.pump(1.5)

    panel = dock.widget()
    report["docker_visible"] = dock.isVisible()
    report["docker_area"] = int(qwindow.dockWidgetArea(dock))
    report["docker_minimum"] = dock.minimumSizeHint().height()
    report["docker_height"] = dock.height()
    report["panel_minimum"] = panel.minimumSizeHint().height()
    report["window_minimum"] = qwindow.minimumSizeHint().height()
    report["window"] = rect(qwindow.frameGeometry())
    report["dockers_beside"] = sorted(
        d.objectName()
        for d in dockers
        if d.isVisible() and qwindow.dockWidgetArea(d) == qwindow.dockWidgetArea(dock)
    )

    button = dock.findChild(QPushButton, "tessera_upscale_button")
    shot = screen.grabWindow(0)
    shot.save(os.path.join(out_dir, "screen.png"))
    report["upscale_button"] = on_screen(button, shot, out_dir, "upscale")
    # The same comparison for a widget known to be elsewhere shows that it
    # can tell: the Cancel button's pixels where the Upscale button is.
    cancel = dock.findChild(QPushButton, "tessera_cancel_button")
    crop = shot.copy(QRect(button.mapToGlobal(QPoint(0, 0)), button.size())).toImage()
    report["cancel_at_upscale_place"] = compare(crop, cancel.grab().toImage())
    result = dock.findChild(QLabel, "tessera_message")
    report["result_line"] = rect(QRect(result.mapToGlobal(QPoint(0, 0)), result.size()))

    # No daemon: the status line while the plug-in keeps trying.
    status = dock.findChild(QLabel, "tessera_status")
    from tessera_krita.extension import services

    link = services().link
    seen = [status.text()]
    attempts = []

    def state_changed(state):
        attempts.append(state)
        seen.append(status.text())

    link.stateChanged.connect(state_changed)
    started = time.monotonic()
    # Two attempts asked for with the ⟳ button, then one the plug-in makes
    # on its own (its pauses grow to 10 s).
    refresh = dock.findChild(QToolButton, "tessera_refresh")
    for _ in range(2):
        refresh.click()
        kritatest.pump(0.2)
    kritatest.wait_until(lambda: attempts.count("connecting") >= 3, 15)
    link.stateChanged.disconnect(state_changed)
    report["status_texts"] = seen
    report["status_attempts"] = attempts.count("connecting")
    report["status_watch_seconds"] = time.monotonic() - started

    # First run: no models.
    hint = dock.findChild(QLabel, "tessera_first_run")
    report["first_run_visible"] = hint.isVisible()
    report["first_run_text"] = hint.text()

    # Tooltips: rich text everywhere, and one shown.
    tips = {}
    for widget in panel.findChildren(QWidget):
        tip = widget.toolTip()
        if tip:
            tips[widget.objectName() or type(widget).__name__] = bool(Qt.mightBeRichText(tip))
    report["tooltips_rich"] = tips
    creativity = dock.findChild(QDoubleSpinBox, "tessera_param_creativity")
    report["tooltip_size"] = shown_tooltip_size(creativity)
    screen.grabWindow(0).save(os.path.join(out_dir, "tooltip.png"))
    QToolTip.hideText()

    # Upscale with starting the daemon turned off (the kritarc says so).
    doc.setActiveNode(layer)
    kritatest.pump(0.5)
    message = dock.findChild(QLabel, "tessera_message")
    clicked = time.monotonic()
    button.click()
    kritatest.wait_until(lambda: message.text() != "", 10)
    report["no_daemon_message"] = message.text()
    report["no_daemon_seconds"] = time.monotonic() - clicked
    kritatest.pump(0.3)
    screen.grabWindow(0).save(os.path.join(out_dir, "message.png"))
    report["upscale_button_after"] = on_screen(
        button, screen.grabWindow(0), out_dir, "upscale-after"
    )
