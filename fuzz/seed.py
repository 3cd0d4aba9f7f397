"""Seed corpus for the fuzz targets, from the golden vectors and the model fixtures.

Writes each seed to fuzz/corpus/<target>/<sha1 of its bytes>, the way libFuzzer names
corpus files, so running it again adds nothing new. Run by `scripts/fuzz seed`.
"""

import hashlib
import struct
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "shared" / "golden"
FIXTURES = ROOT / "tests" / "fixtures" / "esrgan"
CORPUS = ROOT / "fuzz" / "corpus"

# Image header of a Submit payload: tag u32, request u64, then width, height and the three
# enum tags (u32 each), then the pixel bytes as a u64 length and the bytes.
SUBMIT_IMAGE_AT = 4 + 8


def add(target: str, data: bytes) -> bool:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha1(data).hexdigest()
    if path.exists():
        return False
    path.write_bytes(data)
    return True


def golden_frames() -> list[bytes]:
    return [p.read_bytes() for p in sorted(GOLDEN.glob("*.bin"))]


def image_seed(payload: bytes) -> bytes | None:
    """The `image` target's input for the image of a Submit payload."""
    if struct.unpack_from("<I", payload, 0)[0] != 1:
        return None
    width, height, channels, sample, transfer, length = struct.unpack_from(
        "<IIIIIQ", payload, SUBMIT_IMAGE_AT
    )
    start = SUBMIT_IMAGE_AT + 5 * 4 + 8
    pixels = payload[start : start + length]
    head = bytes([channels, sample, transfer]) + struct.pack("<II", width, height)
    return head + bytes([3]) + pixels


def safetensors_seed(data: bytes) -> bytes:
    """The header of a .safetensors file, with the data replaced by a virtual zero tail."""
    if len(data) < 8:
        return struct.pack("<I", 0) + data
    header_end = min(len(data), 8 + struct.unpack_from("<Q", data, 0)[0])
    return struct.pack("<I", len(data) - header_end) + data[:header_end]


def main() -> int:
    added = 0
    frames = golden_frames()
    for frame in frames:
        added += add("frames", frame)
        added += add("message", frame[4:])
        seed = image_seed(frame[4:])
        if seed is not None:
            added += add("image", seed)
    added += add("frames", b"".join(frames))
    for path in sorted(FIXTURES.glob("*.safetensors")):
        added += add("safetensors_header", safetensors_seed(path.read_bytes()))
    for path in sorted(FIXTURES.glob("*.pth")):
        data = path.read_bytes()
        added += add("torch_zip", data)
        if not zipfile.is_zipfile(path):
            added += add("pickle", data)  # the legacy format is a bare pickle stream
            continue
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    try:
                        added += add("pickle", archive.read(name))
                    except (zipfile.BadZipFile, EOFError):
                        pass  # the truncated fixture: its bytes are seeded whole above
    print(f"{added} new seed(s) in {CORPUS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
