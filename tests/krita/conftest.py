"""Fixtures of the Krita plug-in's tests; the helpers live in
``krita_support.py`` (importable from the tests, unlike this file)."""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from krita_support import daemon, fake_daemon, krita_home, plugin_zip  # noqa: E402, F401
