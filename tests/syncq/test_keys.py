from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import HomeError, InsecureKeyFile, NotInitialized
from syncq.keys import HomePaths, load_device, load_space, resolve_home, save_device, save_space, write_secret


def test_home_precedence_flag_then_env_then_platform_dir(tmp_path: Path) -> None:
    assert resolve_home(tmp_path / "flag", {"SYNCQ_HOME": "/env"}) == tmp_path / "flag"
    assert resolve_home(None, {"SYNCQ_HOME": "/env"}) == Path("/env")
    default = resolve_home(None, {})
    assert default.name == "syncq"


def test_keys_round_trip_with_mode_0600(tmp_path: Path) -> None:
    paths = HomePaths(tmp_path)
    device = DeviceKeys.from_seed(os.urandom(64))
    space = SpaceKeys.create(os.urandom(32))
    save_device(paths, device, "laptop")
    save_space(paths, space)
    assert load_device(paths) == (device, "laptop")
    assert load_space(paths) == space
    for path in (paths.identity, paths.space_key):
        assert path.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_loose_permissions_are_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    paths = HomePaths(tmp_path)
    save_space(paths, SpaceKeys.create(os.urandom(32)))
    paths.space_key.chmod(mode)
    with pytest.raises(InsecureKeyFile, match=f"chmod 600 {paths.space_key}"):
        load_space(paths)


def test_damaged_key_files_are_home_errors(tmp_path: Path) -> None:
    paths = HomePaths(tmp_path)
    for content in (b"not json", b'{"format": "other"}', b'{"format": "syncq-space-v1", "secrets": 3}'):
        paths.space_key.write_bytes(content)
        paths.space_key.chmod(0o600)
        with pytest.raises(HomeError):
            load_space(paths)
    paths.identity.write_bytes(b'{"format": "syncq-device-v1", "name": "x", "ed25519_seed": "!!"}')
    paths.identity.chmod(0o600)
    with pytest.raises(HomeError):
        load_device(paths)


def test_uninitialised_and_non_directory_homes(tmp_path: Path) -> None:
    with pytest.raises(NotInitialized, match="syncq init"):
        HomePaths(tmp_path / "absent").check_initialized()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(HomeError, match="not a directory"):
        HomePaths(a_file).check_initialized()
    with pytest.raises(HomeError):
        HomePaths(a_file / "below").create()


def test_two_writers_of_one_key_file_never_undo_each_other(tmp_path: Path) -> None:
    # A node and a command of one home both save space.key when they learn a rotation: with one
    # shared temporary name, one moved the other's file away and the other failed (ENOENT).
    failures: list[HomeError] = []

    def write(data: bytes) -> None:
        for _ in range(200):
            try:
                write_secret(tmp_path / "space.key", data)
            except HomeError as exc:
                failures.append(exc)

    writers = [threading.Thread(target=write, args=(bytes([n]) * 300,)) for n in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert failures == []
    assert (tmp_path / "space.key").read_bytes() in (bytes([0]) * 300, bytes([1]) * 300)
    assert [p.name for p in tmp_path.iterdir()] == ["space.key"]  # no temporary file left
    assert (tmp_path / "space.key").stat().st_mode & 0o777 == 0o600
