"""A disk that fills: writes are refused with a clear error, nothing acknowledged is lost,
reads go on, and everything works again once space is freed. Each scenario runs on a real
4 MB tmpfs in a private mount namespace (``unshare``; root in a user namespace where the
machine allows it), in a process of its own (tests/helpers/disk_full.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "disk_full.py"
SIZE = "4m"


def namespaced(mount: Path, *command: str) -> subprocess.CompletedProcess[str]:
    script = f'mount -t tmpfs -o size={SIZE},mode=0700 tmpfs "{mount}" && exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here: a small disk cannot be made without root")
    probe = namespaced(mount, "true")
    if probe.returncode != 0:
        pytest.skip(f"no tmpfs in a user namespace here: {probe.stderr.strip()}")
    return mount


def scenario(name: str, mount: Path, work: Path) -> dict[str, Any]:
    done = namespaced(mount, sys.executable, str(HELPER), name, str(mount), str(work))
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


def test_a_full_disk_refuses_adds_clearly_loses_nothing_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    seen = scenario("library", small_disk, tmp_path)
    assert seen["acked"] > 0 and "is full" in seen["refusal"] and "free some space" in seen["refusal"]
    add = seen["cli_add"]
    assert add["rc"] == 1 and "is full" in add["stderr"] and "Traceback" not in add["stderr"]
    assert len(add["stderr"].strip().splitlines()) == 1
    assert seen["cli_log"]["rc"] == 0 and len(seen["cli_log"]["stdout"].splitlines()) == 5  # reads go on
    assert seen["cli_status"]["rc"] == 0
    assert seen["lost"] == []
    assert seen["cli_add_after"]["rc"] == 0 and seen["after"] == 1


@pytest.mark.slow
def test_a_node_whose_disk_fills_stays_up_and_takes_everything_once_freed(
    small_disk: Path, tmp_path: Path
) -> None:
    seen = scenario("node", small_disk, tmp_path)
    assert "free some space" in seen["failure"]["reason"] and seen["alive_while_full"]
    assert seen["cli_log_while_full"]["rc"] == 0
    assert seen["lost"] == [] and seen["synced"] == 200 and seen["alive"]
