"""Tessera for Krita: upscale a layer or selection with the Tessera daemon,
from a docker or an action, with progress and cancel.

Krita imports this package when the plug-in is enabled; it then registers
the extension (actions) and the docker. Imported anywhere else — the tests,
``kritarunner`` scripts — it registers nothing.
"""

VERSION = "0.1.0"


def _in_krita() -> bool:
    try:
        import pykrita  # type: ignore[import-not-found]  # noqa: F401
        from krita import Krita  # type: ignore[import-not-found]
    except ImportError:
        return False
    return Krita.instance() is not None


if _in_krita():
    from .extension import register

    register()
