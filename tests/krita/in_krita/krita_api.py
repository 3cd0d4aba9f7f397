"""Runs inside ``kritarunner``: drives the installed plug-in's request path
(``Upscaler.upscale`` → ``DaemonLink`` → the daemon → the document) on test
documents, as the cases in ``$TESSERA_KRITA_SPEC`` say, and writes what
happened to a report (plus raw pixel files) for pytest to check.

    kritarunner -s krita_api -f main
"""

import hashlib
import os

import kritatest
from krita import Krita

from tessera_krita import document as doc_io
from tessera_krita.connection import CONNECTED, DISCONNECTED, DaemonLink
from tessera_krita.settings import DictStore, Settings
from tessera_krita.upscaler import Upscaler


def snapshot(doc):
    """Everything a failed or cancelled job must leave as it was."""
    doc.waitForDone()
    doc.refreshProjection()
    layers = []
    for child in doc.rootNode().childNodes():
        bounds = child.bounds()
        data = bytes(child.pixelData(bounds.x(), bounds.y(), bounds.width(), bounds.height()))
        layers.append([child.name(), kritatest.rect_of(bounds), hashlib.sha256(data).hexdigest()])
    merged = bytes(doc.pixelData(0, 0, doc.width(), doc.height()))
    return {
        "size": [doc.width(), doc.height()],
        "model": [doc.colorModel(), doc.colorDepth(), doc.colorProfile()],
        "layers": layers,
        "merged": hashlib.sha256(merged).hexdigest(),
    }


def write_raw(out_dir, name, data):
    path = os.path.join(out_dir, name)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


class Harness:
    """The plug-in's objects, as the extension would make them."""

    def __init__(self, case):
        self.settings = Settings(DictStore())
        self.settings.tessera_path = case.get("tessera_path", "")
        self.settings.auto_start = case.get("auto_start", True)
        self.link = DaemonLink("krita-plugin test", self.settings)
        self.upscaler = Upscaler(Krita.instance(), self.link, self.settings)
        self.progress = []
        self.outcomes = []
        self.offers = []
        self.states = []
        self.upscaler.progressed.connect(lambda f, t: self.progress.append([f, t]))
        self.upscaler.finished.connect(self.outcomes.append)
        self.upscaler.conversionOffered.connect(lambda d, c, m: self.offers.append([c, m]))
        self.link.stateChanged.connect(self.states.append)

    def run(self, doc, node, case, timeout=240):
        self.outcomes.clear()
        started = self.upscaler.upscale(
            doc, node, case.get("source", "layer"), case.get("output"), case.get("values")
        )
        cancel_at = case.get("cancel_at_progress")
        if started and cancel_at is not None:
            # Cancel from the progress signal itself, as soon as the job runs.
            def on_progress(fraction, text):
                if fraction > cancel_at and not hasattr(self, "cancel_returned"):
                    self.cancel_returned = self.upscaler.cancel()

            self.upscaler.progressed.connect(on_progress)
        kritatest.wait_until(lambda: self.outcomes, timeout)
        return self.outcomes[0] if self.outcomes else None


def outcome_report(outcome):
    if outcome is None:
        return {"ok": False, "message": "no outcome within the timeout", "timed_out": True}
    return {
        "ok": outcome.ok,
        "cancelled": outcome.cancelled,
        "message": outcome.message,
        "error": repr(outcome.error) if outcome.error is not None else None,
        "warnings": list(outcome.warnings),
    }


def upscale_case(case, out_dir, entry):
    doc, node = kritatest.make_document(
        case["width"], case["height"], case["depth"], case.get("profile", ""),
        layers=case.get("layers", 1), model=case.get("model", "RGBA"),
    )  # fmt: skip
    if case.get("selection"):
        kritatest.select(doc, case["selection"])
    harness = Harness(case)
    rect = case.get("selection") or [0, 0, case["width"], case["height"]]
    if case.get("source") == "merged":
        sent = doc.pixelData(*rect)
    else:
        sent = node.projectionPixelData(*rect)
    entry["input"] = write_raw(out_dir, case["name"] + ".input.raw", sent)
    entry["input_rect"] = rect
    entry["before"] = snapshot(doc)
    entry["source_layer"] = node.name()
    outcome = harness.run(doc, node, case)
    entry.update(outcome_report(outcome))
    entry["progress"] = harness.progress
    entry["cancel_returned"] = getattr(harness, "cancel_returned", None)
    if outcome is not None and outcome.ok:
        if case.get("output") == "in-place":
            layer = outcome.result
            siblings = [c.name() for c in layer.parentNode().childNodes()]
            bounds = layer.bounds()
            entry["layer"] = {
                "name": layer.name(),
                "bounds": kritatest.rect_of(bounds),
                "siblings": siblings,
                "model": [layer.colorModel(), layer.colorDepth(), layer.colorProfile()],
            }
            entry["document_size"] = [doc.width(), doc.height()]
            entry["result"] = write_raw(
                out_dir,
                case["name"] + ".result.raw",
                layer.pixelData(bounds.x(), bounds.y(), bounds.width(), bounds.height()),
            )
        else:
            new = outcome.result
            layers = new.rootNode().childNodes()
            entry["new_document"] = {
                "size": [new.width(), new.height()],
                "layers": [c.name() for c in layers],
                "model": [new.colorModel(), new.colorDepth(), new.colorProfile()],
            }
            entry["result"] = write_raw(
                out_dir,
                case["name"] + ".result.raw",
                layers[-1].pixelData(0, 0, new.width(), new.height()),
            )
            entry["after"] = snapshot(doc)
    else:
        entry["after"] = snapshot(doc)
    entry["offers"] = harness.offers
    if harness.offers and case.get("convert"):
        doc_io.convert_document(doc, harness.offers[0][0])
        entry["converted_model"] = [doc.colorModel(), doc.colorDepth(), doc.colorProfile()]
        node = doc.activeNode() or node
        again = harness.run(doc, node, dict(case, values=case.get("values")))
        entry["after_conversion"] = outcome_report(again)
    harness.link.close()


def reconnect_case(case, out_dir, entry):
    """Connect, let pytest restart the daemon, and upscale on the new one."""
    harness = Harness(case)
    link = harness.link
    link.start()
    entry["connected"] = kritatest.wait_until(lambda: link.state == CONNECTED, 30)
    entry["first_agent"] = link.daemon_agent
    kritatest.write_json(os.path.join(out_dir, "reconnect.ready"), {"ok": True})
    entry["saw_disconnect"] = kritatest.wait_until(lambda: link.state == DISCONNECTED, 60)
    entry["reconnected"] = kritatest.wait_until(lambda: link.state == CONNECTED, 60)
    entry["states"] = list(harness.states)
    kritatest.wait_until(lambda: link.status is not None, 10)
    entry["status_pid_changed"] = link.status is not None
    doc, node = kritatest.make_document(16, 16, "U8", "")
    outcome = harness.run(doc, node, case)
    entry.update(outcome_report(outcome))
    link.close()


def refusal_case(case, out_dir, entry):
    """No daemon: the link knows it on the spot, for a missing socket and for a
    stale one (a file nobody listens on); an upscale with starting the daemon
    turned off fails at once, naming that setting."""
    import socket as sockets

    from tessera_krita.proto import socket_address

    harness = Harness(case)
    link = harness.link
    address = socket_address().name
    if case.get("stale"):
        stale = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        stale.bind(address)
        stale.close()  # the file stays, nothing listens
    link.start()
    entry["state_after_start"] = link.state
    entry["refused"] = link.refused
    entry["models_known"] = link.models_known
    entry["models_source"] = link.models_source
    doc, node = kritatest.make_document(16, 16, "U8", "")
    harness.outcomes.clear()
    harness.upscaler.upscale(doc, node, "layer", "in-place", case.get("values"))
    entry["failed_at_once"] = bool(harness.outcomes)
    kritatest.wait_until(lambda: harness.outcomes, 10)
    entry.update(outcome_report(harness.outcomes[0] if harness.outcomes else None))
    entry["states"] = list(harness.states)
    link.close()


def process_state(pid):
    """The process's state letter from /proc ("Z" for a zombie), or None
    when there is no such process (it was reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def daemon_life_case(case, out_dir, entry):
    """The plug-in starts the daemon; the daemon is stopped, and must not
    linger as a zombie of Krita; started again and killed mid-job, the job
    fails as a crash, and that process is reaped too."""
    from tessera_krita.proto import tessera_client

    harness = Harness(case)
    link = harness.link
    doc, node = kritatest.make_document(24, 16, "U8", "")
    first = harness.run(doc, node, dict(case, output="in-place"))
    entry["first"] = outcome_report(first)
    pid = link._serving.pid if link._serving is not None else None
    entry["first_pid"] = pid
    with tessera_client.Client(link.address, agent="krita test") as client:
        client.shutdown()
    entry["stopped_state"] = process_state(pid)
    entry["reaped_after_stop"] = kritatest.wait_until(lambda: process_state(pid) is None, 15)
    entry["exit_after_stop"] = link.exited.get(pid)

    big, big_node = kritatest.make_document(256, 256, "U8", "")
    killed = []

    def kill_on_progress(fraction, text):
        serving = link._serving
        if fraction > 0 and serving is not None and not killed:
            killed.append(serving.pid)
            os.kill(serving.pid, 9)

    harness.upscaler.progressed.connect(kill_on_progress)
    second = harness.run(big, big_node, dict(case, output="in-place", values=case["big_values"]))
    entry["second"] = outcome_report(second)
    entry["killed_pid"] = killed[0] if killed else None
    entry["reaped_after_kill"] = bool(killed) and kritatest.wait_until(
        lambda: process_state(killed[0]) is None, 15
    )
    entry["exit_after_kill"] = link.exited.get(killed[0]) if killed else None
    entry["untouched"] = big.width() == 256
    link.close()


def main(*args):
    spec = kritatest.spec()
    out_dir = spec["out_dir"]
    Krita.instance().setBatchmode(True)

    def body(report):
        report["krita"] = Krita.instance().version()
        report["cases"] = {}
        for case in spec["cases"]:
            entry = report["cases"][case["name"]] = {}
            kind = case.get("kind", "upscale")
            if kind == "reconnect":
                reconnect_case(case, out_dir, entry)
            elif kind == "refusal":
                refusal_case(case, out_dir, entry)
            elif kind == "daemon-life":
                daemon_life_case(case, out_dir, entry)
            else:
                upscale_case(case, out_dir, entry)

    kritatest.run_reported(body, os.path.join(out_dir, "report.json"))
