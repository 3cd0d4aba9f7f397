"""The plug-in's GIMP-free parts (``tessera_gimp``) and its installer, on the
host's Python: arguments, pixel layouts, finding and starting the daemon,
the messages."""

import dataclasses
import importlib.util
import os
import re
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

import tessera_gimp as core
from tessera_client import (
    CLARITY_NEGATIVE_PROMPT,
    CLARITY_PROMPT,
    Channels,
    ConnectionClosed,
    DaemonNotRunning,
    ErrorKind,
    JobParams,
    ModelKind,
    Preset,
    Progress,
    SampleFormat,
    Sampler,
    TesseraError,
    Transfer,
)

REPO = Path(__file__).resolve().parents[2]


def _load_installer():
    spec = importlib.util.spec_from_file_location("install", REPO / "plugin-gimp" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Arguments ----------------------------------------------------------------

DEFAULTS = {a.name: a.default for a in core.ARGUMENTS}
ARGUMENTS = {a.name: a for a in core.ARGUMENTS}
#: The procedure's arguments, in registration order: the first three as
#: before the diffusion parameters, so that positional callers keep working.
NAMES = [
    "scale",
    "upscaler",
    "output",
    "preset",
    "creativity",
    "resemblance",
    "dynamic",
    "tile-width",
    "tile-height",
    "steps",
    "seed",
    "prompt",
    "negative-prompt",
    "sampler",
    "decay",
    "multistep-factor",
    "checkpoint",
    "vae",
    "controlnet",
    "sharpen",
]


def test_arguments_have_unique_names_and_sane_defaults():
    assert [a.name for a in core.ARGUMENTS] == NAMES
    for argument in core.ARGUMENTS:
        assert argument.kind in ("double", "int", "string", "choice"), argument.name
        assert argument.blurb and argument.nick, argument.name
        if argument.kind in ("double", "int"):
            assert argument.minimum <= argument.default <= argument.maximum
        if argument.kind == "int":
            for number in (argument.minimum, argument.maximum, argument.default):
                assert isinstance(number, int) and not isinstance(number, bool), argument.name
            # GIMP's integer arguments are C ints.
            assert -(2**31) <= argument.minimum and argument.maximum <= 2**31 - 1
        if argument.kind == "choice":
            nicks = [nick for nick, _, _ in argument.choices]
            assert argument.default in nicks
            assert len(set(nicks)) == len(nicks)


def test_no_two_mnemonics_clash_nor_take_the_dialog_buttons_letters():
    keys = {}
    for argument in core.ARGUMENTS:
        assert argument.nick.count("_") <= 1, argument.nick
        key = core.mnemonic(argument.nick)
        if key is None:
            continue
        assert key not in keys, (argument.name, keys[key])
        keys[key] = argument.name
    # GIMP's dialog buttons: _OK, _Cancel, _Reset, _Load Saved Settings, _Save
    # Settings, _Help.
    assert core.DIALOG_BUTTON_MNEMONICS == set("ocrlsh")
    assert not core.DIALOG_BUTTON_MNEMONICS & set(keys), keys
    # As many as there are letters to give: four advanced arguments have none.
    without = [a.name for a in core.ARGUMENTS if core.mnemonic(a.nick) is None]
    assert without == ["sampler", "decay", "controlnet", "sharpen"]
    # Every argument shown without unfolding Advanced has one.
    assert all(core.mnemonic(a.nick) for a in core.ARGUMENTS if a.name in core.DIALOG_MAIN)
    # What the issue found clashing: Steps and Save Settings, ControlNet and
    # Load Saved Settings, Prompt and Reset.
    nicks = {a.name: a.nick for a in core.ARGUMENTS}
    assert (core.mnemonic(nicks["steps"]), core.mnemonic(nicks["prompt"])) == ("e", "m")
    assert core.mnemonic(nicks["controlnet"]) is None
    assert core.mnemonic("Plain") is None and core.mnemonic("Sc_ale") == "a"


def test_the_dialog_shows_every_argument_once():
    assert core.DIALOG_MAIN == (
        "scale",
        "preset",
        "creativity",
        "resemblance",
        "prompt",
        "upscaler",
        "output",
    )
    placed = core.DIALOG_MAIN + core.DIALOG_ADVANCED
    assert sorted(placed) == sorted(NAMES)
    # Greyed out for the upscaler alone: all but what it uses.
    kept = {"scale", "upscaler", "output", "preset"}
    assert sorted(core.DIFFUSION_ONLY) == sorted(set(NAMES) - kept)


def test_defaults_are_the_protocols():
    params = core.job_params(DEFAULTS)
    assert JobParams(**params) == JobParams()
    # Every field but the LoRA list (the prompt's <lora:…> tags cover it) and the preview
    # of a region (the plug-in upscales whole images or selections).
    fields = [f.name for f in dataclasses.fields(JobParams)]
    assert sorted(params) == sorted(f for f in fields if f not in ("loras", "preview"))
    assert (params["preset"], params["sampler"]) == (Preset.CLARITY, Sampler.DPMPP_3M_SDE_KARRAS)
    assert params["prompt"] == CLARITY_PROMPT
    assert params["negative_prompt"] == CLARITY_NEGATIVE_PROMPT
    assert [params[m] for m in ("upscaler", "checkpoint", "vae", "controlnet")] == [None] * 4
    for argument in core.ARGUMENTS:
        if argument.job_field:
            value = params[argument.job_field]
            assert type(value) is type(getattr(JobParams(), argument.job_field)) or value is None


def test_argument_names_are_the_clis_flags():
    """Each job argument is named like its ``tessera upscale`` flag (and its
    ``JobParams`` field, with dashes), so the same words work in both."""
    text = (REPO / "daemon" / "src" / "cli" / "params.rs").read_text()
    block = text[text.index("pub struct JobArgs") :]
    block = block[: block.index("\n}\n")]
    flags = [name.replace("_", "-") for name in re.findall(r"pub (\w+):", block)]
    jobs = [a for a in core.ARGUMENTS if a.job_field]
    assert sorted(a.name for a in jobs) == sorted(f for f in flags if f not in ("lora", "preview"))
    for argument in jobs:
        assert argument.job_field == argument.name.replace("-", "_")


def _choice_nicks(name):
    return [nick for nick, _, _ in ARGUMENTS[name].choices]


@pytest.mark.parametrize(
    "name, enum, cli_enum",
    [("preset", Preset, "PresetArg"), ("sampler", Sampler, "SamplerArg")],
)
def test_each_choice_maps_to_its_enum(name, enum, cli_enum):
    nicks = _choice_nicks(name)
    mapped = [core.job_params({**DEFAULTS, name: nick})[name] for nick in nicks]
    # One choice per member, in the enum's order.
    assert mapped == list(enum)
    assert all(type(member) is enum for member in mapped)
    # The nicks are the CLI's values (clap's kebab-case names).
    text = (REPO / "daemon" / "src" / "cli" / "params.rs").read_text()
    block = text[text.index(f"pub enum {cli_enum}") :]
    block = block[: block.index("}")]
    block = "\n".join(line for line in block.splitlines() if not line.strip().startswith("//"))
    cli = []
    for explicit, variant in re.findall(r'(?:#\[value\(name = "([^"]+)"\)\]\s*)?(\w+),', block):
        cli.append(explicit or re.sub(r"(?<!^)(?=[A-Z])", "-", variant).lower())
    assert nicks == cli
    with pytest.raises(core.InvalidArgument, match=f"{name} must be one of"):
        core.job_params({**DEFAULTS, name: "nope"})


def _daemon_ranges():
    """The ranges ``daemon/src/pipeline/clarity/params.rs`` checks, by field: the
    ``limits`` it names, as ``shared/src/params.rs`` defines them."""
    text = (REPO / "daemon" / "src" / "pipeline" / "clarity" / "params.rs").read_text()
    shared = (REPO / "shared" / "src" / "params.rs").read_text()
    limits = {
        name: (float(low), float(high))
        for name, low, high in re.findall(
            r"pub const (\w+): RangeInclusive<\w+> = (-?[\d.]+)\.\.=(-?[\d.]+);", shared
        )
    }
    found = {
        field: limits[name]
        for field, name in re.findall(
            r'range\(\s*"(\w+)",\s*params\.\w+,\s*limits::(\w+),?\s*\)', text
        )
    }
    assert re.search(r"!limits::TILE\.contains\(&tile\) \|\| tile % multiple != 0", text)
    found["tile_width"] = found["tile_height"] = limits["TILE"]
    assert re.search(r"!limits::STEPS\.contains\(&params\.steps\)", text)
    found["steps"] = limits["STEPS"]
    multiple = re.search(r"pub const TILE_MULTIPLE: u32 = (\d+);", shared)
    return found, int(multiple[1])


def test_ranges_are_the_daemons():
    ranges, tile_multiple = _daemon_ranges()
    assert sorted(ranges) == sorted(
        [
            "creativity",
            "resemblance",
            "dynamic",
            "decay",
            "multistep_factor",
            "sharpen",
            "tile_width",
            "tile_height",
            "steps",
        ]
    )
    for field, (low, high) in ranges.items():
        argument = next(a for a in core.ARGUMENTS if a.job_field == field)
        assert (argument.minimum, argument.maximum) == (low, high), field
    assert tile_multiple == 8
    # The seed is a u64 on the wire; GIMP's integers stop at 2³¹ − 1.
    assert (ARGUMENTS["seed"].minimum, ARGUMENTS["seed"].maximum) == (0, 2**31 - 1)
    assert (ARGUMENTS["scale"].minimum, ARGUMENTS["scale"].maximum) == (1.0, 16.0)


@pytest.mark.parametrize("name", ["tile-width", "tile-height"])
def test_tiles_must_be_multiples_of_8(name):
    assert core.job_params({**DEFAULTS, name: 64})[name.replace("-", "_")] == 64
    with pytest.raises(core.InvalidArgument) as caught:
        core.job_params({**DEFAULTS, name: 100})
    assert str(caught.value) == f"{name} must be a multiple of 8 between 16 and 256 (got 100)"
    assert core.error_text(caught.value) == (
        f"Tessera could not upscale: {name} must be a multiple of 8 between 16 and 256 (got 100)"
    )


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"scale": 3, "upscaler": "4x-UltraSharp", "output": "new-image"}, (3.0, "4x-UltraSharp")),
        ({"scale": 1.5, "upscaler": "  ", "output": "new-layer"}, (1.5, None)),
        ({"scale": 16.0, "upscaler": None, "output": "new-layer"}, (16.0, None)),
    ],
)
def test_job_params_from_values(values, expected):
    params = core.job_params({**DEFAULTS, **values})
    assert (params["scale"], params["upscaler"]) == expected
    assert isinstance(params["scale"], float)


def test_every_value_reaches_its_field():
    values = {
        **DEFAULTS,
        "preset": "refiners",
        "creativity": 0.5,
        "resemblance": 1.25,
        "dynamic": 7.5,
        "tile-width": 64,
        "tile-height": 96,
        "steps": 30,
        "seed": 42,
        "prompt": "a cat, <lora:x:0.5>",
        "negative-prompt": None,
        "sampler": "ddim",
        "decay": 0.9,
        "multistep-factor": 1.5,
        "checkpoint": " mine ",
        "vae": "",
        "controlnet": "tile",
        "sharpen": 2.0,
    }
    assert JobParams(**core.job_params(values)) == JobParams(
        preset=Preset.REFINERS,
        creativity=0.5,
        resemblance=1.25,
        dynamic=7.5,
        tile_width=64,
        tile_height=96,
        steps=30,
        seed=42,
        prompt="a cat, <lora:x:0.5>",
        negative_prompt="",
        sampler=Sampler.DDIM,
        decay=0.9,
        multistep_factor=1.5,
        checkpoint="mine",
        controlnet="tile",
        sharpen=2.0,
    )


# --- Pixel layouts ------------------------------------------------------------


@pytest.mark.parametrize(
    "precision, base, alpha, expected",
    [
        ("u8-non-linear", "rgb", True, ("R'G'B'A u8", Channels.RGBA, SampleFormat.U8, "SRGB")),
        ("u8-perceptual", "rgb", False, ("R~G~B~ u8", Channels.RGB, SampleFormat.U8, "SRGB")),
        ("u8-linear", "gray", True, ("YA u8", Channels.GRAY_ALPHA, SampleFormat.U8, "LINEAR")),
        ("u16-non-linear", "gray", False, ("Y' u16", Channels.GRAY, SampleFormat.U16, "SRGB")),
        ("u16-linear", "rgb", True, ("RGBA u16", Channels.RGBA, SampleFormat.U16, "LINEAR")),
        ("u32-linear", "rgb", True, ("RGBA float", Channels.RGBA, SampleFormat.F32, "LINEAR")),
        ("half-non-linear", "rgb", True, ("R'G'B'A half", Channels.RGBA, SampleFormat.F16, "SRGB")),
        ("float-linear", "rgb", False, ("RGB float", Channels.RGB, SampleFormat.F32, "LINEAR")),
        (
            "double-perceptual",
            "gray",
            True,
            ("Y~A float", Channels.GRAY_ALPHA, SampleFormat.F32, "SRGB"),
        ),
    ],
)
def test_layout_for_each_precision(precision, base, alpha, expected):
    babl, channels, sample, transfer = expected
    assert core.layout_for(precision, base, alpha) == (
        babl,
        channels,
        sample,
        Transfer[transfer],
    )


def test_indexed_and_unknown_precisions_are_refused_in_words():
    with pytest.raises(core.UnsupportedImage, match="RGB and grayscale.*Image ▸ Mode"):
        core.layout_for("u8-non-linear", "indexed", False)
    with pytest.raises(core.UnsupportedImage, match="u64-linear"):
        core.layout_for("u64-linear", "rgb", True)


# --- Finding the program --------------------------------------------------------


def _program(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_tessera_bin_wins(tmp_path):
    program = _program(tmp_path / "my-tessera")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    _program(on_path / "tessera")
    env = {"TESSERA_BIN": str(program), "PATH": str(on_path), "HOME": str(tmp_path)}
    assert core.find_tessera(env) == str(program)


def test_tessera_on_path_then_home_folders(tmp_path):
    on_path = tmp_path / "bin"
    on_path.mkdir()
    env = {"PATH": str(on_path), "HOME": str(tmp_path)}
    cargo = tmp_path / ".cargo" / "bin"
    cargo.mkdir(parents=True)
    _program(cargo / "tessera")
    assert core.find_tessera(env) == str(cargo / "tessera")
    _program(on_path / "tessera")
    assert core.find_tessera(env) == str(on_path / "tessera")


def test_missing_program_says_where_it_looked(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    (tmp_path / "tessera").write_text("not executable")
    with pytest.raises(core.TesseraMissing) as caught:
        core.find_tessera(env)
    message = str(caught.value)
    assert message.startswith("Tessera is not running, and its program `tessera` was not found")
    assert str(tmp_path / ".local" / "bin") in message
    assert "set TESSERA_BIN" in message


def test_wrong_tessera_bin_is_named(tmp_path):
    env = {"TESSERA_BIN": str(tmp_path / "nope"), "PATH": "", "HOME": str(tmp_path)}
    with pytest.raises(core.TesseraMissing, match="TESSERA_BIN is set to .*nope"):
        core.find_tessera(env)


# --- Starting the daemon ------------------------------------------------------


@pytest.fixture
def daemon_env(tmp_path):
    data = tmp_path / "data"
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "TESSERA_DATA_DIR": str(data),
        "TESSERA_SOCKET": str(tmp_path / "t.sock"),
    }


def _fake_tessera(tmp_path: Path) -> Path:
    """A ``tessera`` program whose ``serve`` runs the stand-in daemon and
    writes its process id next to it."""
    paths = [str(REPO / "shared" / "python"), str(Path(__file__).parent)]
    return _program(
        tmp_path / "tessera",
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        f"sys.path[:0] = {paths!r}\n"
        "from gimp_fake_daemon import FakeDaemon\n"
        "assert sys.argv[1:] == ['serve'], sys.argv\n"
        "time.sleep(0.3)  # a daemon takes a moment to listen\n"
        "FakeDaemon(os.environ['TESSERA_SOCKET'])\n"
        f"open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n",
    )


def test_connect_or_start_starts_a_detached_daemon(tmp_path, daemon_env):
    daemon_env["TESSERA_BIN"] = str(_fake_tessera(tmp_path))
    started, spawned = [], []
    client = core.connect_or_start(daemon_env, on_start=started.append, on_spawn=spawned.append)
    try:
        assert started == [daemon_env["TESSERA_BIN"]]
        assert client.daemon_agent == "fake-tessera 0"
        assert [m.name for m in client.list_models()] == ["fake-x2", "fake-sharp"]
        pid = int((tmp_path / "pid").read_text())
        assert spawned == [pid]
        # Its own session: GIMP killing the plug-in does not reach it.
        assert os.getsid(pid) == pid != os.getsid(0)
        # Once running, it is reused: the program is not needed any more.
        daemon_env["TESSERA_BIN"] = str(tmp_path / "gone")
        started.clear()
        core.connect_or_start(daemon_env, on_start=started.append).close()
        assert started == []
    finally:
        client.close()
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
    assert (tmp_path / "data" / "logs" / "daemon-start.log").is_file()


def test_a_daemon_that_cannot_start_is_explained(tmp_path, daemon_env):
    daemon_env["TESSERA_BIN"] = str(
        _program(
            tmp_path / "tessera",
            "#!/bin/sh\necho 'tessera: cannot load the ONNX Runtime library' >&2\nexit 1\n",
        )
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError) as caught:
        core.connect_or_start(daemon_env)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(
        "Tessera's service could not start: cannot load the ONNX Runtime library"
    )
    assert "daemon-start.log" in message


def test_a_daemon_that_never_listens_times_out(tmp_path, daemon_env):
    pid_file = tmp_path / "pid"
    program = _program(tmp_path / "tessera", f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 30\n")
    try:
        with pytest.raises(RuntimeError, match="did not answer on .* within 1 s"):
            core.start_daemon(str(program), daemon_env, timeout=1.0)
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


# --- Words ----------------------------------------------------------------------


def test_a_warning_reads_as_a_tessera_message():
    assert (
        core.warning_text("CUDA is not used: no device") == "Tessera: CUDA is not used: no device"
    )


def test_progress_text():
    one = Progress(1, 0, 1, "upscale", 1, 1, 3, 12, 0.2)
    assert core.progress_text(one) == "Tessera: upscale, tile 3 of 12"
    many = Progress(1, 1, 2, "denoise", 4, 7, 2, 6, 0.7)
    assert core.progress_text(many) == "Tessera: stage 2 of 2, denoise, step 4 of 7, tile 2 of 6"
    timed = Progress(1, 0, 1, "denoise", 4, 7, 1, 1, 0.5, eta_seconds=200.4)
    assert core.progress_text(timed) == "Tessera: denoise, step 4 of 7, about 3 min 20 s left"


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            TesseraError(ErrorKind.MODEL_NOT_FOUND, "there is no upscaler named “x”; available: a"),
            "Tessera could not upscale: there is no upscaler named “x”; available: a.",
        ),
        (
            TesseraError(ErrorKind.IMAGE_TOO_LARGE, "the output would be too large."),
            "Tessera could not upscale: the output would be too large.",
        ),
        (
            ConnectionClosed("gone"),
            "The connection to Tessera broke before the result arrived; "
            "its service may have stopped (gone).",
        ),
        (
            DaemonNotRunning("/run/t.sock"),
            "Tessera is not running and could not be reached: the Tessera daemon is not "
            "running (nothing listens at /run/t.sock); start it with `tessera serve`.",
        ),
        (TimeoutError("no answer"), "Tessera did not answer in time: no answer."),
        (RuntimeError("it broke"), "Tessera could not upscale: it broke"),
        (KeyError("x"), "Tessera failed unexpectedly: KeyError('x')"),
    ],
)
def test_error_text(error, expected):
    assert core.error_text(error) == expected


# --- Installing -------------------------------------------------------------------


def test_default_plug_ins_folders():
    install = _load_installer()
    linux = install.default_dest({"HOME": "/home/u"}, "linux")
    assert linux == "/home/u/.config/GIMP/3.0/plug-ins"
    xdg = install.default_dest({"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"}, "linux")
    assert xdg == "/cfg/GIMP/3.0/plug-ins"
    mac = install.default_dest({"HOME": "/Users/u"}, "darwin")
    assert mac == "/Users/u/Library/Application Support/GIMP/3.0/plug-ins"
    windows = install.default_dest({"HOME": "C:/u", "APPDATA": "C:/u/AppData/Roaming"}, "win32")
    assert windows.replace("\\", "/") == "C:/u/AppData/Roaming/GIMP/3.0/plug-ins"


def test_install_puts_an_executable_plug_in_with_its_client(tmp_path):
    install = _load_installer()
    target = Path(install.install(str(tmp_path)))
    assert target == tmp_path / "tessera-upscale"
    script = target / "tessera-upscale.py"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    assert (target / "tessera_gimp.py").is_file()
    client = REPO / "shared" / "python" / "tessera_client"
    installed = sorted(p.name for p in (target / "tessera_client").glob("*.py"))
    assert installed == sorted(p.name for p in client.glob("*.py"))
    # Again: the old copy is replaced, nothing else is left behind.
    (target / "stale.py").write_text("")
    install.install(str(tmp_path))
    assert not (target / "stale.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tessera-upscale"]


# --- Where the result goes ------------------------------------------------------


def test_the_output_choices():
    (output,) = [a for a in core.ARGUMENTS if a.name == "output"]
    assert [nick for nick, _, _ in output.choices] == [
        "auto", "new-layer", "scale-image", "new-image",
    ]  # fmt: skip
    assert output.default == "auto"


@pytest.mark.parametrize(
    "output, region, result, expected",
    [
        # Fits: a new layer at the selection's corner, the image as it is.
        ("auto", (10, 12, 16, 10), (32, 20), (False, (64, 48, 10, 12))),
        ("new-layer", (10, 12, 16, 10), (32, 20), (False, (64, 48, 10, 12))),
        # Would reach past the canvas: the image is scaled by the result's factor.
        ("auto", (3, 4, 40, 30), (80, 60), (True, (128, 96, 6, 8))),
        ("new-layer", (3, 4, 40, 30), (80, 60), (False, (64, 48, 3, 4))),
        # Always scaled; factors per axis, as the result has them (×3 and a
        # result the daemon rounded to a multiple of 8).
        ("scale-image", (10, 12, 16, 10), (48, 30), (True, (192, 144, 30, 36))),
        ("scale-image", (5, 7, 21, 13), (48, 32), (True, (146, 118, 11, 17))),
        # A layer hanging off the canvas's top-left corner does not fit either.
        ("auto", (-2, 0, 8, 8), (16, 16), (True, (128, 96, -4, 0))),
    ],
)
def test_where_the_result_goes(output, region, result, expected):
    scales, place = core.place_result(output, (64, 48), region, result)
    assert (scales, tuple(place)) == expected


def test_a_new_image_is_not_placed_in_the_image():
    with pytest.raises(core.InvalidArgument):
        core.place_result("new-image", (64, 48), (0, 0, 8, 8), (16, 16))


# --- Installed models -------------------------------------------------------------


def test_with_no_daemon_the_models_come_from_the_folder(tmp_path):
    data = tmp_path / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    (data / "models" / "checkpoints" / "juggernaut.safetensors").write_bytes(b"x")
    (data / "models" / "upscalers").mkdir(parents=True)
    (data / "models" / "upscalers" / "RealESRGAN_x4plus.pth").write_bytes(b"x")
    env = {"TESSERA_DATA_DIR": str(data), "TESSERA_SOCKET": str(tmp_path / "none.sock")}
    models, source = core.installed_models(env)
    assert source == core.FROM_FOLDER
    assert core.model_names(models, ModelKind.CHECKPOINT) == ["juggernaut"]
    assert core.model_names(models, ModelKind.UPSCALER) == ["RealESRGAN_x4plus"]
    assert core.model_names(models, ModelKind.VAE) == []
    hint = core.models_hint(models, source, str(data / "models"))
    assert hint.startswith("Tessera is not running") and str(data / "models") in hint


def test_with_a_daemon_the_models_are_its_list(tmp_path, daemon_env):
    from gimp_fake_daemon import FAKE_UPSCALERS, FakeDaemon

    fake = FakeDaemon(daemon_env["TESSERA_SOCKET"])
    try:
        models, source = core.installed_models(daemon_env)
    finally:
        fake.close()
    assert source == core.FROM_DAEMON
    assert core.model_names(models, ModelKind.UPSCALER) == sorted(FAKE_UPSCALERS)
    assert "installed" in core.models_hint(models, source)


def test_with_no_models_at_all_the_hint_is_the_install_command(tmp_path):
    env = {"TESSERA_DATA_DIR": str(tmp_path), "TESSERA_SOCKET": str(tmp_path / "none.sock")}
    models, source = core.installed_models(env)
    assert models == []
    assert core.models_hint(models, source) == core.FIRST_RUN_HINT
    assert "tessera-install" in core.FIRST_RUN_HINT
