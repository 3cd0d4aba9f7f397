#!/usr/bin/env python3
"""Installs the Tessera plug-in into GIMP 3's plug-ins folder.

    python3 plugin-gimp/install.py                 # the usual folder for this system
    python3 plugin-gimp/install.py --dest DIR      # another plug-ins folder
    python3 plugin-gimp/install.py --print-dest    # only show where it would go

It copies ``tessera-upscale/`` (the plug-in and its helper) and the protocol
client ``shared/python/tessera_client/`` into ``DIR/tessera-upscale/`` and
makes the plug-in executable (GIMP silently ignores it otherwise). Running it
again replaces the previous copy. Restart GIMP afterwards.
"""

import argparse
import os
import shutil
import stat
import sys
import tempfile
from typing import Mapping, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_NAME = "tessera-upscale"
PLUGIN_SOURCE = os.path.join(HERE, PLUGIN_NAME)
CLIENT_SOURCE = os.path.join(HERE, os.pardir, "shared", "python", "tessera_client")
GIMP_SERIES = "3.0"


def default_dest(env: Optional[Mapping[str, str]] = None, platform: Optional[str] = None) -> str:
    """GIMP 3's per-user plug-ins folder on this platform."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    home = env.get("HOME") or os.path.expanduser("~")
    if platform == "win32":
        base = env.get("APPDATA") or os.path.join(home, "AppData", "Roaming")
        return os.path.join(base, "GIMP", GIMP_SERIES, "plug-ins")
    if platform == "darwin":
        return os.path.join(home, "Library", "Application Support", "GIMP", GIMP_SERIES, "plug-ins")
    config = env.get("XDG_CONFIG_HOME")
    if not config or not os.path.isabs(config):
        config = os.path.join(home, ".config")
    return os.path.join(config, "GIMP", GIMP_SERIES, "plug-ins")


def _ignore(folder: str, names: list) -> list:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def install(dest: str) -> str:
    """Copies the plug-in into ``dest/tessera-upscale`` (replacing an older
    copy) and returns that folder."""
    target = os.path.join(dest, PLUGIN_NAME)
    os.makedirs(dest, exist_ok=True)
    # Assemble next to the target, then swap, so GIMP never sees half a copy.
    staging = tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}-", dir=dest)
    try:
        built = os.path.join(staging, PLUGIN_NAME)
        shutil.copytree(PLUGIN_SOURCE, built, ignore=_ignore)
        shutil.copytree(CLIENT_SOURCE, os.path.join(built, "tessera_client"), ignore=_ignore)
        script = os.path.join(built, PLUGIN_NAME + ".py")
        mode = os.stat(script).st_mode
        os.chmod(script, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", help="the plug-ins folder (default: %(default)s)")
    parser.add_argument("--print-dest", action="store_true", help="print the folder and stop")
    args = parser.parse_args(argv)
    dest = args.dest or default_dest()
    if args.print_dest:
        print(dest)
        return 0
    target = install(dest)
    print(f"installed {os.path.join(target, PLUGIN_NAME + '.py')}; restart GIMP to load it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
