"""Real processes against one home: concurrent writers, and kill -9 at random moments."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from syncq.space import Space

SYNCQ = str(Path(sys.executable).parent / "syncq")

pytestmark = pytest.mark.slow


def test_two_processes_adding_at_once_lose_nothing(space: Space, home: Path) -> None:
    loop = 'for i in $(seq 200); do "$SYNCQ" add "worker $W prompt $i" -m echo || echo FAILED >&2; done'
    env = {**os.environ, "SYNCQ": SYNCQ, "SYNCQ_HOME": str(home)}
    workers = [
        subprocess.Popen(
            ["bash", "-c", loop],
            env={**env, "W": str(w)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for out, err in outputs:
        assert err == "", err  # no "database is locked", no traceback
        assert len(out.split()) == 200
    printed = {line for out, _ in outputs for line in out.split()}
    assert len(printed) == 400
    assert set(space.log.prompt_ids()) == printed
    seqs = [row.seq for row in space.store.rows(space.device.public_key)]
    assert seqs == list(range(1, 402))  # the device record, then 400 adds, gapless


CHILD = """
import sys
from pathlib import Path
from syncq.space import Space

space = Space.open(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    prompt = space.add(f"crash test {sys.argv[2]}-{i}", model="echo")
    print(prompt.id, flush=True)
    if i % 25 == 0:
        space.checkpoint()
"""


def test_kill_9_at_random_moments_loses_no_acknowledged_add(space: Space, home: Path) -> None:
    space.close()
    rng = random.Random(1234)
    acknowledged: set[str] = set()
    for round_ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(home), str(round_)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        for _ in range(rng.randint(0, 60)):
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.add(line.strip())
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        acknowledged.update(rest.split())  # printed before the kill landed: acknowledged too
        assert child.returncode == -signal.SIGKILL
    with Space.open(home) as reopened:
        present = set(reopened.log.prompt_ids())
        assert acknowledged <= present
        seqs = [row.seq for row in reopened.store.rows(reopened.device.public_key)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(present) == len(seqs) - 1
        assert reopened.status().rejected == {}
