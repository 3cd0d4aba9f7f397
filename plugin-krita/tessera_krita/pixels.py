"""How Krita's pixels travel: which wire layout each colour space maps to.

Krita hands out a layer's pixels row by row with no padding, in the layer's
own depth. For RGBA documents the byte order depends on the depth:

- integer (``U8``, ``U16``): blue, green, red, alpha (Qt's ``ARGB32`` on a
  little-endian machine), sent as :attr:`Channels.BGRA` — the daemon
  converts, and answers in the same order;
- float (``F16``, ``F32``): red, green, blue, alpha, sent as
  :attr:`Channels.RGBA`.

Samples are little-endian on every machine Krita runs on. The colour
profile decides the transfer: the ``…-g10`` (gamma 1.0) and ``…linear``
profiles hold linear light, which Krita picks by default for 16-bit and float
documents; everything else is taken as sRGB-encoded. The primaries are passed
through untouched.

No Qt and no Krita here: this is plain logic, tested on its own.
"""

from typing import NamedTuple, Optional, Tuple

from .proto import Channels, SampleFormat, Transfer

#: The colour model the daemon takes, as Krita names it.
SUPPORTED_MODEL = "RGBA"

#: Krita's colour depth id → the wire sample format.
SAMPLE_FORMATS = {
    "U8": SampleFormat.U8,
    "U16": SampleFormat.U16,
    "F16": SampleFormat.F16,
    "F32": SampleFormat.F32,
}

#: Readable names of Krita's colour models, for messages.
MODEL_NAMES = {
    "RGBA": "RGB",
    "GRAYA": "grayscale",
    "CMYKA": "CMYK",
    "LABA": "L*a*b*",
    "XYZA": "XYZ",
    "YCbCrA": "YCbCr",
}

DEPTH_NAMES = {
    "U8": "8-bit integer",
    "U16": "16-bit integer",
    "F16": "16-bit float",
    "F32": "32-bit float",
}


class PixelLayout(NamedTuple):
    """The wire description of a Krita colour space."""

    channels: Channels
    sample: SampleFormat
    transfer: Transfer

    @property
    def bytes_per_pixel(self) -> int:
        return Channels(self.channels).count * SampleFormat(self.sample).bytes


class UnsupportedColorSpace(Exception):
    """A colour space the daemon cannot take. ``conversion`` is the
    (model, depth) to offer converting to, or ``None`` if none helps."""

    def __init__(self, message: str, conversion: Optional[Tuple[str, str]]) -> None:
        super().__init__(message)
        self.message = message
        self.conversion = conversion


def is_linear_profile(profile: str) -> bool:
    """Whether an ICC profile's name says it holds linear light: Krita's
    ``sRGB-elle-V2-g10.icc``, ``Rec2020-elle-V4-g10.icc``, ``scRGB (linear)``,
    ``ACEScg-elle-V4-g10.icc`` and the like."""
    name = profile.lower()
    return "g10" in name or "linear" in name


def layout_for(model: str, depth: str, profile: str = "") -> PixelLayout:
    """The wire layout for pixels of a Krita colour space, or
    :class:`UnsupportedColorSpace` with a message that offers a conversion."""
    sample = SAMPLE_FORMATS.get(depth)
    if model != SUPPORTED_MODEL or sample is None:
        target_depth = depth if sample is not None else "U16"
        here = f"{DEPTH_NAMES.get(depth, depth)} {MODEL_NAMES.get(model, model)}".strip()
        there = f"{DEPTH_NAMES[target_depth]} RGB"
        raise UnsupportedColorSpace(
            f"Tessera upscales RGB images with alpha, and this one is {here}. "
            f"Convert it to {there} (Image ▸ Convert Image Color Space…) and try again; "
            "the conversion can be undone.",
            (SUPPORTED_MODEL, target_depth),
        )
    integer = sample in (SampleFormat.U8, SampleFormat.U16)
    channels = Channels.BGRA if integer else Channels.RGBA
    transfer = Transfer.LINEAR if is_linear_profile(profile) else Transfer.SRGB
    return PixelLayout(channels, sample, transfer)


def swap_red_blue(data: bytes, sample_bytes: int) -> bytes:
    """BGRA ↔ RGBA for 4-channel pixels of ``sample_bytes`` bytes per sample:
    swaps the first and third sample of every pixel."""
    if len(data) % (4 * sample_bytes):
        raise ValueError(f"{len(data)} bytes are not whole pixels of 4 × {sample_bytes} bytes")
    stride = 4 * sample_bytes
    out = bytearray(data)
    for k in range(sample_bytes):
        out[k::stride] = data[2 * sample_bytes + k :: stride]
        out[2 * sample_bytes + k :: stride] = data[k::stride]
    return bytes(out)
