from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import HomeError, InsecureKeyFile, NotInitialized
from syncq.keys import HomePaths, load_device, load_space, resolve_home, save_device, save_space


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


def test_two_processes_saving_keys_at_once_do_not_fail(tmp_path: Path) -> None:
    """A node and a CLI command on one home both learn a new epoch and save space.key at the
    same moment: each writes its own temporary file, so neither finds the other's moved away
    (a fixed ``space.key.tmp`` made one of them fail with "No such file or directory")."""
    import multiprocessing

    from syncq.keys import write_secret

    target = tmp_path / "space.key"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_write_many, [(target, b"a" * 4096), (target, b"b" * 4096)])
    assert results == ["ok", "ok"]
    assert target.read_bytes() in (b"a" * 4096, b"b" * 4096)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.key"]  # no temporary file left
    write_secret(target, b"c")
    assert os.stat(target).st_mode & 0o777 == 0o600


def _write_many(target: Path, data: bytes) -> str:
    from syncq.keys import write_secret

    try:
        for _ in range(300):
            write_secret(target, data)
    except HomeError as exc:
        return str(exc)
    return "ok"
