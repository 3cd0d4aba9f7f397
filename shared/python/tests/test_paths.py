"""The data-directory and socket rules, as in shared/src/paths.rs."""

import os

import pytest

from tessera_client import SocketAddress, data_dir, socket_address
from tessera_client.paths import DataDir, PathError, fnv1a


def test_fnv1a_matches_the_rust_values():
    assert fnv1a(b"") == 0x811C9DC5
    assert fnv1a(b"a") == 0xE40C292C
    assert fnv1a(b"foobar") == 0xBF9CF968


# --- Data directory -------------------------------------------------------------


def test_an_override_wins_and_is_explicit():
    env = {"TESSERA_DATA_DIR": "/env/dir", "HOME": "/home/ana"}
    assert data_dir("/flag/dir", env, "linux") == DataDir("/flag/dir", True)


def test_the_environment_variable_is_explicit_unless_empty():
    assert data_dir(None, {"TESSERA_DATA_DIR": "/env/dir"}, "linux") == DataDir("/env/dir", True)
    env = {"TESSERA_DATA_DIR": "", "HOME": "/home/ana"}
    assert data_dir(None, env, "linux") == DataDir("/home/ana/.local/share/tessera", False)


def test_linux_default_honours_an_absolute_xdg_data_home():
    env = {"HOME": "/home/ana", "XDG_DATA_HOME": "/data/xdg"}
    assert data_dir(None, env, "linux") == DataDir("/data/xdg/tessera", False)
    env["XDG_DATA_HOME"] = "relative/xdg"
    assert data_dir(None, env, "linux").path == "/home/ana/.local/share/tessera"
    assert data_dir(None, {"HOME": "/home/ana/"}, "freebsd13").path == (
        "/home/ana/.local/share/tessera"
    )


def test_macos_default():
    env = {"HOME": "/Users/ana", "XDG_DATA_HOME": "/ignored"}
    assert data_dir(None, env, "darwin") == DataDir(
        "/Users/ana/Library/Application Support/Tessera", False
    )


def test_windows_default_is_roaming_app_data():
    env = {"APPDATA": "C:\\Users\\Ana\\AppData\\Roaming"}
    assert data_dir(None, env, "win32") == DataDir(
        "C:\\Users\\Ana\\AppData\\Roaming\\Tessera\\data", False
    )


def test_windows_without_app_data_is_an_error():
    if os.name == "nt":
        pytest.skip("a real Windows finds the known folder")
    with pytest.raises(PathError, match="TESSERA_DATA_DIR"):
        data_dir(None, {}, "win32")


# --- Socket -------------------------------------------------------------------------


def test_an_override_then_the_environment_variable_name_the_socket():
    env = {"TESSERA_SOCKET": "/env.sock", "HOME": "/home/ana"}
    assert socket_address("/flag.sock", None, env, "linux") == SocketAddress("path", "/flag.sock")
    assert socket_address(None, None, env, "linux") == SocketAddress("path", "/env.sock")
    env["TESSERA_SOCKET"] = ""
    assert socket_address(None, None, env, "linux") == SocketAddress(
        "path", "/home/ana/.local/share/tessera/tessera.sock"
    )


def test_the_default_data_dir_uses_an_existing_xdg_runtime_dir(tmp_path):
    data = DataDir("/home/ana/.local/share/tessera", False)
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert socket_address(None, data, env, "linux") == SocketAddress(
        "path", str(tmp_path / "tessera.sock")
    )
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "missing")}
    assert socket_address(None, data, env, "linux") == SocketAddress(
        "path", "/home/ana/.local/share/tessera/tessera.sock"
    )
    assert socket_address(None, data, {"XDG_RUNTIME_DIR": ""}, "darwin").name == (
        "/home/ana/.local/share/tessera/tessera.sock"
    )


def test_an_explicit_data_dir_gets_its_own_socket(tmp_path):
    data = DataDir("/tmp/x", True)
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert socket_address(None, data, env, "linux") == SocketAddress("path", "/tmp/x/tessera.sock")


def test_the_socket_follows_tessera_data_dir_from_the_environment():
    env = {"TESSERA_DATA_DIR": "/srv/tessera", "HOME": "/home/ana"}
    assert str(socket_address(None, None, env, "linux")) == "/srv/tessera/tessera.sock"


def test_windows_pipes():
    default = DataDir("C:\\Users\\Ana\\AppData\\Roaming\\Tessera\\data", False)
    env = {"USERNAME": "Ana"}
    address = socket_address(None, default, env, "win32")
    assert address == SocketAddress("pipe", "tessera-Ana")
    assert address.is_pipe
    assert str(address) == "\\\\.\\pipe\\tessera-Ana"
    assert socket_address(None, default, {}, "win32").name == "tessera-user"

    explicit = DataDir("D:\\Tessera", True)
    expected = "tessera-Ana-{:08x}".format(fnv1a(b"D:\\Tessera"))
    assert socket_address(None, explicit, env, "win32").name == expected
    # Non-ASCII paths hash their UTF-8; lone surrogates hash as U+FFFD.
    jurgen = DataDir("D:\\J\u00fcrgen", True)
    assert socket_address(None, jurgen, env, "win32").name.endswith(
        "{:08x}".format(fnv1a(b"D:\\J\xc3\xbcrgen"))
    )
    lone = DataDir("D:\\\udc80", True)
    assert socket_address(None, lone, env, "win32").name.endswith(
        "{:08x}".format(fnv1a(b"D:\\\xef\xbf\xbd"))
    )


def test_windows_socket_overrides_may_carry_the_pipe_prefix():
    env = {"TESSERA_SOCKET": "\\\\.\\pipe\\my-tessera"}
    assert socket_address(None, None, env, "win32") == SocketAddress("pipe", "my-tessera")
    assert socket_address("other", None, {}, "win32") == SocketAddress("pipe", "other")


def test_the_real_environment_resolves():
    address = socket_address()
    assert address.name
