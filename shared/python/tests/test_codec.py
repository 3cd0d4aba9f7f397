"""The codec's strictness and framing: every malformed input is a
ProtocolError (never an IndexError, a struct.error or a huge allocation),
and what is encoded is what Rust would encode."""

import io
import random
import socket
import struct
import threading
import tracemalloc
from typing import Optional

import pytest

from tessera_client import (
    DEFAULT_MAX_FRAME_BYTES,
    Accepted,
    Channels,
    ConnectionClosed,
    Done,
    Error,
    ErrorInfo,
    ErrorKind,
    Failed,
    GetStatus,
    Handshake,
    Image,
    JobParams,
    ListModels,
    ModelEntry,
    ModelKind,
    Models,
    Progress,
    ProtocolError,
    SampleFormat,
    Status,
    Submit,
    TesseraError,
    Transfer,
    decode,
    encode,
    encode_frame,
    error_kind_name,
    read_frame,
    read_payload,
    write_frame,
)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def string(raw: bytes) -> bytes:
    return u64(len(raw)) + raw


def image_header(
    channels: int = 3, sample: int = 0, transfer: int = 0, width: int = 1, height: int = 1
) -> bytes:
    return u32(width) + u32(height) + u32(channels) + u32(sample) + u32(transfer)


def params_bytes(params: Optional[JobParams] = None) -> bytes:
    """The encoding of ``params`` (default: Clarity's at scale 2)."""
    image = Image(1, 1, Channels.RGB, SampleFormat.U8, Transfer.SRGB, b"abc")
    whole = encode(Submit(1, image, params or JobParams()))
    return whole[4 + 8 + 20 + 8 + 3 :]


class CountingStream(io.RawIOBase):
    """A readable stream that records how many bytes were asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)
        self.requested = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        self.requested += len(buf)
        return self.data.readinto(buf)


# --- Framing ------------------------------------------------------------------


def test_a_frame_is_the_le_length_then_the_payload():
    frame = encode_frame(GetStatus())
    assert frame == b"\x04\x00\x00\x00" + b"\x08\x00\x00\x00"
    out = io.BytesIO()
    write_frame(out, GetStatus())
    assert out.getvalue() == frame


def test_a_clean_close_is_told_apart_from_a_truncated_frame():
    with pytest.raises(ConnectionClosed):
        read_frame(io.BytesIO(b""))
    with pytest.raises(ProtocolError, match="inside a frame"):
        read_frame(io.BytesIO(b"\x05\x00"))
    frame = encode_frame(Handshake(1, "krita"))
    for cut in range(1, len(frame)):
        with pytest.raises(ProtocolError, match="inside a frame"):
            read_frame(io.BytesIO(frame[:cut]))


def test_an_oversized_length_prefix_is_refused_before_reading_on():
    stream = CountingStream(u32(0xFFFFFFFF) + b"\x00" * 100)
    with pytest.raises(ProtocolError) as caught:
        read_frame(stream, max_bytes=1024)
    assert caught.value.kind == ErrorKind.FRAME_TOO_LARGE
    assert stream.requested == 4


def test_the_limit_is_inclusive():
    payload = encode(Handshake(1, "x" * 20))
    frame = u32(len(payload)) + payload
    assert read_frame(io.BytesIO(frame), max_bytes=len(payload)) == Handshake(1, "x" * 20)
    with pytest.raises(ProtocolError):
        read_frame(io.BytesIO(frame), max_bytes=len(payload) - 1)


def test_a_lying_length_prefix_allocates_only_what_arrives():
    stream = io.BytesIO(u32(DEFAULT_MAX_FRAME_BYTES) + b"\x00" * 1000)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="inside a frame"):
            read_payload(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_a_large_frame_crosses_a_socket_in_chunks():
    data = bytes(range(256)) * (40 * 1024 * 4)  # 40 MiB, more than one read chunk
    message = Done(9, Image(4096, 2560, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, data), [])
    a, b = socket.socketpair()
    try:
        writer = threading.Thread(target=write_frame, args=(a, message))
        writer.start()
        got = read_frame(b)
        writer.join()
    finally:
        a.close()
        b.close()
    assert got == message


# --- Strict decoding ------------------------------------------------------------


def test_trailing_bytes_are_refused():
    with pytest.raises(ProtocolError, match="unexpected bytes"):
        decode(encode(GetStatus()) + b"\x00")


@pytest.mark.parametrize("tag", [15, 16, 999, 0xFFFFFFFF])
def test_an_unknown_message_tag_is_refused(tag):
    with pytest.raises(ProtocolError, match="unknown message tag"):
        decode(u32(tag) + b"\x00" * 64)


@pytest.mark.parametrize(
    "header, what",
    [
        (image_header(channels=5), "Channels"),
        (image_header(sample=4), "SampleFormat"),
        (image_header(transfer=2), "Transfer"),
    ],
)
def test_an_unknown_image_enum_tag_is_refused(header, what):
    payload = u32(1) + u64(1) + header + u64(3) + b"abc" + params_bytes()
    assert decode(u32(1) + u64(1) + image_header() + payload[32:])  # the valid twin decodes
    with pytest.raises(ProtocolError, match="unknown " + what):
        decode(payload)


def test_an_unknown_model_kind_is_refused():
    entry = u32(6) + string(b"n") + string(b"f") + u64(1) + b"\x00"
    with pytest.raises(ProtocolError, match="unknown ModelKind"):
        decode(u32(11) + u64(1) + entry)


def test_an_error_kind_newer_than_this_module_is_kept_as_a_number():
    payload = u32(14) + u32(40) + string(b"a kind from the future")
    message = decode(payload)
    assert message == Error(40, "a kind from the future")
    assert not isinstance(message.kind, ErrorKind)
    assert encode(message) == payload
    assert error_kind_name(message.kind) == "unknown-40"
    assert str(TesseraError(message.kind, message.message)) == "unknown-40: a kind from the future"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",  # never valid
        b"\xc0\x80",  # overlong NUL
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"caf\xc3",  # cut inside a sequence
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    ],
)
def test_invalid_utf8_is_refused(raw):
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode(u32(0) + u32(1) + string(raw))


def test_valid_multibyte_utf8_decodes():
    text = "Zo\u00eb \u2713 \U0001f3a8"
    assert decode(u32(0) + u32(1) + string(text.encode())) == Handshake(1, text)


@pytest.mark.parametrize(
    "payload",
    [
        # Submit whose image data claims 2^40 bytes.
        u32(1) + u64(1) + image_header() + u64(1 << 40) + b"abc",
        # Handshake whose agent claims 2^63 bytes.
        u32(0) + u32(1) + u64(1 << 63) + b"krita",
        # Models that claims 2^60 entries.
        u32(11) + u64(1 << 60) + b"\x00" * 40,
        # Done whose timings claim 2^64 - 1 entries.
        u32(5) + u64(1) + image_header(channels=0) + u64(1) + b"\x00" + u64(2**64 - 1),
    ],
)
def test_a_lying_length_is_refused_without_allocating_it(payload):
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_booleans_and_option_tags_other_than_0_and_1_are_refused():
    with pytest.raises(ProtocolError, match="not a bool"):
        decode(u32(10) + b"\x02")
    submit = u32(1) + u64(1) + image_header() + u64(3) + b"abc" + struct.pack("<f", 2.0)
    rest = params_bytes()[5:]  # after scale and the upscaler's None
    assert decode(submit + b"\x00" + rest).params == JobParams(2.0, None)
    with pytest.raises(ProtocolError, match="Option"):
        decode(submit + b"\x02" + rest)


def test_f32_fields_decode_to_the_shortest_decimal_and_encode_back_bit_for_bit():
    params = JobParams(creativity=0.35, resemblance=0.1 + 0.2, decay=1e-45, sharpen=3.4e38)
    encoded = params_bytes(params)
    image = Image(1, 1, Channels.RGB, SampleFormat.U8, Transfer.SRGB, b"abc")
    back = decode(encode(Submit(1, image, params))).params
    assert back.creativity == 0.35 and back.dynamic == 6.0
    assert back.resemblance == 0.3  # 0.30000000000000004 is the same f32 as 0.3
    assert params_bytes(back) == encoded


def test_every_cut_of_every_golden_payload_is_a_protocol_error(golden_dir):
    for path in sorted(golden_dir.glob("*.bin")):
        payload = path.read_bytes()[4:]
        for cut in range(len(payload)):
            with pytest.raises(ProtocolError):
                decode(payload[:cut])


def test_corrupted_payloads_decode_or_raise_protocol_errors_only(golden_dir):
    rng = random.Random(1234)
    payloads = [p.read_bytes()[4:] for p in sorted(golden_dir.glob("*.bin"))]
    for _ in range(3000):
        payload = bytearray(rng.choice(payloads))
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        try:
            message = decode(bytes(payload))
        except ProtocolError:
            continue
        assert encode(message) == bytes(payload)


# --- Encoding -------------------------------------------------------------------


def test_f32_fields_round_to_the_nearest_single():
    message = Progress(1, 0, 1, "upscale", 1, 1, 1, 1, 0.1 + 1e-12, 2.0 / 3.0)
    back = decode(encode(message))
    # The nearest single, shown as its shortest decimal.
    assert back.fraction == 0.1
    assert struct.pack("<f", back.eta_seconds) == struct.pack("<f", 2.0 / 3.0)
    assert encode(back) == encode(message)


@pytest.mark.parametrize(
    "message, error",
    [
        (Accepted(2**64, 1, 0), ValueError),
        (Accepted(-1, 1, 0), ValueError),
        (Accepted(1, 1, 2**32), ValueError),
        (Accepted(1.0, 1, 0), TypeError),
        (ListModels(1), TypeError),
        (Handshake(1, b"bytes"), TypeError),
        (Handshake(1, "lone \ud800 surrogate"), ValueError),
        (Progress(1, 0, 1, "x", 1, 1, 1, 1, 1e39), ValueError),
        (Submit(1, Image(1, 1, 9, 0, 0, b"a")), ValueError),
        (Submit(1, Image(1, 1, ModelKind.VAE, 0, 0, b"a")), TypeError),
        (Failed(1, "not an ErrorInfo"), TypeError),
        (ErrorInfo(ErrorKind.IO, "not a message"), TypeError),
    ],
)
def test_unencodable_values_raise(message, error):
    with pytest.raises(error):
        encode(message)


def test_image_data_may_be_any_bytes_like_object():
    data = bytes(range(8))
    expected = encode(Submit(1, Image(2, 1, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, data)))
    for form in (bytearray(data), memoryview(data), memoryview(data).cast("H")):
        image = Image(2, 1, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, form)
        assert encode(Submit(1, image)) == expected
        assert len(image.data) == 8


def test_plain_ints_encode_as_enum_tags():
    image = Image(1, 1, 3, 0, 1, b"abcd")
    typed = Image(1, 1, Channels.RGBA, SampleFormat.U8, Transfer.LINEAR, b"abcd")
    assert encode(Submit(1, image)) == encode(Submit(1, typed))


def test_status_option_none_and_some():
    idle = Status("0.1.0", "", "CPU", None, 0.0, 0, 1, "/d")
    busy = Status("0.1.0", "", "CPU", 2**64 - 1, 0.5, 0, 1, "/d")
    assert len(encode(busy)) == len(encode(idle)) + 8
    assert decode(encode(busy)).running == 2**64 - 1


def test_models_entries_round_trip():
    models = Models([ModelEntry(ModelKind.LORA, "n", "loras/n.safetensors", 5, None)])
    assert decode(encode(models)) == models


# --- Images and error kinds -------------------------------------------------------


def test_image_validation_mirrors_the_daemon():
    ok = Image(3, 2, Channels.RGBA, SampleFormat.U16, Transfer.SRGB, bytes(48))
    ok.validate()
    assert ok.pixel_bytes == 8 and ok.expected_len() == 48
    with pytest.raises(TesseraError) as caught:
        Image(3, 2, Channels.RGBA, SampleFormat.U16, Transfer.SRGB, bytes(47)).validate()
    assert caught.value.kind == ErrorKind.INVALID_IMAGE
    assert "needs 48 bytes" in caught.value.message
    with pytest.raises(TesseraError) as caught:
        Image(0, 5, Channels.GRAY, SampleFormat.U8, Transfer.SRGB, b"").validate()
    assert caught.value.kind == ErrorKind.INVALID_IMAGE
    with pytest.raises(TesseraError) as caught:
        Image(4, 4, Channels.GRAY, SampleFormat.U8, Transfer.SRGB, bytes(16)).validate(15)
    assert caught.value.kind == ErrorKind.IMAGE_TOO_LARGE


def test_layout_helpers():
    assert [c.count for c in Channels] == [1, 2, 3, 4, 4]
    assert [c.has_alpha for c in Channels] == [False, True, False, True, True]
    assert [s.bytes for s in SampleFormat] == [1, 2, 2, 4]
    assert [struct.calcsize("<" + s.struct_code) for s in SampleFormat] == [1, 2, 2, 4]
    assert [k.folder for k in ModelKind] == [
        "checkpoints",
        "vae",
        "controlnet",
        "upscalers",
        "loras",
        "embeddings",
    ]


def test_error_kind_names_are_rusts():
    assert str(ErrorKind.VERSION_MISMATCH) == "version-mismatch"
    assert ErrorKind.from_name("too-many-jobs") is ErrorKind.TOO_MANY_JOBS
    assert f"{ErrorKind.IO!s}" == "io"
    with pytest.raises(ValueError):
        ErrorKind.from_name("nope")
    error = TesseraError.from_info(ErrorInfo(ErrorKind.QUEUE_FULL, "try later"))
    assert str(error) == "queue-full: try later"
    assert error.kind_name == "queue-full"
