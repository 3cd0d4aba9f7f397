"""Shared set-up of the Krita plug-in's tests: the plug-in's source folder on
``sys.path`` (its pure modules need neither Qt nor Krita)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugin-krita"

if str(PLUGIN) not in sys.path:
    sys.path.insert(0, str(PLUGIN))
