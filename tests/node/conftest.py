from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import NodeProcess


@pytest.fixture
def nodes() -> Iterator[Callable[..., NodeProcess]]:
    """Start node processes; every one is stopped at the end of the test."""
    started: list[NodeProcess] = []

    def start(home: Path, *args: str, port: int = 0, discovery: bool = False) -> NodeProcess:
        node = NodeProcess(home, *args, port=port, discovery=discovery).start()
        started.append(node)
        return node

    yield start
    for node in started:
        if node.alive:
            node.stop()
