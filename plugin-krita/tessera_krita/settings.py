"""The plug-in's settings: the job parameters the daemon takes and the
local options, kept between sessions.

Inside Krita they live in ``kritarc`` (group ``tessera``) through
``Krita.readSetting``/``writeSetting``; the tests use a dict.

No Qt here.
"""

from typing import Any, Dict, List, Mapping, MutableMapping, NamedTuple, Optional

from . import params

GROUP = "tessera"

#: Where the pixels come from.
SOURCE_LAYER, SOURCE_MERGED = "layer", "merged"
#: Where the result goes.
OUTPUT_NEW_DOCUMENT, OUTPUT_IN_PLACE = "new-document", "in-place"


class Choice(NamedTuple):
    value: str
    label: str
    tooltip: str


SOURCES = (
    Choice(
        SOURCE_LAYER,
        "Active layer",
        "Upscale the active layer's pixels, inside the selection's bounding box if there "
        "is a selection.",
    ),
    Choice(
        SOURCE_MERGED,
        "Merged image",
        "Upscale the image as you see it, all visible layers merged, inside the "
        "selection's bounding box if there is a selection.",
    ),
)

OUTPUTS = (
    Choice(
        OUTPUT_NEW_DOCUMENT,
        "New document",
        "Put the result in a new document of the upscaled size; this one is not changed.",
    ),
    Choice(
        OUTPUT_IN_PLACE,
        "This document (scale the canvas)",
        "When the result arrives, scale this document's canvas by the same factor and add "
        "the result as a new layer above the source, keeping the resolution. Each change is "
        "one undo step.",
    ),
)


class Store:
    """A string store: Krita's settings, or a dict in the tests."""

    def get(self, key: str) -> Optional[str]:
        raise NotImplementedError

    def set(self, key: str, value: str) -> None:
        raise NotImplementedError


class DictStore(Store):
    def __init__(self, data: Optional[MutableMapping[str, str]] = None) -> None:
        self.data = {} if data is None else data

    def get(self, key: str) -> Optional[str]:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value


_MISSING = "\x00tessera-missing"


class KritaStore(Store):
    """``kritarc``, group ``tessera``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def get(self, key: str) -> Optional[str]:
        value = self.app.readSetting(GROUP, key, _MISSING)
        return None if value == _MISSING else value

    def set(self, key: str, value: str) -> None:
        self.app.writeSetting(GROUP, key, value)


class Settings:
    """Typed access to the store."""

    def __init__(self, store: Store, specs: Optional[List[params.Spec]] = None) -> None:
        self.store = store
        #: The job parameters on offer (those the protocol has).
        self.specs = params.offered_specs() if specs is None else list(specs)

    # Job parameters.
    def values(self) -> Dict[str, Any]:
        return {
            spec.key: params.parse_setting(spec, self.store.get(spec.key)) for spec in self.specs
        }

    def set_value(self, key: str, value: Any) -> None:
        spec = params.SPECS_BY_KEY[key]
        self.store.set(key, params.format_setting(spec, params.validate(spec, value)))

    def set_values(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.set_value(key, value)

    # Local options.
    def _choice(self, key: str, choices: tuple) -> str:
        value = self.store.get(key)
        allowed = [c.value for c in choices]
        return value if value in allowed else allowed[0]

    @property
    def source(self) -> str:
        return self._choice("source", SOURCES)

    @source.setter
    def source(self, value: str) -> None:
        if value not in [c.value for c in SOURCES]:
            raise ValueError("unknown source " + repr(value))
        self.store.set("source", value)

    @property
    def output(self) -> str:
        return self._choice("output", OUTPUTS)

    @output.setter
    def output(self, value: str) -> None:
        if value not in [c.value for c in OUTPUTS]:
            raise ValueError("unknown output " + repr(value))
        self.store.set("output", value)

    @property
    def tessera_path(self) -> str:
        """The ``tessera`` program to start when no daemon runs; empty: look on PATH."""
        return self.store.get("tessera_path") or ""

    @tessera_path.setter
    def tessera_path(self, value: str) -> None:
        self.store.set("tessera_path", value.strip())

    @property
    def auto_start(self) -> bool:
        """Whether to start ``tessera serve`` when no daemon answers."""
        return (self.store.get("auto_start") or "true").lower() not in ("false", "0", "no")

    @auto_start.setter
    def auto_start(self, value: bool) -> None:
        self.store.set("auto_start", "true" if value else "false")
