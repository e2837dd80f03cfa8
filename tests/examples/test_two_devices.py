"""examples/two_devices.md, step by step with the real commands (free ports instead of 7330 and 7340)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import SYNCQ, wait_until

pytestmark = pytest.mark.slow


def syncq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    return subprocess.run([SYNCQ, *args], env=env, capture_output=True, text=True, check=True, timeout=60)


def test_the_two_devices_walk_through(tmp_path: Path, nodes) -> None:
    laptop, gpu = tmp_path / "laptop", tmp_path / "gpu"
    syncq(laptop, "init", "--name", "laptop")
    hub = nodes(laptop, "--no-executors")
    code = syncq(laptop, "invite", "--address", hub.url).stdout.strip()
    syncq(gpu, "join", code, "--name", "gpu")
    worker = nodes(gpu)
    worker.wait_event("peer-connected")

    asked = syncq(laptop, "add", "hello from the laptop", "-m", "echo", "--wait")
    assert asked.stdout.strip() == "hello from the laptop" and "[echo on gpu" in asked.stderr

    worker.stop()  # the gpu goes away; the laptop keeps queueing
    away = syncq(laptop, "add", "asked while the gpu is away", "-m", "echo").stdout.strip()
    assert "queued" in syncq(laptop, "show", away).stdout
    nodes(gpu)
    wait_until(lambda: "done" in syncq(laptop, "show", away).stdout, what="the gpu to answer on return")

    snippet = (
        "import sys, syncq\n"
        "with syncq.open(sys.argv[1]) as s:\n"
        "    print(s.run('hello again', model='echo', timeout=30).node_name)"
    )
    ran = subprocess.run(
        [sys.executable, "-c", snippet, str(laptop)], capture_output=True, text=True, check=True
    )
    assert ran.stdout.strip() == "gpu"
    logged = [json.loads(line) for line in syncq(gpu, "log", "--json").stdout.splitlines()]
    assert [e["status"] for e in logged] == ["done"] * 3  # the same prompts, done, on both
