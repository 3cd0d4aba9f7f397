"""Test images as raw bytes in the protocol's layouts, and a small PNG
encoder/decoder (8 and 16 bits, gray or colour, with or without alpha) for
comparing with the ``tessera upscale`` CLI; Pillow cannot write 16-bit RGBA."""

import struct
import zlib
from typing import List, Tuple

from tessera_client import Channels, SampleFormat


def pattern(width: int, height: int, channels: Channels, sample: SampleFormat) -> bytes:
    """A deterministic image with edges, gradients and varied alpha, so that
    an upscaler's output depends on every pixel's position."""
    count = Channels(channels).count
    values: List[float] = []
    for y in range(height):
        for x in range(width):
            colour = [
                ((x * 37 + y * 11) % 256) / 255.0,
                ((x * 5 + y * 29 + (x // 4) * 40) % 256) / 255.0,
                ((x * y + 3 * x + 60) % 256) / 255.0,
            ]
            gray = ((x * 23 + y * 17) % 256) / 255.0
            alpha = 0.25 + 0.75 * (((x + 2 * y) % 7) / 6.0)
            pixel = {
                Channels.GRAY: [gray],
                Channels.GRAY_ALPHA: [gray, alpha],
                Channels.RGB: colour,
                Channels.RGBA: colour + [alpha],
            }[Channels(channels)]
            assert len(pixel) == count
            values.extend(pixel)
    return pack(values, sample)


def pack(values: List[float], sample: SampleFormat) -> bytes:
    sample = SampleFormat(sample)
    if sample == SampleFormat.U8:
        return bytes(round(v * 255) for v in values)
    if sample == SampleFormat.U16:
        return struct.pack(f"<{len(values)}H", *(round(v * 65535) for v in values))
    return struct.pack(f"<{len(values)}{sample.struct_code}", *values)


def unpack(data: bytes, sample: SampleFormat) -> Tuple[float, ...]:
    sample = SampleFormat(sample)
    count = len(data) // sample.bytes
    return struct.unpack(f"<{count}{sample.struct_code}", data)


def crop(data: bytes, width: int, pixel_bytes: int, x: int, y: int, w: int, h: int) -> bytes:
    """The ``w``×``h`` rectangle at ``x``, ``y`` of a ``width``-pixel-wide image."""
    stride = width * pixel_bytes
    return b"".join(
        data[row * stride + x * pixel_bytes : row * stride + (x + w) * pixel_bytes]
        for row in range(y, y + h)
    )


# --- PNG ----------------------------------------------------------------------

_COLOUR_TYPES = {
    Channels.GRAY: 0,
    Channels.RGB: 2,
    Channels.GRAY_ALPHA: 4,
    Channels.RGBA: 6,
}
_CHANNELS_OF = {v: k for k, v in _COLOUR_TYPES.items()}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def write_png(
    path: str, width: int, height: int, channels: Channels, sample: SampleFormat, data: bytes
) -> None:
    """Writes protocol-layout pixels (U8 or U16, little-endian) as a PNG."""
    sample = SampleFormat(sample)
    depth = {SampleFormat.U8: 8, SampleFormat.U16: 16}[sample]
    if sample == SampleFormat.U16:  # PNG samples are big-endian
        count = len(data) // 2
        data = struct.pack(f">{count}H", *struct.unpack(f"<{count}H", data))
    stride = width * Channels(channels).count * sample.bytes
    raw = b"".join(b"\0" + data[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, depth, _COLOUR_TYPES[channels], 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", header))
        f.write(_chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(_chunk(b"IEND", b""))


def read_png(path: str) -> Tuple[int, int, Channels, SampleFormat, bytes]:
    """Reads a non-interlaced 8- or 16-bit gray/RGB(A) PNG into protocol
    layout (16-bit samples little-endian)."""
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind = blob[pos + 4 : pos + 8]
        body = blob[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, "no IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth in (8, 16) and interlace == 0 and colour in _CHANNELS_OF, header
    channels = _CHANNELS_OF[colour]
    bpp = channels.count * depth // 8
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    out = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            corner = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + predictor) & 0xFF
            else:
                assert kind == 0, f"PNG filter {kind}"
        out += line
        previous = line
    data = bytes(out)
    sample = SampleFormat.U8 if depth == 8 else SampleFormat.U16
    if sample == SampleFormat.U16:
        count = len(data) // 2
        data = struct.pack(f"<{count}H", *struct.unpack(f">{count}H", data))
    return width, height, channels, sample, data
