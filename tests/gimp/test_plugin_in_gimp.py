"""The plug-in inside real GIMP 3, against a stand-in daemon that upscales by
pixel repetition: registration, reading the selection in every precision,
the new layer's place, size and pixels, the new-image output, and the error
messages. (``test_end_to_end.py`` uses the real daemon.)"""

import json

import pytest
from gimp_cases import (
    EXACT,
    IMAGE_SIZE,
    LAYER_OFFSET,
    LAYER_SIZE,
    PRECISIONS,
    SELECTION,
    Case,
    kill_plugin_at_first_progress,
)
from gimp_fake_daemon import FAKE_UPSCALERS, ErrorKind, FakeDaemon, repeat_pixels
from gimp_pixels import unpack

import tessera_gimp as core
from tessera_client import Channels, JobParams, Preset, SampleFormat, Sampler, Transfer

#: Every job argument away from its default, as a script would set them.
DIFFUSION_ARGUMENTS = {
    "scale": 3.0,
    "upscaler": FAKE_UPSCALERS[1],
    "preset": "refiners",
    "creativity": 0.5,
    "resemblance": 1.25,
    "dynamic": 7.5,
    "tile-width": 64,
    "tile-height": 200,
    "steps": 30,
    "seed": 2**31 - 1,
    "prompt": "a cat, <lora:x:0.5>",
    "negative-prompt": "",
    "sampler": "dpmpp-2m-karras",
    "decay": 0.9,
    "multistep-factor": 1.5,
    "checkpoint": "mine",
    "vae": "my-vae",
    "controlnet": "my-tile",
    "sharpen": 2.5,
}


@pytest.fixture(scope="module")
def fake(gimp):
    folder = gimp.folder("fake-daemon")
    daemon = FakeDaemon(str(folder / "tessera.sock"))
    yield daemon, {"TESSERA_SOCKET": gimp.inside(folder / "tessera.sock")}
    daemon.close()


@pytest.fixture(scope="module")
def batch(gimp, fake):
    """All the successful cases, run in one GIMP session (GIMP starts in
    seconds; the calls take a fraction of one)."""
    daemon, env = fake
    folder = gimp.folder("cases")
    cases = {}

    def add(name, **kwargs):
        cases[name] = Case(gimp, folder, name, **kwargs)

    for precision in PRECISIONS:
        add(precision.lower(), precision=precision)
    add("rgb-no-alpha", alpha=False)
    add("gray-alpha-u8", base="GRAY")
    add("gray-u16", base="GRAY", alpha=False, precision="U16_NON_LINEAR")
    add("no-selection", selection=None)
    add("no-selection-new-layer", selection=None, arguments={"output": "new-layer"})
    add("scale-image", arguments={"output": "scale-image"})
    add("selection-past-the-layer", selection=(30, 20, 60, 60))
    add("scale-3", arguments={"scale": 3.0, "upscaler": FAKE_UPSCALERS[1]})
    add("in-group", in_group=True)
    add("diffusion-params", arguments=DIFFUSION_ARGUMENTS)
    add("new-image", arguments={"output": "new-image"}, precision="U16_NON_LINEAR")
    before = len(daemon.submissions)
    run = gimp.run("upscale_cases.py", [case.spec for case in cases.values()], env=env)
    received = daemon.submissions[before:]
    # Each case submits once, in order.
    assert len(received) == len(cases), run.output
    return {name: (case, sub) for (name, case), sub in zip(cases.items(), received)}, run


def _outcome(batch, name):
    results, run = batch
    case, submission = results[name]
    path = case.out.with_suffix(".json")
    assert path.is_file(), f"GIMP did not run case {name} (rc {run.returncode}):\n{run.output}"
    outcome = case.outcome()
    assert "exception" not in outcome, outcome["exception"] + run.output
    assert outcome["status"] == "success", f"{outcome}\n{run.output}"
    assert (submission.image.width, submission.image.height) == case.region()[2:]
    return case, outcome, submission.image, submission.params


def test_procedure_is_registered_in_the_filters_menu(gimp):
    run = gimp.run("describe_procedure.py")
    described = json.loads((gimp.shared / "procedure.json").read_text())
    assert described["menu_paths"] == ["<Image>/Filters/Enhance"], run.output
    assert described["menu_label"] == "Tessera _Upscale…"
    assert described["image_types"] == "RGB*, GRAY*"
    arguments = {a["name"]: a for a in described["arguments"]}
    names = [a.name for a in core.ARGUMENTS]
    assert list(arguments) == ["run-mode", "image", "drawables", *names]
    for argument in core.ARGUMENTS:
        registered = arguments[argument.name]
        if argument.kind in ("double", "int"):
            assert registered["default"] == argument.default, argument.name
            assert type(registered["default"]) is type(argument.default), argument.name
            assert (registered["minimum"], registered["maximum"]) == (
                argument.minimum,
                argument.maximum,
            ), argument.name
        elif argument.kind == "choice":
            assert registered["default"] == argument.default, argument.name
            assert registered["choices"] == [nick for nick, _, _ in argument.choices]
        elif argument.default:
            assert registered["default"] == argument.default, argument.name
        else:
            # Empty; GIMP gives it back as None once it has cached the registration.
            assert registered["default"] in ("", None), argument.name
    assert arguments["scale"]["default"] == 2.0
    assert (arguments["scale"]["minimum"], arguments["scale"]["maximum"]) == (1.0, 16.0)
    assert arguments["output"]["choices"] == ["auto", "new-layer", "scale-image", "new-image"]
    assert arguments["output"]["default"] == "auto"
    assert arguments["preset"]["choices"] == ["clarity", "refiners", "upscaler"]
    assert (arguments["seed"]["default"], arguments["tile-width"]["default"]) == (1337, 112)
    assert [r["name"] for r in described["return_values"]] == ["result-image", "result-layer"]


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_each_precision_is_sent_in_its_own_format_and_written_back(batch, precision):
    case, outcome, image, _ = _outcome(batch, precision.lower())
    assert (image.channels, image.sample, image.transfer) == (
        Channels.RGBA,
        case.sample,
        case.transfer,
    )
    expected = repeat_pixels(image, 2).data
    if precision in EXACT:
        assert bytes(image.data) == case.sent()
        assert case.result_pixels() == expected
    else:  # stored as u32 or double: equal within that storage's rounding
        assert _max_difference(bytes(image.data), case.sent()) < 1e-6
        assert _max_difference(case.result_pixels(), expected) < 1e-6
    assert outcome["result"]["size"] == [2 * case.region()[2], 2 * case.region()[3]]
    assert outcome["source_unchanged"]


def _max_difference(a: bytes, b: bytes) -> float:
    x, y = unpack(a, SampleFormat.F32), unpack(b, SampleFormat.F32)
    assert len(x) == len(y)
    return max(abs(p - q) for p, q in zip(x, y))


def test_new_layer_sits_above_the_source_at_the_selection(batch):
    case, outcome, image, params = _outcome(batch, "u8_non_linear")
    assert outcome["same_image"]
    assert outcome["stack_before"] == ["top", "source", "background"]
    assert outcome["stack_after"] == ["top", "source ×2 (Tessera)", "source", "background"]
    result = outcome["result"]
    assert result["offset"] == list(SELECTION[:2])
    assert result["size"] == [SELECTION[2] * 2, SELECTION[3] * 2]
    assert result["alpha"]
    # Nothing set: the protocol's defaults, Clarity's.
    assert params == JobParams()


@pytest.mark.parametrize(
    "name, channels, sample",
    [
        ("rgb-no-alpha", Channels.RGB, SampleFormat.U8),
        ("gray-alpha-u8", Channels.GRAY_ALPHA, SampleFormat.U8),
        ("gray-u16", Channels.GRAY, SampleFormat.U16),
    ],
)
def test_layouts_without_alpha_and_gray(batch, name, channels, sample):
    case, outcome, image, _ = _outcome(batch, name)
    assert (image.channels, image.sample, image.transfer) == (channels, sample, Transfer.SRGB)
    assert bytes(image.data) == case.sent()
    assert case.result_pixels() == repeat_pixels(image, 2).data
    assert outcome["result"]["alpha"] == channels.has_alpha


def test_without_selection_the_whole_layer_goes_and_the_image_grows_to_fit_it(batch):
    case, outcome, image, _ = _outcome(batch, "no-selection")
    assert case.region() == (0, 0, *LAYER_SIZE)
    assert bytes(image.data) == case.sent()
    # 80×60 at (3, 4) would reach past the 64×48 canvas: by default the image
    # is scaled ×2 first and the layer lands on its scaled source.
    assert outcome["image_before"]["size"] == list(IMAGE_SIZE)
    assert outcome["image_after"]["size"] == [IMAGE_SIZE[0] * 2, IMAGE_SIZE[1] * 2]
    assert outcome["result"]["offset"] == [LAYER_OFFSET[0] * 2, LAYER_OFFSET[1] * 2]
    assert outcome["result"]["size"] == [LAYER_SIZE[0] * 2, LAYER_SIZE[1] * 2]
    assert outcome["source_after"]["offset"] == outcome["result"]["offset"]
    assert outcome["source_after"]["size"] == outcome["result"]["size"]
    assert outcome["stack_after"] == ["top", "source ×2 (Tessera)", "source", "background"]


def test_a_new_layer_without_scaling_may_hang_off_the_canvas_when_asked(batch):
    _, outcome, _, _ = _outcome(batch, "no-selection-new-layer")
    assert outcome["image_after"] == outcome["image_before"]
    assert outcome["result"]["offset"] == list(LAYER_OFFSET)
    assert outcome["result"]["size"] == [LAYER_SIZE[0] * 2, LAYER_SIZE[1] * 2]


def test_scale_image_scales_everything_and_puts_the_layer_on_the_scaled_selection(batch):
    _, outcome, _, _ = _outcome(batch, "scale-image")
    before, after = outcome["image_before"], outcome["image_after"]
    assert after["size"] == [IMAGE_SIZE[0] * 2, IMAGE_SIZE[1] * 2]
    assert after["resolution"] == before["resolution"]
    assert outcome["result"]["offset"] == [SELECTION[0] * 2, SELECTION[1] * 2]
    assert outcome["result"]["size"] == [SELECTION[2] * 2, SELECTION[3] * 2]
    assert outcome["source_after"]["offset"] == [LAYER_OFFSET[0] * 2, LAYER_OFFSET[1] * 2]
    assert outcome["stack_after"] == ["top", "source ×2 (Tessera)", "source", "background"]


def test_selection_is_clipped_to_the_layer(batch):
    case, outcome, image, _ = _outcome(batch, "selection-past-the-layer")
    # The selection starts inside the layer and runs past its right and bottom edges.
    assert case.region() == (27, 16, 13, 14)
    assert bytes(image.data) == case.sent()
    assert outcome["result"]["offset"] == [30, 20]
    assert outcome["result"]["size"] == [26, 28]


def test_scale_and_model_reach_the_daemon(batch):
    case, outcome, image, params = _outcome(batch, "scale-3")
    assert (params.scale, params.upscaler) == (3.0, FAKE_UPSCALERS[1])
    assert outcome["result"]["size"] == [SELECTION[2] * 3, SELECTION[3] * 3]
    assert outcome["result"]["name"] == "source ×3 (Tessera)"
    assert case.result_pixels() == repeat_pixels(image, 3).data


def test_every_job_argument_reaches_the_daemon(batch):
    case, outcome, image, params = _outcome(batch, "diffusion-params")
    assert params == JobParams(
        scale=3.0,
        upscaler=FAKE_UPSCALERS[1],
        preset=Preset.REFINERS,
        creativity=0.5,
        resemblance=1.25,
        dynamic=7.5,
        tile_width=64,
        tile_height=200,
        steps=30,
        seed=2**31 - 1,
        prompt="a cat, <lora:x:0.5>",
        negative_prompt="",
        sampler=Sampler.DPMPP_2M_KARRAS,
        decay=0.9,
        multistep_factor=1.5,
        checkpoint="mine",
        vae="my-vae",
        controlnet="my-tile",
        sharpen=2.5,
    )
    assert outcome["result"]["size"] == [SELECTION[2] * 3, SELECTION[3] * 3]


def test_a_tile_size_the_daemon_refuses_is_explained(gimp, fake):
    outcome, run = _error_case(gimp, fake, "tile", arguments={"tile-width": 100})
    assert outcome["error"] == (
        "Tessera could not upscale: tile-width must be a multiple of 8 between 16 and 256 (got 100)"
    )


def test_result_stays_in_the_sources_group(batch):
    case, outcome, _, _ = _outcome(batch, "in-group")
    assert outcome["result"]["parent"] == "group"
    assert outcome["stack_after"][:4] == [
        "group",
        "group/top",
        "group/source ×2 (Tessera)",
        "group/source",
    ]


def test_new_image_output_keeps_the_precision(batch):
    case, outcome, image, _ = _outcome(batch, "new-image")
    assert not outcome["same_image"]
    assert outcome["stack_after"] == outcome["stack_before"]
    assert outcome["images_after"] == outcome["images_before"] + 1
    assert outcome["result_image"] == {
        "size": [SELECTION[2] * 2, SELECTION[3] * 2],
        "precision": "u16-non-linear",
        "base": "rgb",
        "layers": 1,
    }
    assert outcome["result"]["offset"] == [0, 0]
    assert case.result_pixels() == repeat_pixels(image, 2).data


def test_progress_reaches_gimp(batch):
    results, run = batch
    progress = run.of("progress")
    # Three progress events per job from the stand-in daemon.
    assert len(progress) == 3 * len(results)
    assert progress[0]["text"] == "Tessera: upscale, tile 1 of 3"
    assert [e["fraction"] for e in progress[:3]] == [0.25, 0.5, 0.75]
    assert len(run.of("undo-group")) == len(results) - 1  # all but the new image


def _error_case(gimp, fake, name, **kwargs):
    daemon, env = fake
    folder = gimp.folder(f"error-{name}")
    case = Case(gimp, folder, name, **kwargs)
    run = gimp.run("upscale_cases.py", [case.spec], env=kwargs.pop("env", env))
    outcome = case.outcome()
    assert "exception" not in outcome, outcome["exception"] + run.output
    assert outcome["status"] == "execution-error", outcome
    assert outcome["stack_after"] == outcome["stack_before"]
    assert outcome["source_unchanged"]
    return outcome, run


def test_daemon_refusal_becomes_a_plain_message(gimp, fake):
    daemon, env = fake
    daemon.reject = (ErrorKind.IMAGE_TOO_LARGE, "the result would have too many pixels")
    try:
        outcome, run = _error_case(gimp, fake, "refused", arguments={"scale": 16.0})
    finally:
        daemon.reject = None
    assert outcome["error"] == "Tessera could not upscale: the result would have too many pixels."


def test_selection_outside_the_layer_is_an_error(gimp, fake):
    outcome, run = _error_case(gimp, fake, "outside", selection=(50, 40, 10, 5))
    assert "selection does not cover any of the active layer" in outcome["error"]


def test_missing_daemon_and_program_is_explained(gimp):
    folder = gimp.folder("no-daemon")
    case = Case(gimp, folder, "no-daemon")
    env = {"TESSERA_SOCKET": gimp.inside(folder / "nothing-here.sock")}
    run = gimp.run("upscale_cases.py", [case.spec], env=env)
    outcome = case.outcome()
    assert outcome["status"] == "execution-error", run.output
    assert outcome["error"].startswith(
        "Tessera is not running, and its program `tessera` was not found"
    )
    assert "set TESSERA_BIN" in outcome["error"]
    assert outcome["stack_after"] == outcome["stack_before"]


def test_misconfigured_tessera_bin_is_explained(gimp):
    folder = gimp.folder("bad-bin")
    case = Case(gimp, folder, "bad-bin")
    env = {
        "TESSERA_SOCKET": gimp.inside(folder / "nothing-here.sock"),
        "TESSERA_BIN": "/nowhere/tessera",
    }
    run = gimp.run("upscale_cases.py", [case.spec], env=env)
    outcome = case.outcome()
    assert outcome["status"] == "execution-error", run.output
    assert outcome["error"] == (
        "TESSERA_BIN is set to /nowhere/tessera, which is not a program; "
        "correct TESSERA_BIN or unset it"
    )


def test_killing_the_plugin_mid_job_drops_the_connection_and_spares_the_image(gimp):
    """GIMP's Cancel button kills the plug-in: the connection drops (which the
    daemon takes as a cancel), GIMP goes on, the image is as it was."""
    folder = gimp.folder("killed")
    daemon = FakeDaemon(str(folder / "tessera.sock"), progress_steps=100, step_delay=0.2)
    try:
        doomed = Case(gimp, folder, "doomed")
        after = Case(gimp, folder, "after")
        env = {"TESSERA_SOCKET": gimp.inside(folder / "tessera.sock")}
        running = gimp.start("upscale_cases.py", [doomed.spec, after.spec], env=env)
        pid = kill_plugin_at_first_progress(running)
        daemon.progress_steps, daemon.step_delay = 3, 0.0
        run = running.wait()
    finally:
        daemon.close()
    assert daemon.abandoned == [1], run.output
    killed = doomed.outcome()
    assert killed["status"] != "success", killed
    assert killed["stack_after"] == killed["stack_before"]
    assert killed["source_unchanged"]
    # The next call, in the same GIMP, from a new plug-in process, works.
    outcome = after.outcome()
    assert outcome["status"] == "success", f"{outcome}\n{run.output}"
    assert [e["pid"] for e in run.of("start")][0] == pid
    assert len({e["pid"] for e in run.of("start")}) == 2
