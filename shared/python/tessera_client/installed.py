"""The models in a data directory's ``models/`` folder, found the way the
daemon finds them (``store/src/registry.rs``), for clients that need
the list while no daemon runs: the editor plug-ins fill their model choices
from it, and tell a new user that nothing is installed yet.

When a daemon runs, its ``ListModels`` answer is the authority; this is the
same list read from disk: per kind, the files with one of the kind's
extensions (named by their stem) and, for checkpoints, VAEs and ControlNets,
diffusers folders (named by the folder), hidden entries skipped, symbolic
links followed, sorted by name.
"""

import os
from typing import Dict, Iterable, List, Optional, Tuple

from .messages import ModelEntry, ModelKind

#: File extensions of each kind, most preferred first (as the daemon has them).
EXTENSIONS: Dict[ModelKind, Tuple[str, ...]] = {
    ModelKind.UPSCALER: ("safetensors", "pth", "pt"),
    ModelKind.CHECKPOINT: ("safetensors", "ckpt"),
    ModelKind.VAE: ("safetensors", "pt", "ckpt", "bin"),
    ModelKind.CONTROL_NET: ("safetensors", "pth", "bin"),
    ModelKind.LORA: ("safetensors", "pt"),
    ModelKind.EMBEDDING: ("safetensors", "pt", "bin"),
}

#: The kinds that may also be a diffusers-style folder.
FOLDER_KINDS = frozenset({ModelKind.CHECKPOINT, ModelKind.VAE, ModelKind.CONTROL_NET})


def models_folder(data_dir: str, kind: ModelKind) -> str:
    """``<data dir>/models/<kind's folder>``."""
    return os.path.join(data_dir, "models", ModelKind(kind).folder)


def _folder_size(path: str) -> int:
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            # Like the daemon: links inside a model folder are not followed.
            if entry.is_dir(follow_symlinks=False):
                total += _folder_size(entry.path)
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes: the daemon skips those too
        return False
    return True


def _preference(kind: ModelKind, entry: ModelEntry) -> int:
    if not os.path.splitext(entry.file)[1]:
        return 0
    ext = os.path.splitext(entry.file)[1][1:].lower()
    extensions = EXTENSIONS[kind]
    return 1 + (extensions.index(ext) if ext in extensions else len(extensions))


def list_kind(data_dir: str, kind: ModelKind) -> List[ModelEntry]:
    """The models of ``kind`` in ``data_dir``, sorted by name; an empty list
    when the folder is missing or cannot be read."""
    kind = ModelKind(kind)
    folder = models_folder(data_dir, kind)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        if name.startswith(".") or not _is_utf8(name):
            continue
        path = os.path.join(folder, name)
        try:
            is_dir = os.path.isdir(path)
            size = 0 if is_dir else os.stat(path).st_size
        except OSError:
            continue  # a dangling link
        relative = ModelKind(kind).folder + "/" + name
        if is_dir:
            if kind in FOLDER_KINDS:
                found.append(ModelEntry(kind, name, relative, _folder_size(path)))
            continue
        stem, dot, ext = name.rpartition(".")
        if dot and ext.lower() in EXTENSIONS[kind]:
            found.append(ModelEntry(kind, stem, relative, size))
    found.sort(key=lambda entry: (entry.name, _preference(kind, entry)))
    return found


def list_installed(data_dir: str, kinds: Optional[Iterable[ModelKind]] = None) -> List[ModelEntry]:
    """Every model in ``data_dir`` (or only those of ``kinds``), kind by kind
    in the protocol's order, each kind sorted by name."""
    chosen = list(ModelKind) if kinds is None else [ModelKind(k) for k in kinds]
    found: List[ModelEntry] = []
    for kind in sorted(chosen):
        found.extend(list_kind(data_dir, kind))
    return found


def names(models: Iterable[ModelEntry], kind: ModelKind) -> List[str]:
    """The distinct names of the ``kind`` models in ``models``, sorted: what a
    job's model field may say."""
    return sorted({m.name for m in models if int(m.kind) == int(kind)})
