"""One call of the Tessera procedure in GIMP, as the batch script
``gimp_scripts/upscale_cases.py`` runs it, and what it must send and return."""

import json
import os
import signal
import time
from pathlib import Path

from gimp_pixels import crop, pattern

from tessera_client import Channels, SampleFormat, Transfer

# GIMP precision → what the plug-in must send: babl format (RGBA version),
# sample format and transfer.
PRECISIONS = {
    "U8_NON_LINEAR": ("R'G'B'A u8", SampleFormat.U8, Transfer.SRGB),
    "U8_LINEAR": ("RGBA u8", SampleFormat.U8, Transfer.LINEAR),
    "U8_PERCEPTUAL": ("R~G~B~A u8", SampleFormat.U8, Transfer.SRGB),
    "U16_NON_LINEAR": ("R'G'B'A u16", SampleFormat.U16, Transfer.SRGB),
    "U16_LINEAR": ("RGBA u16", SampleFormat.U16, Transfer.LINEAR),
    "HALF_LINEAR": ("RGBA half", SampleFormat.F16, Transfer.LINEAR),
    "HALF_NON_LINEAR": ("R'G'B'A half", SampleFormat.F16, Transfer.SRGB),
    "FLOAT_LINEAR": ("RGBA float", SampleFormat.F32, Transfer.LINEAR),
    "FLOAT_NON_LINEAR": ("R'G'B'A float", SampleFormat.F32, Transfer.SRGB),
    # No 32-bit integer or 64-bit float samples in the protocol: sent as f32.
    "U32_NON_LINEAR": ("R'G'B'A float", SampleFormat.F32, Transfer.SRGB),
    "DOUBLE_LINEAR": ("RGBA float", SampleFormat.F32, Transfer.LINEAR),
}
# Precisions whose storage is exactly what the plug-in sends.
EXACT = {name for name in PRECISIONS if not name.startswith(("U32", "DOUBLE"))}

IMAGE_SIZE = (64, 48)
LAYER_SIZE = (40, 30)
LAYER_OFFSET = (3, 4)
# Image coordinates; in the layer: (7, 8, 16, 10).
SELECTION = (10, 12, 16, 10)


def _without_alpha(babl: str) -> str:
    return babl.replace("A ", " ")


def _gray(babl: str) -> str:
    model, kind = babl.split(" ")
    mark = model[1] if model[1] in "'~" else ""
    return f"Y{mark}{'A' if model.endswith('A') else ''} {kind}"


class Case:
    """One call of the procedure, and what it must do."""

    def __init__(
        self,
        gimp,
        folder: Path,
        name: str,
        precision: str = "U8_NON_LINEAR",
        base: str = "RGB",
        alpha: bool = True,
        selection=SELECTION,
        arguments=None,
        in_group: bool = False,
        layer_offset=LAYER_OFFSET,
        layer_size=LAYER_SIZE,
        image_size=IMAGE_SIZE,
    ) -> None:
        babl, sample, transfer = PRECISIONS[precision]
        if base == "GRAY":
            babl = _gray(babl)
        if not alpha:
            babl = _without_alpha(babl)
        self.name = name
        self.precision = precision
        self.babl = babl
        self.sample = sample
        self.transfer = transfer
        channels = {
            ("RGB", True): Channels.RGBA,
            ("RGB", False): Channels.RGB,
            ("GRAY", True): Channels.GRAY_ALPHA,
            ("GRAY", False): Channels.GRAY,
        }[(base, alpha)]
        self.channels = channels
        self.layer_size = tuple(layer_size)
        self.pixels = pattern(*layer_size, channels, sample)
        self.pixel_bytes = channels.count * sample.bytes
        self.arguments = {"scale": 2.0, **(arguments or {})}
        self.selection = selection
        self.layer_offset = layer_offset
        pixels_path = folder / f"{name}.in"
        pixels_path.write_bytes(self.pixels)
        self.out = folder / name
        self.spec = {
            "name": name,
            "precision": precision,
            "base": base,
            "image_size": image_size,
            "layer": {
                "size": layer_size,
                "offset": layer_offset,
                "alpha": alpha,
                "pixels": gimp.inside(pixels_path),
                "babl": babl,
                "in_group": in_group,
            },
            "selection": selection,
            "arguments": self.arguments,
            "read_babl": babl,
            "out": gimp.inside(self.out),
        }

    def region(self):
        """The selection clipped to the layer, in layer coordinates."""
        if self.selection is None:
            return (0, 0, *self.layer_size)
        sx, sy, sw, sh = self.selection
        ox, oy = self.layer_offset
        x0, y0 = max(sx - ox, 0), max(sy - oy, 0)
        x1 = min(sx - ox + sw, self.layer_size[0])
        y1 = min(sy - oy + sh, self.layer_size[1])
        return (x0, y0, x1 - x0, y1 - y0)

    def sent(self) -> bytes:
        """The pixels the plug-in must send (when storage is exact)."""
        return crop(self.pixels, self.layer_size[0], self.pixel_bytes, *self.region())

    def outcome(self):
        return json.loads(self.out.with_suffix(".json").read_text())

    def result_pixels(self) -> bytes:
        return self.out.with_suffix(".raw").read_bytes()


def kill_plugin_at_first_progress(running, timeout: float = 90.0, before_kill=None) -> int:
    """Waits until the plug-in running in ``running`` (a ``RunningGimp``)
    reports progress, calls ``before_kill()``, then kills the plug-in's
    process as GIMP's Cancel button does (SIGKILL); returns its process id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = [e for e in running.events() if e["event"] == "progress"]
        if progress:
            pid = progress[0]["pid"]
            if before_kill is not None:
                before_kill()
            os.kill(pid, signal.SIGKILL)
            return pid
        if running.process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"the plug-in reported no progress: {running.events()}")
