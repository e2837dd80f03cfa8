"""How fast the Python API wakes when a result lands in the store; prints one JSON object.

A writer process stands in for the node: it writes a prompt's result into the home's store and
reports the (system-wide) monotonic time right after the commit. The waiter, in this process,
is blocked in ``space.result`` (blocking face) or ``await space.result`` (asyncio face) and
notes when it returns. Wake latency = return time - commit time, over ``--rounds`` prompts.

Anchor, in the same run: a waiter that polls SQLite's ``data_version`` every 5 ms (what the
CLI's ``--wait`` does). Reported with each: the waiter's CPU time per second of waiting, the
cost of waiting for a result that takes long. Target (issue 7): wake within 50 ms.

Usage: python benchmarks/api.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import syncq
from syncq.lifecycle import Status
from syncq.space import Space

WRITER = """
import sys, time
from syncq.space import Space
from syncq.records import Result, RunStatus
with Space.open(sys.argv[1]) as space:
    for line in sys.stdin:
        prompt_id, delay = line.split()
        time.sleep(float(delay))
        space.finish(Result(prompt_id=prompt_id, node=space.device_id, node_name="writer", attempt=1,
                            status=RunStatus.DONE, output="ok", started_at=1, finished_at=2))
        print(time.monotonic(), flush=True)
"""


def writer(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


class Rounds:
    """The writer process and the figures of one way of waiting."""

    def __init__(self, home: Path, delay: float) -> None:
        self.proc = writer(home)
        self.delay = delay
        self.latencies: list[float] = []
        self.cpu = self.waited = 0.0

    def landing(self, prompt_id: str) -> tuple[float, float]:
        """Ask the writer to land a result after ``delay``; the clocks at the start of waiting."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{prompt_id} {self.delay}\n")
        self.proc.stdin.flush()
        return time.monotonic(), time.process_time()

    def woke(self, started: tuple[float, float]) -> None:
        assert self.proc.stdout is not None
        now = time.monotonic()
        self.cpu += time.process_time() - started[1]
        self.waited += now - started[0]
        self.latencies.append((now - float(self.proc.stdout.readline())) * 1000)

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        got = sorted(self.latencies)
        return {
            "wake_ms_p50": round(statistics.median(got), 2),
            "wake_ms_p99": round(got[max(0, int(len(got) * 0.99) - 1)], 2),
            "wake_ms_max": round(got[-1], 2),
            "cpu_ms_per_s_waiting": round(self.cpu / self.waited * 1000, 1),
        }


def blocking(
    home: Path, space: syncq.Client, rounds: int, delay: float, wait: Callable[[str], None]
) -> dict[str, Any]:
    measured = Rounds(home, delay)
    for i in range(rounds):
        prompt = space.add(f"p{i}", model="nobody")
        started = measured.landing(prompt.id)
        wait(prompt.id)
        measured.woke(started)
    return measured.report()


async def asynchronous(home: Path, rounds: int, delay: float) -> dict[str, Any]:
    measured = Rounds(home, delay)
    async with syncq.aopen(home) as space:
        for i in range(rounds):
            prompt = space.add(f"p{i}", model="nobody")
            started = measured.landing(prompt.id)
            await space.result(prompt.id, timeout=30)
            measured.woke(started)
    return measured.report()


def polling(space: Space, prompt_id: str) -> None:
    version = None
    while True:
        now = space.store.data_version()
        if now != version:
            version = now
            if space.log.status(prompt_id) is Status.DONE:
                return
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before each result lands")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncq-api-bench-") as tmp:
        home = Path(tmp) / "home"
        Space.init(home, name="bench").close()
        with syncq.open(home) as space:
            anchor = blocking(home, space, args.rounds, args.delay, lambda p: polling(space.space, p))
            waited = blocking(
                home, space, args.rounds, args.delay, lambda p: space.result(p, timeout=30) and None
            )
        awaited = asyncio.run(asynchronous(home, args.rounds, args.delay))
    print(
        json.dumps(
            {
                "benchmark": "api",
                "rounds": args.rounds,
                "anchor_poll_5ms": anchor,
                "blocking": waited,
                "asyncio": awaited,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
