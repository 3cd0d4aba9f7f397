"""The plug-in's pure logic, without Krita or Qt: byte layouts of each depth,
selection → request, parameters, framing, routing, words."""

import dataclasses
import struct
from typing import List, Optional

import pytest

from tessera_client import (
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Channels,
    ConnectionClosed,
    DaemonNotRunning,
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
    Preset,
    Progress,
    ProtocolError,
    Rejected,
    SampleFormat,
    ShuttingDown,
    Status,
    Submit,
    TesseraError,
    Transfer,
    encode_frame,
    framing,
    session,
)
from tessera_krita import launcher, params, pixels, region, settings, texts

# --- Byte layouts -------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, sample, channels, size",
    [
        ("U8", SampleFormat.U8, Channels.BGRA, 4),
        ("U16", SampleFormat.U16, Channels.BGRA, 8),
        ("F16", SampleFormat.F16, Channels.RGBA, 8),
        ("F32", SampleFormat.F32, Channels.RGBA, 16),
    ],
)
def test_integer_rgba_is_bgra_and_float_is_rgba_in_its_own_depth(depth, sample, channels, size):
    layout = pixels.layout_for("RGBA", depth, "sRGB-elle-V2-srgbtrc.icc")
    assert (layout.channels, layout.sample, layout.transfer) == (channels, sample, Transfer.SRGB)
    assert layout.bytes_per_pixel == size


@pytest.mark.parametrize(
    "profile, linear",
    [
        ("sRGB-elle-V2-srgbtrc.icc", False),
        ("sRGB-elle-V2-g10.icc", True),  # Krita's default for U16, F16, F32
        ("Rec2020-elle-V4-g10.icc", True),
        ("scRGB (linear)", True),
        ("sRGB built-in", False),
        ("Rec2020-elle-V4-rec709.icc", False),
        ("", False),
    ],
)
def test_the_profile_decides_the_transfer(profile, linear):
    layout = pixels.layout_for("RGBA", "F32", profile)
    assert layout.transfer == (Transfer.LINEAR if linear else Transfer.SRGB)


@pytest.mark.parametrize(
    "model, depth, words, offer",
    [
        ("GRAYA", "U8", "8-bit integer grayscale", ("RGBA", "U8")),
        ("CMYKA", "U16", "16-bit integer CMYK", ("RGBA", "U16")),
        ("LABA", "F32", "32-bit float L*a*b*", ("RGBA", "F32")),
        ("XYZA", "F16", "16-bit float XYZ", ("RGBA", "F16")),
        ("RGBA", "U32", "U32 RGB", ("RGBA", "U16")),
    ],
)
def test_other_colour_spaces_get_a_message_offering_conversion(model, depth, words, offer):
    with pytest.raises(pixels.UnsupportedColorSpace) as raised:
        pixels.layout_for(model, depth, "whatever.icc")
    assert words in raised.value.message
    assert "Convert" in raised.value.message and "undone" in raised.value.message
    assert raised.value.conversion == offer


def krita_pixel(depth: str, r: float, g: float, b: float, a: float) -> bytes:
    """One pixel as Krita stores it in an RGBA document of ``depth``."""
    if depth == "U8":
        return bytes(round(v * 255) for v in (b, g, r, a))
    if depth == "U16":
        return struct.pack("<4H", *(round(v * 65535) for v in (b, g, r, a)))
    if depth == "F16":
        return struct.pack("<4e", r, g, b, a)
    return struct.pack("<4f", r, g, b, a)


def wire_rgba(image: Image) -> List[tuple]:
    """The pixels of a wire image as (r, g, b, a) floats in [0, 1]."""
    sample = SampleFormat(image.sample)
    count = image.width * image.height * 4
    values = struct.unpack(f"<{count}{sample.struct_code}", image.data)
    scale = {SampleFormat.U8: 255, SampleFormat.U16: 65535}.get(sample, 1)
    out = []
    for i in range(0, count, 4):
        p = [v / scale for v in values[i : i + 4]]
        if image.channels == Channels.BGRA:
            p = [p[2], p[1], p[0], p[3]]
        out.append(tuple(p))
    return out


@pytest.mark.parametrize("depth", ["U8", "U16", "F16", "F32"])
def test_krita_bytes_sent_as_is_mean_the_same_colours_on_the_wire(depth):
    colours = [(1.0, 0.0, 0.0, 1.0), (0.0, 0.5, 1.0, 0.25), (0.2, 0.4, 0.6, 0.0)]
    data = b"".join(krita_pixel(depth, *c) for c in colours)
    layout = pixels.layout_for("RGBA", depth, "")
    image = Image(3, 1, layout.channels, layout.sample, layout.transfer, data)
    image.validate()
    for got, want in zip(wire_rgba(image), colours):
        assert got == pytest.approx(want, abs=1 / 255)


@pytest.mark.parametrize("sample_bytes", [1, 2, 4])
def test_swap_red_blue_swaps_the_first_and_third_sample(sample_bytes):
    pixel = bytes(range(4 * sample_bytes))
    swapped = pixels.swap_red_blue(pixel * 3, sample_bytes)
    s = sample_bytes
    want = pixel[2 * s : 3 * s] + pixel[s : 2 * s] + pixel[0:s] + pixel[3 * s :]
    assert swapped == want * 3
    assert pixels.swap_red_blue(swapped, sample_bytes) == pixel * 3
    with pytest.raises(ValueError):
        pixels.swap_red_blue(pixel[:-1], sample_bytes)


# --- Selection → request ------------------------------------------------------


def test_without_a_selection_the_whole_canvas_goes():
    assert region.source_rect((640, 480), None) == region.Rect(0, 0, 640, 480)


def test_a_selection_sends_its_bounding_box_clipped_to_the_canvas():
    assert region.source_rect((100, 80), region.Rect(10, 20, 30, 40)) == (10, 20, 30, 40)
    assert region.source_rect((100, 80), region.Rect(-5, 70, 50, 40)) == (0, 70, 45, 10)


def test_a_selection_outside_the_canvas_is_refused_in_words():
    with pytest.raises(region.NothingToUpscale, match="outside the canvas"):
        region.source_rect((100, 80), region.Rect(200, 0, 10, 10))
    with pytest.raises(region.NothingToUpscale):
        region.source_rect((0, 80), None)


def test_in_place_scales_the_canvas_by_the_factor_the_result_has():
    # ×2 of a 30×40 selection at (10, 20) on 100×80.
    assert region.in_place((100, 80), region.Rect(10, 20, 30, 40), (60, 80)) == (200, 160, 20, 40)
    # The daemon rounded ×1.5 of 33 px down to 48 (not 49.5): the canvas follows.
    place = region.in_place((99, 60), region.Rect(33, 0, 33, 60), (48, 90))
    assert place == (144, 90, 48, 0)


def test_a_preview_asks_for_the_selections_part_of_the_whole_result():
    assert region.preview_region((224, 176), region.Rect(16, 8, 192, 160), 4.0) == (
        64, 32, 768, 640,
    )  # fmt: skip
    # ×1.5 of an odd selection: the pixels that cover it, inside the 150×120 result.
    assert region.preview_region((100, 80), region.Rect(33, 0, 67, 80), 1.5) == (49, 0, 101, 120)
    assert region.preview_name(2.0, 384, 320) == "Preview ×2 (384×320) [Tessera]"


def test_layer_names_say_the_scale_and_the_size():
    assert region.layer_name(2.0, 1024, 768, "Paint Layer 1") == (
        "Paint Layer 1 ×2 (1024×768) [Tessera]"
    )
    assert region.layer_name(1.5, 30, 20) == "×1.5 (30×20) [Tessera]"
    assert region.format_scale(4 / 3) == "1.33"


# --- Parameters ---------------------------------------------------------------


def test_only_parameters_the_protocol_takes_are_offered():
    offered = [spec.key for spec in params.offered_specs()]
    assert set(offered) <= {f.name for f in dataclasses.fields(JobParams)}
    # Protocol v2 takes every parameter the docker describes.
    assert offered == [spec.key for spec in params.SPECS]


def test_diffusion_parameters_appear_when_the_protocol_grows_them():
    @dataclasses.dataclass
    class FutureParams:
        scale: float = 2.0
        creativity: float = 0.35
        resemblance: float = 0.6
        tile_width: int = 112
        tile_height: int = 144
        seed: int = 1337
        prompt: str = ""
        upscaler: Optional[str] = None
        sampler: str = "dpmpp_3m_sde"  # unknown here: left to its default

    offered = [spec.key for spec in params.offered_specs(FutureParams)]
    assert offered == [
        "scale", "creativity", "resemblance", "tile_width", "tile_height", "seed", "prompt",
        "upscaler",
    ]  # fmt: skip
    job = params.to_job_params({"creativity": 0.5, "seed": "42"}, FutureParams)
    assert job == FutureParams(
        scale=2.0, creativity=0.5, resemblance=0.6, seed=42, prompt=params.CLARITY_PROMPT
    )


def test_clarity_defaults_and_a_tooltip_for_every_parameter():
    d = params.defaults()
    assert (d["scale"], d["creativity"], d["resemblance"], d["dynamic"]) == (2.0, 0.35, 0.6, 6.0)
    assert (d["tile_width"], d["tile_height"], d["steps"], d["seed"]) == (112, 144, 18, 1337)
    assert d["prompt"].startswith("masterpiece, best quality, highres")
    assert d["negative_prompt"].startswith("(worst quality, low quality")
    for spec in params.SPECS:
        assert spec.tooltip.endswith(".") and len(spec.tooltip) > 40, spec.key
        assert spec.default is None or params.validate(spec, spec.default) == spec.default


def test_job_params_from_the_docker_values():
    assert params.to_job_params({}) == JobParams(scale=2.0, upscaler=None)
    job = params.to_job_params({"scale": 3, "upscaler": "tiny-x4", "creativity": 0.9})
    assert job == JobParams(scale=3.0, upscaler="tiny-x4", creativity=0.9)
    assert isinstance(job.scale, float)
    assert params.to_job_params({"upscaler": ""}).upscaler is None


def test_the_preset_is_a_named_choice_sent_as_the_protocols_value():
    assert params.defaults()["preset"] == "clarity"
    assert params.to_job_params({}).preset == Preset.CLARITY
    job = params.to_job_params({"preset": "upscaler", "upscaler": "tiny-x4"})
    assert job.preset == Preset.UPSCALER
    # Labels, any case, and the protocol's own values are understood; settings keep the name.
    spec = params.SPECS_BY_KEY["preset"]
    assert params.validate(spec, "Upscaler only") == "upscaler"
    assert params.validate(spec, Preset.REFINERS) == "refiners"
    store = settings.DictStore()
    settings.Settings(store).set_value("preset", "Refiners")
    assert settings.Settings(store).values()["preset"] == "refiners"
    # The Upscaler-only preset needs no SD model: what it ignores is every diffusion setting.
    assert "creativity" in params.DIFFUSION_KEYS and "checkpoint" in params.DIFFUSION_KEYS
    assert "scale" not in params.DIFFUSION_KEYS and "upscaler" not in params.DIFFUSION_KEYS


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("scale", 0.5, "Scale must be between 1 and 16; 0.5 is out of range."),
        ("scale", 17, "Scale must be between 1 and 16; 17 is out of range."),
        ("scale", "two", "Scale must be a number, not 'two'."),
        ("scale", float("nan"), "Scale must be a finite number."),
        ("scale", True, "Scale must be a number."),
        ("steps", 2.5, "Steps must be a whole number."),
        ("creativity", 1.5, "Creativity must be between 0 and 1; 1.5 is out of range."),
        ("upscaler", 3, "Upscaler model must be a model name."),
        ("preset", "fast", "Preset must be one of Clarity, Refiners, Upscaler only, not 'fast'."),
    ],
)
def test_invalid_values_are_refused_in_words(key, value, message):
    with pytest.raises(params.InvalidParameter) as raised:
        params.validate(params.SPECS_BY_KEY[key], value)
    assert str(raised.value) == message
    if key in ("scale", "upscaler"):
        with pytest.raises(params.InvalidParameter):
            params.to_job_params({key: value})


def test_settings_keep_values_and_fall_back_to_defaults():
    store = settings.DictStore()
    s = settings.Settings(store)
    assert s.values() == params.defaults()
    assert (s.source, s.output, s.tessera_path, s.auto_start) == (
        "layer", "new-document", "", True,
    )  # fmt: skip
    s.set_values({"scale": 4, "upscaler": "tiny-x4"})
    s.source, s.output, s.auto_start = "merged", "in-place", False
    s.tessera_path = "  /opt/tessera/bin/tessera "
    again = settings.Settings(store)
    assert again.values() == dict(params.defaults(), scale=4.0, upscaler="tiny-x4")
    assert (again.source, again.output, again.tessera_path, again.auto_start) == (
        "merged", "in-place", "/opt/tessera/bin/tessera", False,
    )  # fmt: skip
    store.data.update(scale="99", source="sideways")  # edited by hand, or an old release
    assert again.values()["scale"] == 2.0 and again.source == "layer"
    with pytest.raises(params.InvalidParameter):
        again.set_value("scale", 0)
    with pytest.raises(ValueError):
        again.output = "printer"


def test_an_emptied_prompt_stays_empty():
    spec = params.SPECS_BY_KEY["prompt"]
    assert params.parse_setting(spec, "") == ""
    assert params.parse_setting(spec, None) == params.CLARITY_PROMPT


# --- Framing ------------------------------------------------------------------


def sample_messages():
    image = Image(2, 1, Channels.BGRA, SampleFormat.U8, Transfer.SRGB, bytes(range(8)))
    return [
        Handshake(PROTOCOL_VERSION, "tessera 0.1.0"),
        Accepted(1, 42, 0),
        Progress(42, 0, 1, "upscale", 1, 1, 3, 12, 0.25),
        Done(42, image, []),
        Error(ErrorKind.UNKNOWN_JOB, "no job 7"),
    ]


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 10_000])
def test_frames_come_out_whole_whatever_the_pieces(piece):
    messages = sample_messages()
    stream = b"".join(encode_frame(m) for m in messages)
    reader = framing.FrameReader()
    out = []
    for i in range(0, len(stream), piece):
        out += reader.feed(stream[i : i + piece])
    assert out == messages
    assert reader.pending == 0


def test_a_frame_over_the_limit_is_refused_from_its_prefix():
    reader = framing.FrameReader(max_bytes=100)
    assert reader.feed(struct.pack("<I", 100)) == []
    assert reader.expected == 104
    with pytest.raises(ProtocolError) as raised:
        framing.FrameReader(max_bytes=100).feed(struct.pack("<I", 101))
    assert raised.value.kind == ErrorKind.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError):
        framing.FrameReader().feed(struct.pack("<I", 0))
    with pytest.raises(ProtocolError):
        framing.FrameReader().feed(struct.pack("<I", 4) + struct.pack("<I", 99))


def test_frame_parts_are_the_codecs_frame_without_copying_the_pixels():
    data = bytes(range(256)) * 1024
    message = Submit(3, Image(256, 256, Channels.BGRA, SampleFormat.U8, Transfer.SRGB, data))
    parts = framing.frame_parts(message)
    assert b"".join(parts) == encode_frame(message)
    assert any(isinstance(p, memoryview) and p.obj is data for p in parts)


# --- Routing ------------------------------------------------------------------


class Wire:
    """The transport side of a session under test."""

    def __init__(self) -> None:
        self.sent: list = []
        self.opened: List[str] = []
        self.session = session.Session(self.sent.append, "krita-plugin test", self.opened.append)
        self.session.start()

    def open(self) -> None:
        self.session.receive(Handshake(PROTOCOL_VERSION, "tessera 0.1.0"))


class Recorder:
    def __init__(self) -> None:
        self.events: list = []
        self.ticket = session.JobTicket(
            on_accepted=lambda t: self.events.append(("accepted", t.job, t.position)),
            on_progress=lambda p: self.events.append(("progress", p.fraction)),
            on_done=lambda d: self.events.append(("done", d.job)),
            on_failed=lambda e: self.events.append(("failed", e)),
        )


def tiny_image() -> Image:
    return Image(1, 1, Channels.BGRA, SampleFormat.U8, Transfer.SRGB, b"\0\0\0\xff")


def test_handshake_then_jobs_are_routed_by_request_and_job_number():
    wire = Wire()
    assert wire.sent == [Handshake(PROTOCOL_VERSION, "krita-plugin test")]
    with pytest.raises(ConnectionClosed):
        wire.session.submit(tiny_image(), JobParams(), Recorder().ticket)
    wire.open()
    assert wire.opened == ["tessera 0.1.0"] and wire.session.state == session.OPEN
    first, second = Recorder(), Recorder()
    wire.session.submit(tiny_image(), JobParams(scale=2), first.ticket)
    wire.session.submit(tiny_image(), JobParams(scale=3), second.ticket)
    assert [m.request for m in wire.sent[1:]] == [1, 2]
    assert wire.sent[2].params == JobParams(scale=3)
    wire.session.receive(Accepted(2, 11, 1))
    wire.session.receive(Accepted(1, 10, 0))
    wire.session.receive(Progress(10, 0, 1, "upscale", 1, 1, 1, 2, 0.5))
    wire.session.receive(Progress(99, 0, 1, "upscale", 1, 1, 1, 2, 0.5))  # not ours: ignored
    wire.session.receive(Done(10, tiny_image(), []))
    wire.session.receive(Failed(11, ErrorInfo(ErrorKind.RUNTIME, "boom")))
    assert first.events == [("accepted", 10, 0), ("progress", 0.5), ("done", 10)]
    assert second.events[0] == ("accepted", 11, 1)
    assert second.events[1][0] == "failed" and second.events[1][1].kind == ErrorKind.RUNTIME
    assert wire.session.busy_jobs == 0


def test_events_that_overtake_their_accepted_are_held_until_it_comes():
    """The daemon may queue a fast job's progress and result before the
    Accepted that names it; they must not be lost (the job would hang)."""
    wire = Wire()
    wire.open()
    job = Recorder()
    wire.session.submit(tiny_image(), JobParams(), job.ticket)
    wire.session.receive(Progress(7, 0, 1, "upscale", 1, 1, 1, 1, 0.95))
    wire.session.receive(Progress(8, 0, 1, "upscale", 1, 1, 1, 1, 0.5))  # another client's
    wire.session.receive(Done(7, tiny_image(), []))
    assert job.events == []
    wire.session.receive(Accepted(1, 7, 0))
    assert job.events == [("accepted", 7, 0), ("progress", 0.95), ("done", 7)]
    assert wire.session._early == [] and wire.session.busy_jobs == 0
    # With no submission waiting, strangers' events are not kept.
    wire.session.receive(Progress(9, 0, 1, "upscale", 1, 1, 1, 1, 0.5))
    assert wire.session._early == []


def test_a_rejected_submission_fails_with_the_daemons_reason():
    wire = Wire()
    wire.open()
    job = Recorder()
    wire.session.submit(tiny_image(), JobParams(upscaler="nope"), job.ticket)
    wire.session.receive(Rejected(1, ErrorInfo(ErrorKind.MODEL_NOT_FOUND, "no upscaler nope")))
    (event,) = job.events
    assert event[0] == "failed" and event[1].kind == ErrorKind.MODEL_NOT_FOUND


def test_cancel_before_acceptance_is_sent_once_the_job_has_a_number():
    wire = Wire()
    wire.open()
    job = Recorder()
    wire.session.submit(tiny_image(), JobParams(), job.ticket)
    wire.session.cancel(job.ticket)
    assert not any(isinstance(m, Cancel) for m in wire.sent)
    wire.session.receive(Accepted(1, 5, 0))
    assert wire.sent[-1] == Cancel(5)
    wire.session.cancel(job.ticket)  # twice: sent once
    assert sum(isinstance(m, Cancel) for m in wire.sent) == 1
    wire.session.receive(Failed(5, ErrorInfo(ErrorKind.CANCELLED, "cancelled")))
    assert texts.is_cancelled(job.events[-1][1])


def test_status_models_and_errors_go_to_the_oldest_request_of_their_kind():
    wire = Wire()
    wire.open()
    got: list = []
    wire.session.request_status(got.append, lambda e: got.append(("status error", e.kind)))
    wire.session.request_models(got.append, lambda e: got.append(("models error", e.kind)))
    wire.session.request_status(got.append)
    assert [type(m) for m in wire.sent[1:]] == [GetStatus, ListModels, GetStatus]
    status = Status("0.1.0", "1.22", "CPU", None, 0.0, 0, 1, "/data")
    entry = ModelEntry(ModelKind.UPSCALER, "tiny-x4", "upscalers/tiny-x4.safetensors", 10)
    wire.session.receive(Models([entry]))
    wire.session.receive(Error(ErrorKind.UNKNOWN_JOB, "no job 3"))  # needs no answer
    wire.session.receive(Error(ErrorKind.IO, "disk on fire"))
    wire.session.receive(status)
    assert got == [[entry], ("status error", ErrorKind.IO), status]


@pytest.mark.parametrize(
    "reply, kind",
    [
        (Handshake(PROTOCOL_VERSION + 1, "tessera 9"), ErrorKind.VERSION_MISMATCH),
        (Error(ErrorKind.VERSION_MISMATCH, "speak v1"), ErrorKind.VERSION_MISMATCH),
        (Accepted(1, 1, 0), ErrorKind.PROTOCOL),
    ],
)
def test_a_bad_handshake_closes_with_a_typed_error(reply, kind):
    wire = Wire()
    with pytest.raises(TesseraError) as raised:
        wire.session.receive(reply)
    assert raised.value.kind == kind
    if kind == ErrorKind.VERSION_MISMATCH and isinstance(reply, Handshake):
        assert "same release" in texts.error_text(raised.value)


def test_connection_errors_and_client_messages_from_the_daemon_close_it():
    wire = Wire()
    wire.open()
    with pytest.raises(TesseraError):
        wire.session.receive(Error(ErrorKind.PROTOCOL, "bad bytes"))
    with pytest.raises(ProtocolError):
        wire.session.receive(Submit(1, tiny_image(), JobParams()))


def test_closing_fails_everything_still_waiting_exactly_once():
    wire = Wire()
    wire.open()
    queued, running = Recorder(), Recorder()
    errors: list = []
    wire.session.submit(tiny_image(), JobParams(), queued.ticket)
    wire.session.submit(tiny_image(), JobParams(), running.ticket)
    wire.session.receive(Accepted(2, 8, 0))
    wire.session.request_status(errors.append, errors.append)
    wire.session.receive(ShuttingDown())
    wire.session.close()
    wire.session.close()
    for job in (queued, running):
        assert job.events[-1][0] == "failed"
        assert job.events[-1][1].kind == ErrorKind.SHUTTING_DOWN
        assert sum(e[0] == "failed" for e in job.events) == 1
    assert len(errors) == 1
    other = Wire()
    other.open()
    job = Recorder()
    other.session.submit(tiny_image(), JobParams(), job.ticket)
    other.session.close()
    assert isinstance(job.events[-1][1], ConnectionClosed)
    assert "lost" in texts.error_text(job.events[-1][1])


# --- Words --------------------------------------------------------------------


def test_progress_text_says_stage_phase_step_and_tile_when_they_matter():
    text = texts.progress_text(Progress(1, 1, 3, "denoise", 4, 7, 2, 6, 0.5))
    assert text == "Stage 2/3 · denoise · step 4/7 · tile 2/6"
    assert texts.progress_text(Progress(1, 0, 1, "upscale", 1, 1, 3, 12, 0.2)) == (
        "Upscale · tile 3/12"
    )
    with_eta = Progress(1, 0, 1, "denoise", 4, 7, 1, 1, 0.5, eta_seconds=200.4)
    assert texts.progress_text(with_eta) == "Denoise · step 4/7 · 3 min 20 s left"
    assert texts.duration(44.6) == "45 s" and texts.duration(3900) == "1 h 05 min"
    assert texts.percent(0.1234) == 123 and texts.percent(2) == 1000
    assert texts.percent(float("nan")) == 0


def test_the_daemons_warnings_read_as_one_note():
    assert texts.warnings_note([]) == ""
    assert (
        texts.warnings_note(["CUDA is not used: no device."])
        == "Note: CUDA is not used: no device."
    )
    two = texts.warnings_note(["a", "b runs on the CPU (slower)"])
    assert two == "Note: a; b runs on the CPU (slower)."


def test_errors_read_as_plain_sentences():
    missing = TesseraError(ErrorKind.MODEL_NOT_FOUND, "no upscaler named x in /d/models/upscalers")
    assert texts.error_text(missing) == (
        "A model is missing. No upscaler named x in /d/models/upscalers."
    )
    assert texts.error_text(TesseraError(ErrorKind.CANCELLED, "cancelled")) == (
        "Cancelled; the document was left as it was."
    )
    assert texts.error_text(TesseraError(99, "a kind from the future")).startswith(
        "The daemon reported an error."
    )
    assert "tessera serve" in texts.error_text(DaemonNotRunning("/run/t.sock"))


def test_status_line_shows_connection_busy_queue_and_device():
    status = Status("0.1.0", "1.22", "CUDA (H100)", 4, 0.42, 2, 3, "/d")
    assert texts.status_text(status, "connected") == (
        "Connected · busy (42%) · 2 queued · CUDA (H100)"
    )
    idle = Status("0.1.0", "1.22", "CPU", None, 0.0, 0, 1, "/d")
    assert texts.status_text(idle, "connected") == "Connected · idle · 0 queued · CPU"
    assert texts.status_text(None, "disconnected") == "Daemon not running"
    assert texts.status_text(None, "starting") == "Starting the Tessera daemon…"


# --- Finding and starting the daemon -------------------------------------------


def test_the_configured_program_wins_else_path_else_usual_places(tmp_path):
    program = tmp_path / "bin" / launcher.EXE
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert launcher.find_tessera(str(program)) == str(program)
    with pytest.raises(launcher.LaunchError, match="does not exist"):
        launcher.find_tessera(str(tmp_path / "nope"))
    env = {"PATH": str(program.parent), "HOME": str(tmp_path)}
    assert launcher.find_tessera("", env) == str(program)
    home_bin = tmp_path / ".local" / "bin"
    home_bin.mkdir(parents=True)
    (home_bin / launcher.EXE).write_text("#!/bin/sh\n")
    (home_bin / launcher.EXE).chmod(0o755)
    assert launcher.find_tessera("", {"PATH": "", "HOME": str(tmp_path)}) == str(
        home_bin / launcher.EXE
    )
    with pytest.raises(launcher.LaunchError, match="not found on PATH"):
        launcher.find_tessera("", {"PATH": "", "HOME": str(tmp_path / "empty")})


def test_a_daemon_that_fails_to_start_is_explained_from_its_log(tmp_path):
    program = tmp_path / "tessera"
    program.write_text("#!/bin/sh\necho 'tessera: no ONNX Runtime library found' >&2\nexit 1\n")
    program.chmod(0o755)
    process = launcher.start_daemon(str(program), str(tmp_path / "data"))
    assert process.wait(timeout=10) == 1
    assert launcher.start_failure(process, str(tmp_path / "data")) == (
        "The daemon could not start: no ONNX Runtime library found"
    )


def test_a_bundled_kritas_library_path_does_not_leak_into_the_daemon():
    env = {"APPIMAGE": "/k.AppImage", "LD_LIBRARY_PATH": "/tmp/.mount/usr/lib", "HOME": "/h"}
    assert launcher.child_environment(env) == {"APPIMAGE": "/k.AppImage", "HOME": "/h"}
    assert launcher.child_environment({"LD_LIBRARY_PATH": "/x"}) == {"LD_LIBRARY_PATH": "/x"}
