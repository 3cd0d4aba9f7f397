"""Where the daemon keeps its files and where it listens: the rules of the
Rust ``tessera_protocol::paths`` module, mirrored so that a plug-in finds the
daemon that ``tessera serve`` started.

- Data directory: an explicit path, else ``$TESSERA_DATA_DIR`` (if not
  empty), else the platform's: ``$XDG_DATA_HOME/tessera`` (when that is
  absolute) or ``~/.local/share/tessera`` on Linux and other Unixes,
  ``~/Library/Application Support/Tessera`` on macOS,
  ``{RoamingAppData}\\Tessera\\data`` on Windows.
- Socket: an explicit value, else ``$TESSERA_SOCKET`` (if not empty), else,
  for the platform's data directory, ``$XDG_RUNTIME_DIR/tessera.sock`` when
  that directory exists, and ``<data dir>/tessera.sock`` otherwise. On
  Windows it is the named pipe ``tessera-<USERNAME>``, with ``-<fnv1a-32 of
  the data directory, 8 hex digits>`` appended when the data directory was
  chosen explicitly; a ``\\\\.\\pipe\\`` prefix on an explicit value is dropped.

Every function takes ``env`` (default ``os.environ``) and ``platform``
(default ``sys.platform``) so that the rules can be tested anywhere.
"""

import ntpath
import os
import posixpath
import sys
from typing import Mapping, NamedTuple, Optional

DATA_DIR_ENV = "TESSERA_DATA_DIR"
SOCKET_ENV = "TESSERA_SOCKET"
SOCKET_FILE_NAME = "tessera.sock"
#: Longest Unix socket path the kernel accepts (``sun_path`` less its NUL).
MAX_UNIX_SOCKET_PATH = 103
#: The prefix of every Windows named pipe's path.
PIPE_PREFIX = "\\\\.\\pipe\\"


class PathError(Exception):
    """No data directory can be found (no home directory)."""


class DataDir(NamedTuple):
    path: str
    #: Chosen by a flag or ``$TESSERA_DATA_DIR`` rather than by default.
    explicit: bool


class SocketAddress(NamedTuple):
    """A Unix socket path (``kind == "path"``) or a Windows named pipe name
    without its ``\\\\.\\pipe\\`` prefix (``kind == "pipe"``)."""

    kind: str
    name: str

    @property
    def is_pipe(self) -> bool:
        return self.kind == "pipe"

    def __str__(self) -> str:
        return PIPE_PREFIX + self.name if self.is_pipe else self.name


def _is_windows(platform: Optional[str]) -> bool:
    return (platform or sys.platform) == "win32"


def _env(env: Optional[Mapping[str, str]]) -> Mapping[str, str]:
    return os.environ if env is None else env


def _home(env: Mapping[str, str]) -> str:
    home = env.get("HOME")
    if home:
        return home
    try:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError, OSError):
        home = ""
    if not home:
        raise PathError(
            f"cannot find a home directory for the data directory; set {DATA_DIR_ENV} to a folder "
            "Tessera may use"
        )
    return home


def _roaming_app_data(env: Mapping[str, str]) -> str:
    """``FOLDERID_RoamingAppData``, as the Rust ``directories`` crate finds it."""
    if sys.platform == "win32":
        try:
            path = _known_folder_roaming_app_data()
        except (OSError, AttributeError, ValueError):
            path = None
        if path:
            return path
    path = env.get("APPDATA")
    if not path:
        raise PathError(
            f"cannot find the AppData folder; set {DATA_DIR_ENV} to a folder Tessera may use"
        )
    return path


def _known_folder_roaming_app_data() -> Optional[str]:  # pragma: no cover - Windows only
    import ctypes
    import uuid
    from ctypes import wintypes

    class GUID(ctypes.Structure):
        _fields_ = [
            ("Data1", wintypes.DWORD),
            ("Data2", wintypes.WORD),
            ("Data3", wintypes.WORD),
            ("Data4", wintypes.BYTE * 8),
        ]

    folder = uuid.UUID("{3EB685DB-65F9-4CF6-A03A-E3EF65729F3D}")  # FOLDERID_RoamingAppData
    guid = GUID.from_buffer_copy(folder.bytes_le)
    out = ctypes.c_wchar_p()
    shell32 = ctypes.windll.shell32  # type: ignore[attr-defined]
    ole32 = ctypes.windll.ole32  # type: ignore[attr-defined]
    if shell32.SHGetKnownFolderPath(ctypes.byref(guid), 0, None, ctypes.byref(out)) != 0:
        return None
    try:
        return out.value
    finally:
        ole32.CoTaskMemFree(out)


def data_dir(
    override: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    platform: Optional[str] = None,
) -> DataDir:
    """The data directory: ``override`` (a ``--data-dir`` flag), then
    ``$TESSERA_DATA_DIR``, then the platform default."""
    env = _env(env)
    if override is not None:
        return DataDir(os.fspath(override), True)
    explicit = env.get(DATA_DIR_ENV)
    if explicit:
        return DataDir(explicit, True)
    platform = platform or sys.platform
    if _is_windows(platform):
        return DataDir(ntpath.join(_roaming_app_data(env), "Tessera", "data"), False)
    home = _home(env)
    if platform == "darwin":
        return DataDir(posixpath.join(home, "Library/Application Support", "Tessera"), False)
    xdg = env.get("XDG_DATA_HOME", "")
    base = xdg if posixpath.isabs(xdg) else posixpath.join(home, ".local/share")
    return DataDir(posixpath.join(base, "tessera"), False)


def socket_address(
    override: Optional[str] = None,
    data: Optional[DataDir] = None,
    env: Optional[Mapping[str, str]] = None,
    platform: Optional[str] = None,
) -> SocketAddress:
    """Where the daemon listens: ``override`` (a ``--socket`` flag), then
    ``$TESSERA_SOCKET``, then the default for ``data`` (by default
    :func:`data_dir`)."""
    env = _env(env)
    chosen = override if override is not None else (env.get(SOCKET_ENV) or None)
    if chosen is not None:
        chosen = os.fspath(chosen)
        if _is_windows(platform):
            if chosen.startswith(PIPE_PREFIX):
                chosen = chosen[len(PIPE_PREFIX) :]
            return SocketAddress("pipe", chosen)
        return SocketAddress("path", chosen)
    if data is None:
        data = data_dir(None, env, platform)
    return _default_socket(data, env, platform)


def _default_socket(
    data: DataDir, env: Mapping[str, str], platform: Optional[str]
) -> SocketAddress:
    if _is_windows(platform):
        user = env.get("USERNAME")
        if user is None:
            user = "user"
        if data.explicit:
            return SocketAddress("pipe", f"tessera-{user}-{fnv1a(_lossy_utf8(data.path)):08x}")
        return SocketAddress("pipe", f"tessera-{user}")
    runtime = env.get("XDG_RUNTIME_DIR")
    if not data.explicit and runtime is not None and os.path.isdir(runtime):
        return SocketAddress("path", posixpath.join(runtime, SOCKET_FILE_NAME))
    return SocketAddress("path", posixpath.join(data.path, SOCKET_FILE_NAME))


def _lossy_utf8(text: str) -> bytes:
    """UTF-8 of ``text`` with lone surrogates as U+FFFD, like Rust's
    ``to_string_lossy`` of a Windows path."""
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text).encode("utf-8")


def fnv1a(data: bytes) -> int:
    """32-bit FNV-1a, the stable hash in explicit data directories' pipe names."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def default_socket_address() -> SocketAddress:
    """The socket a daemon started without flags listens on, as seen from here."""
    return socket_address()
