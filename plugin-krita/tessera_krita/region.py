"""What part of the document goes to the daemon, and where the result lands.

- The region is the selection's bounding box clipped to the canvas, or the
  whole canvas when nothing is selected.
- The result is a new paint layer named after the scale and its size. In a new
  document it fills the canvas; in place, the canvas is first scaled by the
  factor the result actually has (the daemon may round the size, e.g. to a
  multiple of 8), and the layer goes where the region went.

No Qt and no Krita here.
"""

import math
from typing import NamedTuple, Optional, Tuple


class Rect(NamedTuple):
    x: int
    y: int
    width: int
    height: int

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def intersected(self, other: "Rect") -> "Rect":
        left = max(self.x, other.x)
        top = max(self.y, other.y)
        right = min(self.x + self.width, other.x + other.width)
        bottom = min(self.y + self.height, other.y + other.height)
        return Rect(left, top, max(0, right - left), max(0, bottom - top))


class NothingToUpscale(Exception):
    """The region is empty; the message says why, for the user."""


def source_rect(canvas: Tuple[int, int], selection: Optional[Rect]) -> Rect:
    """The region to send: the selection's bounding box within the canvas,
    or the whole canvas."""
    whole = Rect(0, 0, int(canvas[0]), int(canvas[1]))
    if whole.empty:
        raise NothingToUpscale("The document is empty.")
    if selection is None or selection.empty:
        return whole
    region = Rect(*(int(v) for v in selection)).intersected(whole)
    if region.empty:
        raise NothingToUpscale(
            "The selection lies outside the canvas: select part of the image, or "
            "deselect (Ctrl+Shift+A) to upscale the whole layer."
        )
    return region


def format_scale(scale: float) -> str:
    """``2`` → ``"2"``, ``1.5`` → ``"1.5"``, ``1.333…`` → ``"1.33"``."""
    text = f"{float(scale):.2f}".rstrip("0").rstrip(".")
    return text or "0"


def layer_name(scale: float, width: int, height: int, source: str = "") -> str:
    """The new layer's name, e.g. ``Background ×2 (1024×768) [Tessera]``."""
    prefix = (source.strip() + " ") if source.strip() else ""
    return f"{prefix}×{format_scale(scale)} ({width}×{height}) [Tessera]"


class Placement(NamedTuple):
    """Where an in-place result goes: the canvas size to scale the document
    to (unchanged when equal to the current one) and the layer's offset."""

    canvas_width: int
    canvas_height: int
    x: int
    y: int


def in_place(canvas: Tuple[int, int], region: Rect, result: Tuple[int, int]) -> Placement:
    """The placement of a ``result``-sized upscale of ``region`` on a canvas
    scaled by the same factor along each axis."""
    fx = result[0] / region.width
    fy = result[1] / region.height
    return Placement(
        max(1, int(round(canvas[0] * fx))),
        max(1, int(round(canvas[1] * fy))),
        int(round(region.x * fx)),
        int(round(region.y * fy)),
    )


def preview_region(canvas: Tuple[int, int], selection: Rect, scale: float) -> Rect:
    """The rectangle of the whole layer's result that covers ``selection``
    (already clipped to the canvas), at least one pixel a side."""
    out_w = max(1, int(round(canvas[0] * scale)))
    out_h = max(1, int(round(canvas[1] * scale)))
    left = min(int(math.floor(selection.x * scale)), out_w - 1)
    top = min(int(math.floor(selection.y * scale)), out_h - 1)
    right = min(out_w, int(math.ceil((selection.x + selection.width) * scale)))
    bottom = min(out_h, int(math.ceil((selection.y + selection.height) * scale)))
    return Rect(left, top, max(1, right - left), max(1, bottom - top))


def preview_name(scale: float, width: int, height: int) -> str:
    """The preview layer's name, e.g. ``Preview ×2 (384×320) [Tessera]``."""
    return f"Preview ×{format_scale(scale)} ({width}×{height}) [Tessera]"
