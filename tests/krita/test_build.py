"""The release zip: built by the build script, reproducible, carrying a
verbatim copy of the protocol client, written in Python 3.8 syntax, and
accepted by Krita's own *Import Python Plugin from File…* code."""

import ast
import hashlib
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from krita_support import PLUGIN, REPO, krita_importer

from tessera_krita import params

CLIENT = REPO / "shared" / "python" / "tessera_client"


def test_the_zip_holds_the_plugin_and_a_verbatim_copy_of_the_client(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        names = archive.namelist()
        assert "tessera_krita.desktop" in names and "tessera_krita.action" in names
        assert "tessera_krita/" in names and "tessera_krita/__init__.py" in names
        for source in sorted(CLIENT.glob("*.py")):
            copy = archive.read("tessera_krita/vendor/tessera_client/" + source.name)
            assert copy == source.read_bytes(), f"{source.name} differs from shared/python"
        sums = archive.read("tessera_krita/vendor/tessera_client/SHA256SUMS").decode()
        for line in sums.splitlines():
            digest, name = line.split("  ")
            assert hashlib.sha256((CLIENT / name).read_bytes()).hexdigest() == digest
        packaged = {n for n in names if n.startswith("tessera_krita/") and n.endswith(".py")}
        for source in (PLUGIN / "tessera_krita").glob("*.py"):
            assert "tessera_krita/" + source.name in packaged
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert plugin_zip.name == f"tessera_krita-{plugin_version()}.zip"


def plugin_version() -> str:
    tree = ast.parse((PLUGIN / "tessera_krita" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "VERSION":
            return node.value.value
    raise AssertionError("no VERSION")


def test_the_build_is_reproducible(plugin_zip, tmp_path):
    again = subprocess.run(
        [sys.executable, str(PLUGIN / "build.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(again.stdout.strip()).read_bytes() == plugin_zip.read_bytes()


def test_everything_krita_5_1_loads_is_python_3_8_syntax(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        for name in archive.namelist():
            if name.endswith(".py"):
                ast.parse(archive.read(name), name, feature_version=(3, 8))


def test_the_action_file_names_the_actions_the_extension_creates():
    root = ET.parse(PLUGIN / "tessera_krita.action").getroot()
    actions = {a.get("name"): a.findtext("text") for a in root.iter("Action")}
    assert set(actions) == {"tessera_upscale", "tessera_cancel"}
    extension = (PLUGIN / "tessera_krita" / "extension.py").read_text()
    for name in actions:
        assert f'"{name}"' in extension


def test_krita_importer_accepts_the_zip(plugin_zip, tmp_path):
    importer = krita_importer().PluginImporter(str(plugin_zip), str(tmp_path), lambda p: True)
    imported = importer.import_all()
    assert [(p["name"], p["ui_name"], p["action"]) for p in imported] == [
        ("tessera_krita", "Tessera Upscaler", "tessera_krita.action")
    ]
    pykrita = tmp_path / "pykrita"
    assert (pykrita / "tessera_krita.desktop").is_file()
    assert (pykrita / "tessera_krita" / "vendor" / "tessera_client" / "codec.py").is_file()
    assert (tmp_path / "actions" / "tessera_krita.action").is_file()
    # The installed copy runs on its vendored client, without shared/python.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path[:] = [p for p in sys.path if 'shared' not in p];"
            "from tessera_krita import proto, params;"
            "print(proto.from_vendor, proto.tessera_client.__name__, "
            "[s.key for s in params.offered_specs()])",
        ],
        cwd=str(pykrita),
        env={"PYTHONPATH": str(pykrita), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    words = probe.stdout.split()
    assert words[:2] == ["True", "tessera_krita.vendor.tessera_client"]
    # Every parameter the docker describes is one the protocol (v2) takes.
    offered = [w.strip("[],'") for w in words[2:]]
    assert offered == [spec.key for spec in params.SPECS]
