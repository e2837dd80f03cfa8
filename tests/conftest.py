"""Shared fixtures: real homes in temporary folders, real SQLite files, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import NodeProcess
from proxy import Proxy

from syncq.space import Space

SYNCQ = [sys.executable, "-m", "syncq.cli"]

# The echo executor's test knobs (delay, fail, crash, hang) work only in processes started for
# tests: every node and command the suite starts inherits this. tests/node/test_api_security.py
# starts one without it.
os.environ["SYNCQ_TEST_KNOBS"] = "1"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home path that does not exist yet."""
    return tmp_path / "home"


@pytest.fixture
def space(home: Path) -> Iterator[Space]:
    """A freshly initialised space."""
    with Space.init(home, name="laptop") as s:
        yield s


@pytest.fixture
def member(tmp_path: Path, space: Space) -> Callable[[str], Space]:
    """Make another device of the same space in its own home (what `syncq join` will do)."""
    made: list[Space] = []

    def make(name: str) -> Space:
        s = Space.init(tmp_path / name, name=name, secret=space.keys.secrets[0])
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def run_syncq(
    home: Path, *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `syncq` command in a child process against ``home``."""
    env = {**os.environ, "SYNCQ_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [*SYNCQ, *args], input=input, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.fixture
def nodes() -> Iterator[Callable[..., NodeProcess]]:
    """Start node processes; every one is stopped at the end of the test."""
    started: list[NodeProcess] = []

    def start(home: Path, *args: str, port: int = 0, discovery: bool = False) -> NodeProcess:
        for _ in range(40):
            try:
                node = NodeProcess(home, *args, port=port, discovery=discovery).start()
                break
            except AssertionError as exc:
                # A node restarted on its old port: that port is an ephemeral one, which another
                # process (or a peer's dial, connected to itself) may hold for a moment.
                if not port or "address already in use" not in str(exc):
                    raise
                time.sleep(0.25)
        else:
            pytest.fail(f"port {port} stayed taken for 10 s")
        started.append(node)
        return node

    yield start
    for node in started:
        if node.alive:
            node.stop()


@pytest.fixture
def proxies() -> Iterator[Callable[[int], Proxy]]:
    """Fault-injecting TCP proxies in front of a port; every one is closed at the end."""
    made: list[Proxy] = []

    def make(port: int) -> Proxy:
        made.append(Proxy(port))
        return made[-1]

    yield make
    for p in made:
        p.close()
