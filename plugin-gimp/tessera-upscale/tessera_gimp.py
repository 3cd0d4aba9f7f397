"""The parts of the GIMP plug-in that do not need GIMP: the procedure's
arguments and how they become job parameters, the pixel layout sent for each
GIMP precision, where the result goes, finding and starting the daemon, the
models on offer, and the words shown to the user; finding and starting the
daemon are ``tessera_client.launcher``'s rules, worded here for GIMP. ``tessera-upscale.py``
(the plug-in proper) glues them to GIMP's API.

Standard library only, Python 3.8+, like ``tessera_client``.
"""

import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from tessera_client import (
    Channels,
    Client,
    ConnectionClosed,
    DaemonNotRunning,
    JobParams,
    ModelEntry,
    ModelKind,
    Preset,
    Progress,
    SampleFormat,
    Sampler,
    TesseraError,
    Transfer,
    data_dir,
    launcher,
    list_installed,
    params_table,
    socket_address,
)

__version__ = "0.1.0"
AGENT = f"gimp-plugin {__version__}"

PROCEDURE_NAME = "plug-in-tessera-upscale"
MENU_LABEL = "Tessera _Upscale…"
MENU_PATH = "<Image>/Filters/Enhance"

# --- The procedure's arguments ------------------------------------------------


class Argument(NamedTuple):
    """One argument of the procedure: how GIMP shows and checks it, and which
    job parameter (a field of ``tessera_client.JobParams``) it sets.

    Adding a job parameter (when the protocol grows one) is one more entry in
    :data:`ARGUMENTS`; arguments that are not job parameters (``job_field``
    ``None``) steer the plug-in itself.
    """

    name: str
    #: "double", "int", "string" or "choice".
    kind: str
    nick: str
    blurb: str
    default: Any
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    #: For "choice": (nick, label, help) of each choice, in order.
    choices: Tuple[Tuple[str, str, str], ...] = ()
    #: The ``JobParams`` field this argument sets.
    job_field: Optional[str] = None
    #: Turns the GIMP value into the job parameter's value.
    to_job: Callable[[Any], Any] = lambda value: value


class InvalidArgument(ValueError):
    """A value that GIMP's ranges let through but the daemon refuses; ``str()``
    is a sentence for the user."""


def _model_name(value: Any) -> Optional[str]:
    text = (value or "").strip()
    return text or None


def _text(value: Any) -> str:
    return value or ""


def _tile(name: str) -> Callable[[Any], int]:
    """A diffusion tile side, in latents: the daemon takes multiples of 8 only."""

    def to_job(value: Any) -> int:
        tile = int(value)
        if tile % 8 != 0:
            raise InvalidArgument(
                f"{name} must be a multiple of 8 between {TILE_MIN} and {TILE_MAX} (got {tile})"
            )
        return tile

    return to_job


def _choice(name: str, by_nick: Mapping[str, Any]) -> Callable[[Any], Any]:
    def to_job(nick: Any) -> Any:
        try:
            return by_nick[nick]
        except KeyError:
            raise InvalidArgument(
                f"{name} must be one of {', '.join(by_nick)} (got {nick!r})"
            ) from None

    return to_job


#: The preset choice's nicks (the CLI's ``--preset`` values).
PRESETS: Dict[str, Preset] = {
    "clarity": Preset.CLARITY,
    "refiners": Preset.REFINERS,
    "upscaler": Preset.UPSCALER,
}
#: The sampler choice's nicks (the CLI's ``--sampler`` values).
SAMPLERS: Dict[str, Sampler] = {
    "dpmpp-3m-sde-karras": Sampler.DPMPP_3M_SDE_KARRAS,
    "dpmpp-2m-karras": Sampler.DPMPP_2M_KARRAS,
    "dpmpp-2m": Sampler.DPMPP_2M,
    "ddim": Sampler.DDIM,
}


def _nick(by_nick: Mapping[str, Any], value: Any) -> str:
    return next(nick for nick, member in by_nick.items() if member == value)


#: Where the result goes (the ``output`` choice's nicks).
OUTPUT_AUTO = "auto"
OUTPUT_NEW_LAYER = "new-layer"
OUTPUT_SCALE_IMAGE = "scale-image"
OUTPUT_NEW_IMAGE = "new-image"

#: The daemon's ranges (``tessera_client.params_table``, written by the Rust crate).
_RANGES = params_table.RANGES
#: The daemon's diffusion tile sides, in latents (multiples of 8).
TILE_MIN, TILE_MAX = _RANGES["tile_width"]
#: The largest seed a GIMP integer argument holds; the protocol takes any u64.
#: (An unsigned argument would reach 2³² − 1, but GIMP 3.0's procedure dialog
#: has no widget for one.)
SEED_MAX = 2**31 - 1

#: Every default is ``JobParams()``'s: Clarity's.
_DEFAULTS = JobParams()

#: In registration order: new arguments go last, so that scripts passing them
#: by position keep working. The ranges are the daemon's (:data:`_RANGES`).
ARGUMENTS: Tuple[Argument, ...] = (
    Argument(
        "scale",
        "double",
        "Sc_ale",
        "How many times larger the result is per side (1 to 16): above ×2 the detail is "
        "invented anew in each ×2 stage, sharper but further from the original",
        _DEFAULTS.scale,
        minimum=_RANGES["scale"][0],
        maximum=_RANGES["scale"][1],
        job_field="scale",
        to_job=float,
    ),
    Argument(
        "upscaler",
        "string",
        "_Upscaler model",
        "An upscaler in Tessera's models/upscalers/ folder, by name; empty: Tessera's default",
        "",
        job_field="upscaler",
        to_job=_model_name,
    ),
    Argument(
        "output",
        "choice",
        "Ou_tput",
        "Where the result goes: a new layer above the source, with the image scaled to fit "
        "it when it would reach past the canvas (automatic), always or never; or a new image",
        OUTPUT_AUTO,
        choices=(
            (
                OUTPUT_AUTO,
                "New layer; scale the image if it would not fit",
                "A new layer above the source at the selection's position; when the result "
                "would reach past the canvas, the image is first scaled by the same factor",
            ),
            (
                OUTPUT_NEW_LAYER,
                "New layer, image unchanged",
                "At the selection's position, even where it reaches past the canvas",
            ),
            (
                OUTPUT_SCALE_IMAGE,
                "Scale the image, then a new layer",
                "The image and all its layers scaled by the result's factor, the new layer "
                "where the selection is then; one undo step",
            ),
            (OUTPUT_NEW_IMAGE, "New image", "In a new image of the same precision"),
        ),
    ),
    Argument(
        "preset",
        "choice",
        "_Preset",
        "Which pipeline runs: Clarity and Refiners repaint detail with Stable Diffusion "
        "(more quality), the upscaler alone only enlarges (most faithful, and needs no "
        "Stable Diffusion model)",
        _nick(PRESETS, _DEFAULTS.preset),
        choices=(
            ("clarity", "Clarity", "The Clarity upscaler: ×2 diffusion stages by its rules"),
            ("refiners", "Refiners", "The Refiners library's MultiUpscaler: one diffusion pass"),
            ("upscaler", "Upscaler alone", "ESRGAN only: no diffusion, no Stable Diffusion model"),
        ),
        job_field="preset",
        to_job=_choice("preset", PRESETS),
    ),
    Argument(
        "creativity",
        "double",
        "Creat_ivity",
        "How much the diffusion may repaint (0 to 1): more invents more detail but strays "
        "further from the original; at 0 the Clarity preset only re-encodes (the Upscaler "
        "preset skips the diffusion)",
        _DEFAULTS.creativity,
        minimum=_RANGES["creativity"][0],
        maximum=_RANGES["creativity"][1],
        job_field="creativity",
        to_job=float,
    ),
    Argument(
        "resemblance",
        "double",
        "Resem_blance",
        "How strongly the ControlNet holds the result to the original (0 to 3): more keeps "
        "the original's shapes and colours, less lets the model add detail that was never there",
        _DEFAULTS.resemblance,
        minimum=_RANGES["resemblance"][0],
        maximum=_RANGES["resemblance"][1],
        job_field="resemblance",
        to_job=float,
    ),
    Argument(
        "dynamic",
        "double",
        "D_ynamic",
        "How hard the model follows the prompt (guidance scale, 1 to 50): more gives contrast "
        "and punch but can burn colours, less is softer and more faithful",
        _DEFAULTS.dynamic,
        minimum=_RANGES["dynamic"][0],
        maximum=_RANGES["dynamic"][1],
        job_field="dynamic",
        to_job=float,
    ),
    Argument(
        "tile-width",
        "int",
        "Tile _width",
        "Width of the diffusion tiles in latents of 8 pixels (16 to 256, a multiple of 8; "
        "with the height, Clarity's fractality): smaller tiles add finer, busier detail, "
        "larger ones keep the whole coherent",
        _DEFAULTS.tile_width,
        minimum=TILE_MIN,
        maximum=TILE_MAX,
        job_field="tile_width",
        to_job=_tile("tile-width"),
    ),
    Argument(
        "tile-height",
        "int",
        "Tile hei_ght",
        "Height of the diffusion tiles in latents of 8 pixels (16 to 256, a multiple of 8): "
        "smaller tiles add finer, busier detail, larger ones keep the whole coherent",
        _DEFAULTS.tile_height,
        minimum=TILE_MIN,
        maximum=TILE_MAX,
        job_field="tile_height",
        to_job=_tile("tile-height"),
    ),
    Argument(
        "steps",
        "int",
        "St_eps",
        "Sampler steps of a full denoise (1 to 100), of which about creativity × steps run: "
        "more refine the detail a little further but take longer",
        _DEFAULTS.steps,
        minimum=_RANGES["steps"][0],
        maximum=_RANGES["steps"][1],
        job_field="steps",
        to_job=int,
    ),
    Argument(
        "seed",
        "int",
        "See_d",
        "The noise seed: the same seed and settings give the same result, another seed "
        "another take on the invented detail",
        _DEFAULTS.seed,
        minimum=0,
        maximum=SEED_MAX,
        job_field="seed",
        to_job=int,
    ),
    Argument(
        "prompt",
        "string",
        "Pro_mpt",
        "What the invented detail should look like, in A1111 syntax with <lora:name:weight> "
        "tags: quality words steer the texture, describing the image keeps it on subject",
        _DEFAULTS.prompt,
        job_field="prompt",
        to_job=_text,
    ),
    Argument(
        "negative-prompt",
        "string",
        "_Negative prompt",
        "What the invented detail should avoid, in the same syntax: naming flaws such as blur "
        "or artefacts keeps them out, at the cost of steering the model less by the prompt",
        _DEFAULTS.negative_prompt,
        job_field="negative_prompt",
        to_job=_text,
    ),
    Argument(
        "sampler",
        "choice",
        "Sampler",
        "The diffusion sampler: Clarity's SDE sampler adds fresh noise at each step for more "
        "texture, the others follow a smoother path",
        _nick(SAMPLERS, _DEFAULTS.sampler),
        choices=(
            ("dpmpp-3m-sde-karras", "DPM++ 3M SDE Karras", "Clarity's default"),
            ("dpmpp-2m-karras", "DPM++ 2M Karras", "A1111's DPM++ 2M Karras"),
            ("dpmpp-2m", "DPM-Solver++ 2M", "On linear timesteps, the Refiners library's default"),
            ("ddim", "DDIM", "The Refiners Space's default"),
        ),
        job_field="sampler",
        to_job=_choice("sampler", SAMPLERS),
    ),
    Argument(
        "decay",
        "double",
        "Decay",
        "How much of the ControlNet's hold reaches its fine, high-resolution blocks (0 to 1): "
        "more keeps fine detail truer to the original, less leaves fine texture to the model",
        _DEFAULTS.decay,
        minimum=_RANGES["decay"][0],
        maximum=_RANGES["decay"][1],
        job_field="decay",
        to_job=float,
    ),
    Argument(
        "multistep-factor",
        "double",
        "Multistep _factor",
        "Creativity multiplier for each ×2 stage after the first (0 to 2): less keeps the later "
        "stages faithful, more lets them invent as much as the first",
        _DEFAULTS.multistep_factor,
        minimum=_RANGES["multistep_factor"][0],
        maximum=_RANGES["multistep_factor"][1],
        job_field="multistep_factor",
        to_job=float,
    ),
    Argument(
        "checkpoint",
        "string",
        "Chec_kpoint",
        "A Stable Diffusion 1.5 model in Tessera's models/checkpoints/ folder, by name, whose "
        "style shows in the invented detail; empty: Tessera's default",
        "",
        job_field="checkpoint",
        to_job=_model_name,
    ),
    Argument(
        "vae",
        "string",
        "_VAE",
        "A VAE in Tessera's models/vae/ folder, by name, which turns the diffusion's latents "
        "back into pixels; empty: Tessera's default",
        "",
        job_field="vae",
        to_job=_model_name,
    ),
    Argument(
        "controlnet",
        "string",
        "ControlNet",
        "A tile ControlNet in Tessera's models/controlnet/ folder, by name, which holds the "
        "result to the original; empty: Tessera's default",
        "",
        job_field="controlnet",
        to_job=_model_name,
    ),
    Argument(
        "sharpen",
        "double",
        "Sharpen",
        "Sharpening of the result (0 to 10): more looks crisper but can add halos; 0 is off",
        _DEFAULTS.sharpen,
        minimum=_RANGES["sharpen"][0],
        maximum=_RANGES["sharpen"][1],
        job_field="sharpen",
        to_job=float,
    ),
)

#: The dialog: these arguments at the top, the rest in its Advanced section.
DIALOG_MAIN: Tuple[str, ...] = (
    "scale",
    "preset",
    "creativity",
    "resemblance",
    "prompt",
    "upscaler",
    "output",
)
DIALOG_ADVANCED: Tuple[str, ...] = (
    "dynamic",
    "tile-width",
    "tile-height",
    "steps",
    "seed",
    "negative-prompt",
    "sampler",
    "decay",
    "multistep-factor",
    "checkpoint",
    "vae",
    "controlnet",
    "sharpen",
)

#: What the upscaler-only preset ignores: greyed out in the dialog while it is chosen.
DIFFUSION_ONLY: Tuple[str, ...] = ("creativity", "resemblance", "prompt") + DIALOG_ADVANCED

#: Arguments edited as several lines of text in the dialog.
MULTI_LINE: Tuple[str, ...] = ("prompt", "negative-prompt")
#: Arguments that name a model, and which kind: the dialog lists the installed ones.
MODEL_ARGUMENTS: Dict[str, ModelKind] = {
    "upscaler": ModelKind.UPSCALER,
    "checkpoint": ModelKind.CHECKPOINT,
    "vae": ModelKind.VAE,
    "controlnet": ModelKind.CONTROL_NET,
}
#: The mnemonics of the buttons of GIMP's procedure dialog (OK, Cancel, Reset,
#: Load Saved Settings, Save Settings, Help), which no argument may take. The
#: arguments' names have only 16 other letters for 20 arguments: four
#: advanced ones go without.
DIALOG_BUTTON_MNEMONICS = frozenset("ocrlsh")


def mnemonic(nick: str) -> Optional[str]:
    """The Alt-letter of a label such as ``"Sc_ale"`` (lower case), if any."""
    index = nick.find("_")
    return nick[index + 1].lower() if 0 <= index < len(nick) - 1 else None


def job_params(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The job parameters (a mapping of ``JobParams`` fields) for the
    arguments' ``values``; raises :class:`InvalidArgument` for a value the
    daemon would refuse that GIMP's ranges let through."""
    params = {}
    for argument in ARGUMENTS:
        if argument.job_field is not None:
            params[argument.job_field] = argument.to_job(values[argument.name])
    return params


# --- Where the result goes ------------------------------------------------------


class Placement(NamedTuple):
    """Where a new layer with the result goes: the image's size (scaled first
    when it differs from the current one) and the layer's offset, in image
    coordinates."""

    image_width: int
    image_height: int
    x: int
    y: int


def place_result(
    output: str,
    image_size: Tuple[int, int],
    region: Tuple[int, int, int, int],
    result_size: Tuple[int, int],
) -> Tuple[bool, Placement]:
    """Where the ``result_size`` upscale of ``region`` (x, y, width, height in
    image coordinates) goes, for the ``output`` choice: at the region's
    corner in the image as it is, or — for ``scale-image``, and for ``auto``
    when the result would reach past the canvas — in the image scaled by the
    factor the result has on each axis, at the region's corner scaled alike.
    Returns (whether the image is scaled, the placement)."""
    width, height = image_size
    x, y, region_width, region_height = region
    result_width, result_height = result_size
    fits = x >= 0 and y >= 0 and x + result_width <= width and y + result_height <= height
    if output == OUTPUT_NEW_LAYER or (output == OUTPUT_AUTO and fits):
        return False, Placement(width, height, x, y)
    if output not in (OUTPUT_AUTO, OUTPUT_SCALE_IMAGE):
        raise InvalidArgument(f"output {output!r} does not place a layer in the image")
    fx = result_width / region_width
    fy = result_height / region_height
    return True, Placement(
        max(1, int(round(width * fx))),
        max(1, int(round(height * fy))),
        int(round(x * fx)),
        int(round(y * fy)),
    )


# --- Pixels -------------------------------------------------------------------


class Layout(NamedTuple):
    """How the plug-in reads a drawable's pixels and describes them to the
    daemon: the babl format name for the Gegl buffer, and the protocol's
    ``Channels``, ``SampleFormat`` and ``Transfer``. The result comes back in
    the same layout and is written with the same babl format."""

    babl: str
    channels: Channels
    sample: SampleFormat
    transfer: Transfer


#: GIMP's component type (the first word of its precision's nick) → the babl
#: type name and the protocol's sample format. The protocol has no 32-bit
#: integer or 64-bit float samples: those travel as 32-bit floats, and GIMP
#: stores the result back in the image's own precision.
_COMPONENTS = {
    "u8": ("u8", SampleFormat.U8),
    "u16": ("u16", SampleFormat.U16),
    "u32": ("float", SampleFormat.F32),
    "half": ("half", SampleFormat.F16),
    "float": ("float", SampleFormat.F32),
    "double": ("float", SampleFormat.F32),
}

#: GIMP's tone response (the rest of the precision's nick) → the babl model
#: prefix marker and the protocol's transfer. "Perceptual" is babl's ``~``
#: (the sRGB curve whatever the profile), "non-linear" its ``'`` (the curve
#: of the image's profile, the sRGB curve for GIMP's built-in profile).
_TRCS = {
    "linear": ("", Transfer.LINEAR),
    "non-linear": ("'", Transfer.SRGB),
    "perceptual": ("~", Transfer.SRGB),
}


class UnsupportedImage(Exception):
    """An image the plug-in cannot send (indexed colours)."""


def layout_for(precision_nick: str, base_type_nick: str, has_alpha: bool) -> Layout:
    """The layout for a drawable of an image with GIMP precision
    ``precision_nick`` (e.g. ``"u16-non-linear"``, ``Gimp.Precision``'s
    ``value_nick``) and base type ``base_type_nick`` (``"rgb"``, ``"gray"``).

    The pixels are read in babl's sRGB space (GIMP converts from the image's
    profile, which for GIMP's built-in profiles changes nothing), so the
    transfer told to the daemon is true whatever the profile.
    """
    component, _, trc = precision_nick.partition("-")
    if component not in _COMPONENTS or trc not in _TRCS:
        raise UnsupportedImage(f"GIMP precision {precision_nick!r} is not supported")
    babl_type, sample = _COMPONENTS[component]
    mark, transfer = _TRCS[trc]
    if base_type_nick == "rgb":
        model = f"R{mark}G{mark}B{mark}" + ("A" if has_alpha else "")
        channels = Channels.RGBA if has_alpha else Channels.RGB
    elif base_type_nick == "gray":
        model = f"Y{mark}" + ("A" if has_alpha else "")
        channels = Channels.GRAY_ALPHA if has_alpha else Channels.GRAY
    else:
        raise UnsupportedImage(
            "Tessera upscales RGB and grayscale images; convert this "
            f"{base_type_nick} image with Image ▸ Mode first"
        )
    return Layout(f"{model} {babl_type}", channels, sample, transfer)


# --- The daemon ---------------------------------------------------------------

#: Set to the ``tessera`` program to use, when it is not on ``PATH``.
BIN_ENV = launcher.BIN_ENV
#: How long a daemon the plug-in started may take to listen.
START_TIMEOUT = launcher.START_TIMEOUT


class TesseraMissing(Exception):
    """No ``tessera`` program was found to start the daemon with."""


def install_folders(env: Mapping[str, str]) -> List[str]:
    """Folders searched after ``PATH`` (``tessera_client.launcher``'s list)."""
    return launcher.install_folders(env)


def candidate_binaries(env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Where the ``tessera`` program may be, in order: ``$TESSERA_BIN``,
    ``PATH``, then :func:`install_folders`."""
    return launcher.candidates("", env)


def find_tessera(env: Optional[Mapping[str, str]] = None) -> str:
    """The ``tessera`` program; raises :class:`TesseraMissing` with the
    places looked at."""
    try:
        return launcher.find_tessera("", env)
    except launcher.ProgramInvalid as e:
        raise TesseraMissing(str(e)) from None
    except launcher.ProgramNotFound as e:
        raise TesseraMissing(
            "Tessera is not running, and its program `tessera` was not found "
            f"(looked on PATH and in {', '.join(e.looked)}). "
            f"Install Tessera, or set {BIN_ENV} to the path of the `tessera` program."
        ) from None


def connect(agent: str = AGENT, **kwargs: Any) -> Client:
    """Connects to the running daemon (raises ``DaemonNotRunning`` if none)."""
    return Client(agent=agent, **kwargs)


def start_daemon(
    binary: str,
    env: Optional[Mapping[str, str]] = None,
    timeout: float = START_TIMEOUT,
    agent: str = AGENT,
    on_spawn: Optional[Callable[[int], Any]] = None,
) -> Client:
    """Starts ``binary serve`` in the background (it outlives GIMP and this
    plug-in) and returns a connection once it listens. The daemon finds its
    data directory and socket from the same environment as this process.
    Raises ``RuntimeError`` with the daemon's own words if it does not start.
    """
    env = dict(os.environ if env is None else env)
    address = socket_address(env=env)
    try:
        return launcher.start_and_connect(
            binary,
            data_dir(env=env).path,
            lambda: Client(address, agent=agent),
            str(address),
            timeout=timeout,
            env=env,
            on_spawn=on_spawn,
        )
    except launcher.StartFailed as e:
        raise RuntimeError(
            f"Tessera's service could not start: {e.reason} (its output is in {e.log_path})"
        ) from None
    except launcher.StartTimedOut as e:
        raise RuntimeError(
            f"Tessera's service started but did not answer on {address} within "
            f"{timeout:.0f} s (its output is in {e.log_path})"
        ) from None
    except launcher.LaunchError as e:
        raise RuntimeError(str(e)) from None


def connect_or_start(
    env: Optional[Mapping[str, str]] = None,
    on_start: Optional[Callable[[str], Any]] = None,
    on_spawn: Optional[Callable[[int], Any]] = None,
) -> Client:
    """Connects to the daemon, starting it first when none runs. Raises
    :class:`TesseraMissing` when none runs and no ``tessera`` program is
    found. ``on_start`` is called with the program's path before starting,
    ``on_spawn`` with the new process's id."""
    env = os.environ if env is None else env
    try:
        return Client(socket_address(env=env), agent=AGENT)
    except DaemonNotRunning:
        pass
    binary = find_tessera(env)
    if on_start is not None:
        on_start(binary)
    return start_daemon(binary, env, on_spawn=on_spawn)


# --- Installed models ----------------------------------------------------------

#: The one command that installs the default models.
INSTALL_COMMAND = "tessera-install"
FIRST_RUN_HINT = (
    "No models are installed yet. Install the default ones (about 4 GB) with the command "
    f"{INSTALL_COMMAND}, then open this dialog again."
)
FROM_DAEMON = "daemon"
FROM_FOLDER = "folder"


def installed_models(
    env: Optional[Mapping[str, str]] = None,
    connect_timeout: float = 3.0,
    reply_timeout: float = 5.0,
) -> Tuple[List[ModelEntry], str]:
    """The installed models and where the list comes from: the running
    daemon's answer, else (no daemon, or one that does not answer) the data
    directory's ``models/`` folder read by the daemon's rules."""
    env = os.environ if env is None else env
    try:
        with Client(
            socket_address(env=env),
            agent=AGENT,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
        ) as client:
            return client.list_models(), FROM_DAEMON
    except (ConnectionError, OSError, TimeoutError, TesseraError):
        pass
    return list_installed(data_dir(env=env).path), FROM_FOLDER


def model_names(models: List[ModelEntry], kind: ModelKind) -> List[str]:
    """What a model argument of ``kind`` may name, sorted."""
    return sorted({m.name for m in models if int(m.kind) == int(kind)})


def models_hint(models: List[ModelEntry], source: str, folder: str = "") -> str:
    """The line under the model fields: a first-run hint when nothing is
    installed, else where their lists come from."""
    if not models:
        return FIRST_RUN_HINT
    if source == FROM_DAEMON:
        return "The model fields list the models Tessera has installed; empty: its default."
    where = f" in {folder}" if folder else ""
    return (
        f"Tessera is not running; the model fields list the models{where}. "
        "It starts when you press OK."
    )


# --- Words for the user -------------------------------------------------------


def warning_text(warning: str) -> str:
    """A warning of the daemon about a running job, as GIMP shows it."""
    return f"Tessera: {warning}"


def progress_text(progress: Progress) -> str:
    """The status line under GIMP's progress bar, e.g. ``Tessera: upscale,
    tile 3 of 12, about 45 s left`` (with the stage when there are several,
    the time left once the daemon estimates it)."""
    parts = [progress.phase or "working"]
    if progress.stages > 1:
        parts.insert(0, f"stage {progress.stage + 1} of {progress.stages}")
    if progress.steps > 1:
        parts.append(f"step {progress.step} of {progress.steps}")
    if progress.tiles > 1:
        parts.append(f"tile {progress.tile} of {progress.tiles}")
    eta = getattr(progress, "eta_seconds", None)
    if eta is not None:
        parts.append(f"about {duration(eta)} left")
    return "Tessera: " + ", ".join(parts)


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    total = max(0, int(round(seconds)))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {(total % 3600) // 60:02d} min"


def error_text(error: BaseException) -> str:
    """One or two plain sentences for GIMP's error message. The daemon's
    own sentences (which name the installed models when one is missing) are
    passed on as they are."""
    if isinstance(error, TesseraMissing):
        return str(error)
    if isinstance(error, DaemonNotRunning):
        return f"Tessera is not running and could not be reached: {error}."
    if isinstance(error, ConnectionClosed):
        return (
            "The connection to Tessera broke before the result arrived; "
            f"its service may have stopped ({error})."
        )
    if isinstance(error, TesseraError):
        text = error.message.strip() or error.kind_name
        if not text.endswith("."):
            text += "."
        return f"Tessera could not upscale: {text}"
    if isinstance(error, TimeoutError):
        return f"Tessera did not answer in time: {error}."
    if isinstance(error, (RuntimeError, OSError, UnsupportedImage, InvalidArgument)):
        return f"Tessera could not upscale: {error}"
    return f"Tessera failed unexpectedly: {error!r}"
