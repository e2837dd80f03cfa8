"""A node running several prompts of one model at once (``parallel``), real node processes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, wait_until

from syncq.lifecycle import Status
from syncq.space import NewPrompt, Space

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_node_runs_parallel_prompts_of_one_model_at_once(tmp_path: Path, nodes, parallel: int) -> None:
    home = tmp_path / "gpu"
    with Space.init(home, name="gpu") as space:
        (home / "config.toml").write_text(f"[node]\nparallel = {parallel}\n")
        added = space.add_many(
            [NewPrompt(text=f"prompt {i} of two", model="echo", params={"delay": 1.0}) for i in range(2)]
        )
    nodes(home)

    def finished() -> list | None:
        with Space.open(home) as space:
            entries = [space.log.entry(p.id) for p in added]
        return entries if all(e.status is Status.DONE for e in entries) else None

    first, second = sorted((e.result.started_at, e.result.finished_at) for e in wait_until(finished, 60))
    # The run of each (its started_at and finished_at, written by the node): with two workers
    # the second began before the first ended; with one it began after.
    assert (second[0] < first[1]) is (parallel == 2)


def test_a_bad_parallel_setting_is_refused_when_the_node_starts(tmp_path: Path) -> None:
    home = tmp_path / "gpu"
    Space.init(home, name="gpu").close()
    (home / "config.toml").write_text("[node]\nparallel = 0\n")
    done = subprocess.run(
        [SYNCQ, "--home", str(home), "node", "--listen", "127.0.0.1:0", "--no-api", "--no-discovery"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert re.search(r"parallel for \S+ must be a whole number from 1 to 16, not 0", done.stderr)
    assert "Traceback" not in done.stderr
