"""The job parameters: Clarity's names, defaults, ranges and tooltips, and
their mapping onto the protocol's ``JobParams``.

Every parameter the pipelines take is described here once; the defaults and
ranges are the daemon's, from ``tessera_client.params_table`` (which the Rust
crate writes). A
parameter is *offered* — shown in the docker, saved in the settings and sent
— only when the protocol's ``JobParams`` has a field of the same name, so
the docker never shows a control that would do nothing, and works against
an older daemon that takes fewer parameters. A creativity of 0 still runs
Clarity's VAE round trip; the Upscaler preset is ESRGAN alone, and needs no
Stable Diffusion models.

No Qt and no Krita here.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .proto import (
    CLARITY_NEGATIVE_PROMPT,
    CLARITY_PROMPT,
    JobParams,
    ModelKind,
    Preset,
    tessera_client,
)

_DEFAULTS = tessera_client.params_table.DEFAULTS
_RANGES = tessera_client.params_table.RANGES

FLOAT, INT, TEXT, MODEL, CHOICE = "float", "int", "text", "model", "choice"


class Spec(NamedTuple):
    """One parameter."""

    #: The field name in ``JobParams`` (and the settings key).
    key: str
    label: str
    kind: str
    default: Any
    tooltip: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    decimals: int = 2
    #: For :data:`MODEL`: which models the choice lists.
    model_kind: Optional[ModelKind] = None
    #: Shown on the same row as the previous spec with this group label.
    group: str = ""
    #: Placeholder text for an empty :data:`TEXT` or :data:`MODEL`.
    placeholder: str = ""
    #: For :data:`CHOICE`: (setting value, label, protocol value) of each option.
    choices: Tuple[Tuple[str, str, Any], ...] = ()


#: Every parameter, in the order the docker shows them.
SPECS: Tuple[Spec, ...] = (
    Spec(
        "preset",
        "Preset",
        CHOICE,
        "clarity",
        "Clarity: the Clarity upscaler's pipeline (ESRGAN, then Stable Diffusion repaints the "
        "detail). Refiners: the same idea with the Refiners library's defaults. Upscaler "
        "only: ESRGAN alone, no repainting, no Stable Diffusion models needed.",
        choices=(
            ("clarity", "Clarity", Preset.CLARITY),
            ("refiners", "Refiners", Preset.REFINERS),
            ("upscaler", "Upscaler only", Preset.UPSCALER),
        ),
    ),
    Spec(
        "scale",
        "Scale",
        FLOAT,
        _DEFAULTS["scale"],
        "How many times larger the result is, per side. Large factors are done in ×2 "
        "passes, each one inventing detail anew: more passes give a sharper image that "
        "strays further from the original.",
        minimum=_RANGES["scale"][0],
        maximum=_RANGES["scale"][1],
        step=0.5,
        decimals=2,
    ),
    Spec(
        "creativity",
        "Creativity",
        FLOAT,
        _DEFAULTS["creativity"],
        "How much the diffusion pass may repaint. Higher invents more detail and "
        "texture (quality), lower stays truer to the pixels you have (fidelity); "
        "0.3–0.9 is the useful range.",
        minimum=_RANGES["creativity"][0],
        maximum=_RANGES["creativity"][1],
        step=0.05,
    ),
    Spec(
        "resemblance",
        "Resemblance",
        FLOAT,
        _DEFAULTS["resemblance"],
        "How strongly the result is held to the original's shapes and colours. "
        "Higher keeps fidelity but can look flat; lower frees the model to add "
        "detail that was never there. Try 0.3–1.6.",
        minimum=_RANGES["resemblance"][0],
        maximum=_RANGES["resemblance"][1],
        step=0.05,
    ),
    Spec(
        "tile_width",
        "Fractality",
        INT,
        _DEFAULTS["tile_width"],
        "The size of the diffusion tiles, in latent units (×8 pixels). Smaller tiles "
        "make the model see the image closer up and add finer, busier detail; larger "
        "tiles keep the whole coherent.",
        minimum=_RANGES["tile_width"][0],
        maximum=_RANGES["tile_width"][1],
        step=16,
        group="fractality",
    ),
    Spec(
        "tile_height",
        "Fractality",
        INT,
        _DEFAULTS["tile_height"],
        "The height of the diffusion tiles, in latent units (×8 pixels); see the width.",
        minimum=_RANGES["tile_height"][0],
        maximum=_RANGES["tile_height"][1],
        step=16,
        group="fractality",
    ),
    Spec(
        "dynamic",
        "Dynamic",
        FLOAT,
        _DEFAULTS["dynamic"],
        "How hard the model follows the prompt (CFG). Higher gives more contrast "
        "and punch but can burn colours; lower is softer and more faithful. Try 3–9.",
        minimum=_RANGES["dynamic"][0],
        maximum=_RANGES["dynamic"][1],
        step=0.5,
        decimals=1,
    ),
    Spec(
        "steps",
        "Steps",
        INT,
        _DEFAULTS["steps"],
        "Sampler steps for a full denoise; only about creativity × steps are run. "
        "More steps are slower and refine detail a little further.",
        minimum=_RANGES["steps"][0],
        maximum=_RANGES["steps"][1],
        step=1,
    ),
    Spec(
        "seed",
        "Seed",
        INT,
        _DEFAULTS["seed"],
        "The noise seed. The same seed and settings give the same result; change it "
        "to get another take on the invented detail.",
        minimum=0,
        maximum=2**31 - 1,
        step=1,
    ),
    Spec(
        "prompt",
        "Prompt",
        TEXT,
        CLARITY_PROMPT,
        "What the detail should look like. Words steer the invented texture (quality); "
        "describing the image keeps it on subject (fidelity). <lora:name:weight> tags work.",
    ),
    Spec(
        "negative_prompt",
        "Negative prompt",
        TEXT,
        CLARITY_NEGATIVE_PROMPT,
        "What to steer away from, such as blur or artefacts.",
    ),
    Spec(
        "checkpoint",
        "Checkpoint",
        MODEL,
        None,
        "The Stable Diffusion 1.5 model that repaints the detail; its style shows in the result.",
        model_kind=ModelKind.CHECKPOINT,
        placeholder="Daemon default",
    ),
    Spec(
        "upscaler",
        "Upscaler model",
        MODEL,
        None,
        "The ESRGAN model that enlarges the image first. Models trained on photos keep "
        "photos faithful; others sharpen drawings. The daemon's default is used if none "
        "is chosen.",
        model_kind=ModelKind.UPSCALER,
        placeholder="Daemon default",
    ),
)

SPECS_BY_KEY: Dict[str, Spec] = {spec.key: spec for spec in SPECS}

#: The parameters the docker always shows, above the Upscale button; the others
#: are in its folded Advanced section.
MAIN_KEYS: Tuple[str, ...] = ("preset", "scale", "creativity", "resemblance", "prompt")

#: What the Upscaler-only preset ignores (the docker greys these out for it).
DIFFUSION_KEYS: Tuple[str, ...] = tuple(
    spec.key for spec in SPECS if spec.key not in ("preset", "scale", "upscaler")
)


def wire_fields(params_type: type = JobParams) -> List[str]:
    """The field names of the protocol's ``JobParams``."""
    return [f.name for f in dataclasses.fields(params_type)]


def offered_specs(params_type: type = JobParams) -> List[Spec]:
    """The parameters the daemon accepts: those named by ``JobParams``."""
    fields = set(wire_fields(params_type))
    return [spec for spec in SPECS if spec.key in fields]


class InvalidParameter(ValueError):
    """A value out of range; ``str()`` is a sentence for the user."""

    def __init__(self, spec: Spec, message: str) -> None:
        super().__init__(message)
        self.spec = spec


def validate(spec: Spec, value: Any) -> Any:
    """``value`` converted to the parameter's type and checked against its
    range; raises :class:`InvalidParameter`."""
    if spec.kind in (FLOAT, INT):
        if isinstance(value, bool):
            raise InvalidParameter(spec, f"{spec.label} must be a number.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidParameter(spec, f"{spec.label} must be a number, not {value!r}.") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidParameter(spec, f"{spec.label} must be a finite number.")
        if spec.kind == INT:
            if number != int(number):
                raise InvalidParameter(spec, f"{spec.label} must be a whole number.")
            number = int(number)
        low, high = spec.minimum, spec.maximum
        if (low is not None and number < low) or (high is not None and number > high):
            raise InvalidParameter(
                spec,
                f"{spec.label} must be between {_fmt(low)} and {_fmt(high)}; "
                f"{_fmt(number)} is out of range.",
            )
        return number
    if spec.kind == TEXT:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise InvalidParameter(spec, f"{spec.label} must be text.")
        return value
    if spec.kind == MODEL:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise InvalidParameter(spec, f"{spec.label} must be a model name.")
        return value
    if spec.kind == CHOICE:
        for name, label, wire in spec.choices:
            if value == wire or (isinstance(value, str) and value.lower() in (name, label.lower())):
                return name
        names = ", ".join(label for _, label, _ in spec.choices)
        raise InvalidParameter(spec, f"{spec.label} must be one of {names}, not {value!r}.")
    raise AssertionError("unknown parameter kind " + spec.kind)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "any"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def defaults(specs: Sequence[Spec] = SPECS) -> Dict[str, Any]:
    return {spec.key: spec.default for spec in specs}


def to_job_params(values: Mapping[str, Any], params_type: type = JobParams) -> Any:
    """The ``JobParams`` for the docker's values: every field the protocol has,
    from ``values`` or else from the defaults, validated. Values the protocol
    does not take are left out; raises :class:`InvalidParameter`."""
    kwargs = {}
    for name in wire_fields(params_type):
        spec = SPECS_BY_KEY.get(name)
        if spec is None:
            continue  # a field this plug-in does not know: the protocol's default
        value = validate(spec, values.get(name, spec.default))
        if spec.kind == CHOICE:
            value = next(wire for choice, _, wire in spec.choices if choice == value)
        kwargs[name] = value
    if "scale" in kwargs:
        kwargs["scale"] = float(kwargs["scale"])
    return params_type(**kwargs)


def parse_setting(spec: Spec, text: Optional[str]) -> Any:
    """A value read back from the settings (strings), or the default when it is
    missing or no longer valid."""
    if text is None or (text == "" and spec.kind != TEXT):
        return spec.default
    try:
        return validate(spec, text)
    except InvalidParameter:
        return spec.default


def format_setting(spec: Spec, value: Any) -> str:
    if value is None:
        return ""
    if spec.kind == INT:
        return str(int(value))
    if spec.kind == FLOAT:
        return repr(float(value))
    return str(value)
