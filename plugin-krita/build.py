#!/usr/bin/env python3
"""Builds the release zip of the Krita plug-in, the file users give to
Tools ▸ Scripts ▸ Import Python Plugin from File…

    python3 plugin-krita/build.py [--out DIR]   # → DIR/tessera_krita-<version>.zip (default dist/)

Layout, as Krita's importer expects it (it looks for ``*.desktop`` files,
the package folder named by ``X-KDE-Library`` with an ``__init__.py``, and a
``<name>.action`` file; folders need their own zip entries)::

    tessera_krita.desktop
    tessera_krita.action
    tessera_krita/              the package
    tessera_krita/vendor/tessera_client/
                                shared/python/tessera_client, copied verbatim

The archive is reproducible: sorted entries, fixed timestamps
(``SOURCE_DATE_EPOCH`` if set), no caches. Standard library only.
"""

import argparse
import hashlib
import os
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAME = "tessera_krita"
PACKAGE = HERE / NAME
CLIENT = REPO / "shared" / "python" / "tessera_client"
VENDOR = NAME + "/vendor"

VENDOR_INIT = '''"""Third-party code shipped with the plug-in: ``tessera_client`` is a verbatim
copy of ``shared/python/tessera_client`` from the Tessera repository, put here
by ``plugin-krita/build.py``. Do not edit it here."""
'''


def version() -> str:
    text = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^VERSION = "([^"]+)"', text, re.MULTILINE)
    if not match:
        raise SystemExit(f"no VERSION in {NAME}/__init__.py")
    return match.group(1)


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if path.is_file():
            yield path


def entries() -> List[Tuple[str, bytes]]:
    """(archive name, content) of every file, in archive order."""
    out = [
        (NAME + ".desktop", (HERE / (NAME + ".desktop")).read_bytes()),
        (NAME + ".action", (HERE / (NAME + ".action")).read_bytes()),
    ]
    for path in _files(PACKAGE):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.split("/")[0] == "vendor":
            continue  # a stale local copy: the archive gets a fresh one below
        out.append((NAME + "/" + rel, path.read_bytes()))
    out.append((VENDOR + "/__init__.py", VENDOR_INIT.encode("utf-8")))
    manifest = []
    for path in _files(CLIENT):
        if path.suffix != ".py":
            continue
        content = path.read_bytes()
        rel = path.relative_to(CLIENT).as_posix()
        out.append((VENDOR + "/tessera_client/" + rel, content))
        manifest.append(f"{hashlib.sha256(content).hexdigest()}  {rel}")
    out.append(
        (
            VENDOR + "/tessera_client/SHA256SUMS",
            ("\n".join(manifest) + "\n").encode("utf-8"),
        )
    )
    return out


def _folders(names: List[str]) -> List[str]:
    folders = set()
    for name in names:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folders.add("/".join(parts[:i]) + "/")
    return sorted(folders)


def build(out_dir: Path, timestamp: Optional[int] = None) -> Path:
    if timestamp is None:
        timestamp = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))  # 1980-01-01
    date = time.gmtime(max(timestamp, 315532800))[:6]
    files = entries()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{NAME}-{version()}.zip"
    partial = target.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for folder in _folders([name for name, _ in files]):
            info = zipfile.ZipInfo(folder, date)
            info.external_attr = (0o40755 << 16) | 0x10
            archive.writestr(info, b"")
        for name, content in files:
            info = zipfile.ZipInfo(name, date)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    partial.replace(target)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
