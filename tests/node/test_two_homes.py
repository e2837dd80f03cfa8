"""The walk-through of the issue, with real commands: init, invite, join, node, add, log."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, wait_until

pytestmark = pytest.mark.slow


def syncq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    return subprocess.run([SYNCQ, *args], env=env, capture_output=True, text=True, check=True, timeout=60)


def test_two_homes_on_one_machine(tmp_path: Path, nodes) -> None:
    laptop, gpu = tmp_path / "laptop", tmp_path / "gpu"
    syncq(laptop, "init", "--name", "laptop")
    laptop_node = nodes(laptop)
    code = syncq(laptop, "invite").stdout.strip()
    syncq(gpu, "join", code, "--name", "gpu")
    gpu_node = nodes(gpu)
    gpu_node.wait_event("peer-connected")
    prompt_id = syncq(laptop, "add", "Why is the sky blue?", "-m", "echo").stdout.strip()

    def on_gpu() -> list[dict]:
        return [json.loads(line) for line in syncq(gpu, "log", "--json").stdout.splitlines()]

    entries = wait_until(on_gpu, what="the prompt in the gpu's log")
    assert [(e["id"], e["input"]) for e in entries] == [(prompt_id, "Why is the sky blue?")]
    wait_until(lambda: on_gpu()[0]["status"] == "done", what="the prompt run by one of the two nodes")

    def connected(home: Path) -> dict:
        status = json.loads(syncq(home, "status", "--json").stdout)
        return status if status["peers_connected"] == 1 and status["peers_behind"] == 0 else {}

    status = wait_until(lambda: connected(gpu), what="gpu status to show a synced peer")
    assert status["node"] == gpu_node.url
    peers = [json.loads(line) for line in syncq(laptop, "peers", "--json").stdout.splitlines()]
    assert [(p["name"], p["connected"]) for p in peers] == [("gpu", True)]
    assert laptop_node.stop() == 0 and gpu_node.stop() == 0  # SIGTERM: a clean exit
    assert not json.loads(syncq(gpu, "status", "--json").stdout)["node"]
