"""Every golden vector decodes to the message written out below, and that
message encodes back to the same bytes.

``EXPECTED`` is an independent, hand-written mirror of
``shared/tests/support/golden_cases.rs`` (not a round trip of the files), so
that a Rust change that alters the format without a version bump, or a
Python codec bug, fails here.
"""

import io
import re
import struct
from pathlib import Path

import pytest

from tessera_client import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Channels,
    DeviceMemory,
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
    LoraWeight,
    ModelEntry,
    ModelKind,
    Models,
    Preset,
    Progress,
    Region,
    Rejected,
    SampleFormat,
    Sampler,
    Shutdown,
    ShuttingDown,
    StageTiming,
    Status,
    Submit,
    Transfer,
    WarmUp,
    decode,
    encode,
    encode_frame,
    read_frame,
)

RGBA8 = Image(
    2, 1, Channels.RGBA, SampleFormat.U8, Transfer.SRGB, bytes([255, 0, 0, 255, 0, 128, 255, 64])
)


def u16s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}H", *values)


def f16s(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}e", *values)


def f32s(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


LAYOUTS = [
    ("gray-u8-srgb", Image(2, 1, Channels.GRAY, SampleFormat.U8, Transfer.SRGB, bytes([0, 255]))),
    (
        "gray-f32-linear",
        Image(2, 1, Channels.GRAY, SampleFormat.F32, Transfer.LINEAR, f32s(0.0, 1.0)),
    ),
    (
        "grayalpha-u8-srgb",
        Image(2, 1, Channels.GRAY_ALPHA, SampleFormat.U8, Transfer.SRGB, bytes([10, 255, 200, 0])),
    ),
    (
        "grayalpha-u16-linear",
        Image(
            2, 1, Channels.GRAY_ALPHA, SampleFormat.U16, Transfer.LINEAR, u16s(0, 65535, 32768, 1)
        ),
    ),
    (
        "rgb-u8-srgb",
        Image(2, 1, Channels.RGB, SampleFormat.U8, Transfer.SRGB, bytes([1, 2, 3, 4, 5, 6])),
    ),
    (
        "rgb-f16-linear",
        Image(
            1,
            2,
            Channels.RGB,
            SampleFormat.F16,
            Transfer.LINEAR,
            f16s(0.0, 0.5, 1.0, -0.25, 2.0, 65504.0),
        ),
    ),
    (
        "rgba-u16-srgb",
        Image(
            2,
            1,
            Channels.RGBA,
            SampleFormat.U16,
            Transfer.SRGB,
            u16s(65535, 0, 0, 65535, 0x0102, 0x0304, 0x0506, 0x8000),
        ),
    ),
    (
        "rgba-f32-linear",
        Image(
            2,
            1,
            Channels.RGBA,
            SampleFormat.F32,
            Transfer.LINEAR,
            f32s(0.25, 0.5, 0.75, 1.0, 1.5, -0.0, 0.0, 0.5),
        ),
    ),
    (
        "bgra-u8-srgb",
        Image(
            2,
            1,
            Channels.BGRA,
            SampleFormat.U8,
            Transfer.SRGB,
            bytes([0, 0, 255, 255, 255, 128, 0, 64]),
        ),
    ),
    (
        "bgra-u16-srgb",
        Image(
            2,
            1,
            Channels.BGRA,
            SampleFormat.U16,
            Transfer.SRGB,
            u16s(0, 0, 65535, 65535, 65535, 32768, 0, 16384),
        ),
    ),
]

ERRORS = [
    (ErrorKind.PROTOCOL, "malformed message: unexpected end of the frame"),
    (
        ErrorKind.VERSION_MISMATCH,
        "the daemon speaks protocol version 1 and this client version 2; update Tessera",
    ),
    (
        ErrorKind.FRAME_TOO_LARGE,
        "a frame of 2147483648 bytes exceeds the maximum of 1073741824 bytes",
    ),
    (ErrorKind.INVALID_IMAGE, "a 3×2 Rgba U16 image needs 48 bytes but 47 were sent"),
    (ErrorKind.INVALID_PARAMS, "the scale must be between 1 and 16, not 32"),
    (ErrorKind.MODEL_NOT_FOUND, "no upscaler named \u201c4x-Foo\u201d in models/upscalers/"),
    (ErrorKind.MODEL_INVALID, "models/upscalers/4x-Foo.pth is truncated (812 of 67 040 bytes)"),
    (ErrorKind.RUNTIME, "ONNX Runtime 1.16 is too old; Tessera needs 1.22 or newer"),
    (ErrorKind.CANCELLED, "the job was cancelled"),
    (ErrorKind.UNKNOWN_JOB, "there is no job 99 to cancel"),
    (ErrorKind.QUEUE_FULL, "the queue is full (16 jobs); try again later"),
    (ErrorKind.TOO_MANY_JOBS, "this client already has 4 jobs queued"),
    (
        ErrorKind.IMAGE_TOO_LARGE,
        "the result would have 1 073 741 824 pixels, more than the maximum of 268 435 456",
    ),
    (ErrorKind.SHUTTING_DOWN, "the daemon is shutting down"),
    (ErrorKind.IO, "cannot write cache/unet.onnx: no space left on device"),
    (ErrorKind.INTERNAL, "internal error: the tile plan is empty; see the log"),
    (
        ErrorKind.TOO_MANY_CONNECTIONS,
        "the daemon already serves 32 connections (limits.max_connections); close another client",
    ),
]


def _expected():
    cases = {
        "00-handshake": Handshake(PROTOCOL_VERSION, "tessera 0.1.0"),
        "00-handshake-unicode": Handshake(
            PROTOCOL_VERSION, "krita-plugin 0.1.0 (Zo\u00eb\u2019s \u2713 \U0001f3a8)"
        ),
        "01-submit": Submit(1, RGBA8, JobParams()),
        "01-submit-upscaler": Submit(2, RGBA8, JobParams.upscaler_only(2.5, "4x-UltraSharp")),
        "01-submit-refiners": Submit(3, RGBA8, JobParams.refiners()),
        "01-submit-clarity-models": Submit(
            4,
            RGBA8,
            JobParams(
                scale=16.0,
                upscaler="4x-UltraSharp",
                creativity=1.0,
                resemblance=3.0,
                dynamic=50.0,
                tile_width=16,
                tile_height=256,
                steps=100,
                seed=2**64 - 1,
                prompt="a fa\u00e7ade, (ivy:1.3) <lora:d\u00e9tail:0.25>",
                negative_prompt="",
                sampler=Sampler.DPMPP_2M_KARRAS,
                decay=1.0,
                multistep_factor=2.0,
                checkpoint="juggernaut_reborn",
                vae="vae-ft-mse-840000-ema-pruned",
                controlnet="control_v11f1e_sd15_tile",
                loras=[LoraWeight("more_details", 0.5), LoraWeight("SDXLrender_v2.0", -1.0)],
                sharpen=10.0,
                preview=Region(0, 1, 2**32 - 1, 512),
            ),
        ),
        "01-submit-ddim": Submit(5, RGBA8, JobParams.refiners(sampler=Sampler.DDIM, decay=1.0)),
    }
    for index, (layout, image) in enumerate(LAYOUTS):
        cases["01-submit-" + layout] = Submit(
            100 + index, image, JobParams.upscaler_only(2.0, None)
        )
    cases.update(
        {
            "02-accepted": Accepted(request=1, job=42, position=0),
            "02-accepted-extremes": Accepted(
                request=2**64 - 1, job=0x0123456789ABCDEF, position=0xFEDCBA98
            ),
            "03-rejected": Rejected(
                2, ErrorInfo(ErrorKind.QUEUE_FULL, "the queue is full (16 jobs); try again later")
            ),
            "04-progress": Progress(
                job=42,
                stage=1,
                stages=2,
                phase="denoise",
                step=3,
                steps=10,
                tile=2,
                tiles=4,
                fraction=0.625,
                eta_seconds=12.5,
                warnings=[
                    "UNet+ControlNet juggernaut_reborn.safetensors ran out of GPU memory;"
                    " it runs with 1 tile per call"
                ],
            ),
            "04-progress-no-eta": Progress(
                job=42,
                stage=0,
                stages=1,
                phase="load",
                step=0,
                steps=1,
                tile=0,
                tiles=1,
                fraction=0.0,
                eta_seconds=None,
            ),
            "05-done": Done(
                42,
                Image(
                    2,
                    1,
                    Channels.RGBA,
                    SampleFormat.U8,
                    Transfer.SRGB,
                    bytes([250, 3, 4, 255, 2, 126, 252, 64]),
                ),
                [
                    StageTiming("upscale", 0.5),
                    StageTiming("denoise", 12.25),
                    StageTiming("decode", 0.1),
                ],
                [
                    "VAE decoder could not be prepared on CUDA (CUDNN_STATUS_NOT_INITIALIZED);"
                    " it runs on the CPU",
                    "ESRGAN RealESRGAN_x4plus.pth ran out of GPU memory;"
                    " it runs with 96-pixel tiles",
                ],
            ),
            "05-done-no-timings": Done(
                7, Image(1, 1, Channels.GRAY, SampleFormat.U8, Transfer.SRGB, b"\x80"), []
            ),
            "06-failed": Failed(42, ErrorInfo(ErrorKind.CANCELLED, "the job was cancelled")),
            "07-cancel": Cancel(42),
            "08-get-status": GetStatus(),
            "09-status": Status(
                daemon_version="0.1.0",
                runtime="1.22.0 (/home/ana/.local/share/tessera/runtime/libonnxruntime.so.1.22.0)",
                device="CUDA (NVIDIA H100 80GB HBM3)",
                running=42,
                running_fraction=0.5,
                queued=2,
                clients=3,
                data_dir="/home/ana/.local/share/tessera",
                sessions=[
                    "UNet+ControlNet juggernaut_reborn.safetensors",
                    "VAE decoder vae-ft-mse-840000-ema-pruned.safetensors",
                ],
                resident_bytes=5_368_709_120,
                warnings=["DirectML was dropped: its probe gave wrong numbers (error 0.5)"],
                device_memory=DeviceMemory("NVIDIA H100 80GB HBM3", 85_520_809_984, 79_456_894_976),
                session_budget_bytes=78_382_960_640,
                session_bytes=3_288_334_336,
                warm_up=WarmUp("", 6, 6, 27.5, ""),
                running_eta_seconds=42.5,
            ),
            "09-status-idle": Status(
                daemon_version="0.1.0",
                runtime="1.22.0 (C:\\Users\\J\u00fcrgen\\AppData\\Roaming\\Tessera\\data"
                "\\runtime\\onnxruntime.dll)",
                device="CPU",
                running=None,
                running_fraction=0.0,
                queued=0,
                clients=1,
                data_dir="C:\\Users\\J\u00fcrgen\\AppData\\Roaming\\Tessera\\data",
                sessions=[],
                resident_bytes=0,
                warm_up=None,
            ),
            "09-status-warming": Status(
                daemon_version="0.1.0",
                runtime="1.32.0 (/opt/onnxruntime/libonnxruntime.so.1.32.0)",
                device="CPU",
                running=None,
                running_fraction=0.0,
                queued=0,
                clients=1,
                data_dir="/home/ana/.local/share/tessera",
                sessions=["ESRGAN RealESRGAN_x4plus.pth"],
                resident_bytes=734_003_200,
                warm_up=WarmUp("UNet juggernaut_reborn.safetensors", 1, 6, 3.25, ""),
            ),
            "10-list-models": ListModels(False),
            "10-list-models-hashes": ListModels(True),
            "11-models": Models(
                [
                    ModelEntry(
                        ModelKind.CHECKPOINT,
                        "juggernaut_reborn",
                        "checkpoints/juggernaut_reborn.safetensors",
                        2_132_625_894,
                        "a" * 64,
                    ),
                    ModelEntry(
                        ModelKind.VAE,
                        "vae-ft-mse-840000",
                        "vae/vae-ft-mse-840000.safetensors",
                        334_643_268,
                        None,
                    ),
                    ModelEntry(
                        ModelKind.CONTROL_NET,
                        "control_v11f1e_sd15_tile",
                        "controlnet/control_v11f1e_sd15_tile",
                        1_445_157_120,
                        "0" * 64,
                    ),
                    ModelEntry(
                        ModelKind.UPSCALER,
                        "4x-UltraSharp",
                        "upscalers/4x-UltraSharp.pth",
                        66_961_958,
                        None,
                    ),
                    ModelEntry(
                        ModelKind.LORA,
                        "d\u00e9tails_\u00f1",
                        "loras/d\u00e9tails_\u00f1.safetensors",
                        0,
                        "f" * 64,
                    ),
                    ModelEntry(
                        ModelKind.EMBEDDING,
                        "JuggernautNegative-neg",
                        "embeddings/JuggernautNegative-neg.pt",
                        2**64 - 1,
                        None,
                    ),
                ]
            ),
            "11-models-empty": Models([]),
            "12-shutdown": Shutdown(),
            "13-shutting-down": ShuttingDown(),
        }
    )
    for kind, sentence in ERRORS:
        cases[f"14-error-{int(kind):02d}-{kind.name.lower().replace('_', '-')}"] = Error(
            kind, sentence
        )
    return cases


EXPECTED = _expected()


def test_the_mirror_and_the_folder_list_the_same_files(golden_dir):
    files = sorted(p.stem for p in golden_dir.glob("*.bin"))
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_file_decodes_and_re_encodes(name, read_golden):
    frame = read_golden(name)
    expected = EXPECTED[name]
    (length,) = struct.unpack("<I", frame[:4])
    assert length == len(frame) - 4

    stream = io.BytesIO(frame)
    assert read_frame(stream) == expected
    assert stream.read() == b""
    assert decode(frame[4:]) == expected
    assert type(decode(frame[4:])) is type(expected)

    assert encode(expected) == frame[4:]
    assert encode_frame(expected) == frame


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_file_names_carry_the_message_tag(name):
    tag, variant = re.match(r"(\d\d)-([a-z-]+?)(?:-|$)", name).groups()
    message = EXPECTED[name]
    assert type(message).TAG == int(tag)
    assert MESSAGE_TYPES[int(tag)] is type(message)
    kebab = re.sub(r"(?<!^)([A-Z])", r"-\1", type(message).__name__).lower()
    assert name[3:].startswith(kebab)
    del variant


def test_every_message_type_error_kind_layout_and_model_kind_is_covered():
    messages = list(EXPECTED.values())
    assert {type(m) for m in messages} == set(MESSAGE_TYPES)
    assert {m.kind for m in messages if isinstance(m, Error)} == set(ErrorKind)
    images = [m.image for m in messages if isinstance(m, (Submit, Done))]
    assert {i.channels for i in images} == set(Channels)
    assert {i.sample for i in images} == set(SampleFormat)
    assert {i.transfer for i in images} == set(Transfer)
    kinds = {e.kind for m in messages if isinstance(m, Models) for e in m.models}
    assert kinds == set(ModelKind)
    params = [m.params for m in messages if isinstance(m, Submit)]
    assert {p.preset for p in params} == set(Preset)
    assert {p.sampler for p in params} == set(Sampler)
    for image in images:
        image.validate()


def test_the_handshake_file_carries_this_modules_protocol_version(read_golden):
    hello = decode(read_golden("00-handshake")[4:])
    assert hello.protocol_version == PROTOCOL_VERSION


def test_the_hex_dumps_in_the_protocol_document_match_the_golden_files(read_golden):
    doc = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
    text = doc.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- golden: ([\w-]+) -->\n```text\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for name, block in blocks:
        pairs = []
        for line in block.splitlines():
            match = re.match(r"((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:  |$)", line)
            assert match, f"{name}: cannot read {line!r}"
            pairs.append(match.group(1))
        assert bytes.fromhex(" ".join(pairs)) == read_golden(name), name
