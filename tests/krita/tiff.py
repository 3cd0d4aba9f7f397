"""Just enough TIFF for the tests to hand RGBA pixels of any depth to the
``tessera upscale`` CLI and read its answer: uncompressed, chunky, 8/16-bit
unsigned or 32-bit float samples (Pillow writes neither 16-bit nor float
RGBA)."""

import struct
from typing import Dict, List, Tuple

# Tags.
WIDTH, HEIGHT, BITS, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP, STRIP_COUNTS = 273, 277, 278, 279
PLANAR, EXTRA_SAMPLES, SAMPLE_FORMAT = 284, 338, 339

_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}


def write_rgba(path: str, width: int, height: int, bits: int, is_float: bool, data: bytes) -> None:
    """RGBA, straight alpha, little-endian samples in ``data``."""
    assert len(data) == width * height * 4 * bits // 8
    entries: List[Tuple[int, int, List[int]]] = [
        (WIDTH, 4, [width]),
        (HEIGHT, 4, [height]),
        (BITS, 3, [bits] * 4),
        (COMPRESSION, 3, [1]),
        (PHOTOMETRIC, 3, [2]),
        (STRIP_OFFSETS, 4, [0]),  # patched below
        (SAMPLES, 3, [4]),
        (ROWS_PER_STRIP, 4, [height]),
        (STRIP_COUNTS, 4, [len(data)]),
        (PLANAR, 3, [1]),
        (EXTRA_SAMPLES, 3, [2]),  # unassociated alpha
        (SAMPLE_FORMAT, 3, [3 if is_float else 1] * 4),
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    extra = bytearray()
    extra_base = ifd_offset + ifd_size
    data_offset = extra_base + 64  # room for the out-of-line arrays
    ifd = bytearray(struct.pack("<H", len(entries)))
    for tag, kind, values in entries:
        if tag == STRIP_OFFSETS:
            values = [data_offset]
        code = _TYPES[kind]
        raw = struct.pack("<" + code * len(values), *values)
        if len(raw) <= 4:
            ifd += struct.pack("<HHI", tag, kind, len(values)) + raw.ljust(4, b"\0")
        else:
            ifd += struct.pack("<HHII", tag, kind, len(values), extra_base + len(extra))
            extra += raw
    ifd += struct.pack("<I", 0)
    assert len(extra) <= 64
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<I", ifd_offset))
        f.write(ifd)
        f.write(bytes(extra).ljust(64, b"\0"))
        f.write(data)


class Tiff:
    def __init__(
        self, width: int, height: int, bits: int, is_float: bool, samples: int, data: bytes
    ):
        self.width = width
        self.height = height
        self.bits = bits
        self.is_float = is_float
        self.samples = samples
        #: Samples little-endian, chunky.
        self.data = data


def read(path: str) -> Tiff:
    """The first image of an uncompressed chunky TIFF."""
    raw = open(path, "rb").read()
    order = {b"II": "<", b"MM": ">"}[raw[:2]]
    (offset,) = struct.unpack(order + "I", raw[4:8])
    (count,) = struct.unpack(order + "H", raw[offset : offset + 2])
    tags: Dict[int, List[int]] = {}
    for i in range(count):
        at = offset + 2 + 12 * i
        tag, kind, n = struct.unpack(order + "HHI", raw[at : at + 8])
        code = _TYPES.get(kind)
        if code is None:
            continue  # rationals, text, …: nothing this reader needs
        size = struct.calcsize(code) * n
        where = at + 8 if size <= 4 else struct.unpack(order + "I", raw[at + 8 : at + 12])[0]
        tags[tag] = list(struct.unpack(order + code * n, raw[where : where + size]))
    if tags.get(COMPRESSION, [1])[0] != 1:
        raise ValueError(f"{path}: compressed TIFF (compression {tags[COMPRESSION][0]})")
    if tags.get(PLANAR, [1])[0] != 1:
        raise ValueError(f"{path}: planar TIFF")
    bits = tags[BITS][0]
    is_float = tags.get(SAMPLE_FORMAT, [1])[0] == 3
    data = b"".join(raw[o : o + n] for o, n in zip(tags[STRIP_OFFSETS], tags[STRIP_COUNTS]))
    samples = tags.get(SAMPLES, [1])[0]
    width, height = tags[WIDTH][0], tags[HEIGHT][0]
    data = data[: width * height * samples * bits // 8]
    if order == ">" and bits > 8:
        code = "f" if is_float else {16: "H", 32: "I"}[bits]
        n = len(data) * 8 // bits
        data = struct.pack("<" + code * n, *struct.unpack(">" + code * n, data))
    return Tiff(width, height, bits, is_float, samples, data)
