"""Helpers for scripts that run inside Krita (``kritarunner`` or the GUI):
reading the test's instructions, waiting on Qt's event loop, making test
documents, and writing the report that pytest checks."""

import json
import os
import struct
import time
import traceback

from krita import Krita, Selection
from PyQt5.QtCore import QCoreApplication, QEventLoop, QTimer

SPEC_ENV = "TESSERA_KRITA_SPEC"


def spec():
    with open(os.environ[SPEC_ENV], encoding="utf-8") as f:
        return json.load(f)


def write_json(path, data):
    partial = path + ".part"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(partial, path)


def run_reported(body, report_path):
    """Runs ``body(report)`` and writes the report, with any exception in it."""
    report = {"error": None, "started": time.time()}
    try:
        body(report)
    except BaseException:
        report["error"] = traceback.format_exc()
    report["seconds"] = time.time() - report["started"]
    write_json(report_path, report)
    return report


def wait_until(predicate, timeout, step_ms=20):
    """Runs Qt's event loop until ``predicate()`` is true; returns it."""
    deadline = time.monotonic() + timeout
    loop = QEventLoop()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        QTimer.singleShot(step_ms, loop.quit)
        loop.exec_()
    return True


def pump(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QCoreApplication.processEvents(QEventLoop.AllEvents, 20)
        time.sleep(0.005)


def pattern(width, height, depth, seed=0):
    """Deterministic RGBA test pixels in Krita's byte order for ``depth``:
    smooth gradients, a few hard edges, and varying alpha."""
    out = bytearray()
    for y in range(height):
        for x in range(width):
            r = ((x * 7 + seed * 13) % width) / max(width - 1, 1)
            g = (y / max(height - 1, 1)) * (0.25 if (x // 8 + y // 8) % 2 else 1.0)
            b = ((x + y) % 32) / 31
            a = 1.0 if x < width * 3 // 4 else 0.5 + 0.5 * (y % 2)
            if depth == "U8":
                out += bytes(round(v * 255) for v in (b, g, r, a))
            elif depth == "U16":
                out += struct.pack("<4H", *(round(v * 65535) for v in (b, g, r, a)))
            elif depth == "F16":
                out += struct.pack("<4e", r, g, b, a)
            else:
                out += struct.pack("<4f", r, g, b, a)
    return bytes(out)


def make_document(
    width, height, depth, profile, layers=1, name="test", model="RGBA", resolution=72.0
):
    """A document with ``layers`` paint layers of test pixels above its
    background; returns (document, top layer). Other colour models than RGBA
    get their layers converted from RGBA test pixels."""
    app = Krita.instance()
    doc = app.createDocument(width, height, name, "RGBA", depth, profile, resolution)
    root = doc.rootNode()
    node = None
    for index in range(layers):
        node = doc.createNode(f"Layer {index + 1}", "paintlayer")
        node.setPixelData(pattern(width, height, depth, seed=index), 0, 0, width, height)
        root.addChildNode(node, None)
    doc.setActiveNode(node)
    doc.waitForDone()
    if model != "RGBA":
        doc.setColorSpace(model, depth, "")
        doc.waitForDone()
    doc.refreshProjection()
    return doc, node


def select(doc, rect):
    selection = Selection()
    selection.select(rect[0], rect[1], rect[2], rect[3], 255)
    doc.setSelection(selection)


def rect_of(qrect):
    return [qrect.x(), qrect.y(), qrect.width(), qrect.height()]


def layer_names(doc):
    return [child.name() for child in doc.rootNode().childNodes()]
