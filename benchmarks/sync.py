"""Sync benchmarks; prints one JSON object.

1. Backlog: node A holds N prompts added offline; node B (empty) connects; time and bytes (the
   websocket message payloads, both ways) until B's store holds every envelope and B's Doc every
   prompt. Both nodes run in this process on one event loop, as the anchor's server and client
   do. Two shapes of backlog: prompts added 100 per call (``add_many``: one envelope per call)
   and one per call (one envelope per prompt, what N separate `syncq add` make), and one per
   call again with A holding a snapshot of them (B is sent the snapshot: issue 17).
   Anchor, in the same run: pycrdt-websocket serving a plain Doc with the same N records to a
   fresh client (``anchor_pycrdt_websocket.py``). Target: <= 1.3x its time and bytes.
2. Live latency: nodes A and B run as processes and are connected; a third process (this one)
   adds 200 prompts to A's home with library calls, one at a time; for each, the time until
   B's database holds it (watched through SQLite's data_version). Target p50 < 15 ms, p99 < 50 ms.

Usage: python benchmarks/sync.py [--records 10000] [--repeats 3] [--adds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import anchor_pycrdt_websocket as anchor
from nodes import start_node
from syncq.node.daemon import Node
from syncq.node.logs import NodeLog

from syncq.snapshots import dominates
from syncq.space import NewPrompt, Space

BIN = Path(sys.executable).parent


def make_backlog(home: Path, n: int, per_call: int) -> Space:
    space = Space.init(home, name="a")
    for start in range(0, n, per_call):
        space.add_many(
            [
                NewPrompt(text=json.loads(anchor.record_json(i))["input"], model="echo")
                for i in range(start, min(n, start + per_call))
            ]
        )
    return space


async def backlog_once(root: Path, source: Path, n: int) -> dict[str, Any]:
    a = Space.open(source)
    b = Space.join(root / f"b-{time.monotonic_ns()}", name="b", keys=a.keys)
    b.log  # load the (empty) Doc, so received envelopes are applied as they arrive  # noqa: B018
    quiet = NodeLog(json_lines=True, stream=open(os.devnull, "w"))  # noqa: SIM115
    # Neither writes a snapshot during the run (A's, if any, was written before).
    node_a = Node(a, host="127.0.0.1", port=0, log=quiet, discovery=False, snapshot_every=0)
    node_b = Node(b, host="127.0.0.1", port=0, log=quiet, discovery=False, snapshot_every=0)
    tasks = [asyncio.create_task(node_a.run())]
    while not node_a.url:
        await asyncio.sleep(0.001)
    tasks.append(asyncio.create_task(node_b.run()))
    while not node_b.url:
        await asyncio.sleep(0.001)
    target = a.version_vector()  # every envelope of a (or a snapshot covering it)
    start = time.perf_counter()
    node_b.add_peer(node_a.url, "config")
    while len(b.log) < n or not dominates(b.version_vector(), target):
        await asyncio.sleep(0.001)
    seconds = time.perf_counter() - start
    taken = sum(c.peering.snapshots_taken for c in node_b.connections.values())
    conn = next(iter(node_b.connections.values()))
    wire = conn.bytes_in + conn.bytes_out
    node_a.stop()
    node_b.stop()
    await asyncio.gather(*tasks)
    a.close()
    b.close()
    return {"seconds": seconds, "bytes": wire, "snapshots": taken}


def backlog(root: Path, n: int, repeats: int, per_call: int, snapshot: bool = False) -> dict[str, Any]:
    source = root / f"a-{per_call}"
    if not source.exists():
        make_backlog(source, n, per_call).close()
    if snapshot:
        shutil.copytree(source, root / "a-snapshot")
        source = root / "a-snapshot"
        with Space.open(source) as a:
            a.replica.write_snapshot(a.device)
    runs = [asyncio.run(backlog_once(root, source, n)) for _ in range(repeats)]
    with Space.open(source) as a:
        envelopes = a.store.count()
    return {
        "prompts_per_envelope": per_call,
        "from_snapshot": snapshot,
        "snapshots_taken": runs[-1]["snapshots"],
        "envelopes": envelopes,
        "seconds": round(statistics.median(r["seconds"] for r in runs), 4),
        "bytes": int(statistics.median(r["bytes"] for r in runs)),
    }


def live_latency(root: Path, adds: int) -> dict[str, Any]:
    with Space.init(root / "la", name="a") as a:
        Space.join(root / "lb", name="b", keys=a.keys).close()
    node_a, url_a = start_node(root / "la")
    node_b, _ = start_node(root / "lb", "--peer", url_a)
    watch = sqlite3.connect(root / "lb" / "syncq.db", isolation_level=None)
    try:
        count = lambda: watch.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0]  # noqa: E731
        deadline = time.monotonic() + 30
        while count() < 4 and time.monotonic() < deadline:  # both device and presence records
            time.sleep(0.01)
        latencies = []
        rng = random.Random(7)
        with Space.open(root / "la") as a:
            for i in range(adds):
                time.sleep(rng.uniform(0, 0.01))  # random phase against the nodes' 5 ms watch tick
                before = count()
                start = time.perf_counter()
                a.add(f"live {i}", model="echo")
                version = None
                while True:
                    now = watch.execute("PRAGMA data_version").fetchone()[0]
                    if now != version:
                        version = now
                        if count() > before:
                            break
                    time.sleep(0.0002)
                latencies.append(time.perf_counter() - start)
    finally:
        watch.close()
        for proc in (node_a, node_b):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    latencies.sort()
    return {
        "adds": adds,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "target_p50_ms": 15,
        "target_p99_ms": 50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adds", type=int, default=200)
    args = parser.parse_args()
    reference = anchor.run(args.records, args.repeats)
    with tempfile.TemporaryDirectory(prefix="syncq-sync-bench-") as tmp:
        root = Path(tmp)
        shapes = [backlog(root, args.records, args.repeats, per_call) for per_call in (100, 1)]
        shapes.append(backlog(root, args.records, args.repeats, 1, snapshot=True))
        # The anchor again, after: the machine's load moved meanwhile (the median of both counts).
        again = anchor.run(args.records, args.repeats)
        reference = {
            "seconds": statistics.median([reference["seconds"], again["seconds"]]),
            "bytes": reference["bytes"],
            "seconds_before_after": [reference["seconds"], again["seconds"]],
        }
        for shape in shapes:
            shape["time_ratio_to_anchor"] = round(shape["seconds"] / reference["seconds"], 2)
            shape["bytes_ratio_to_anchor"] = round(shape["bytes"] / reference["bytes"], 3)
        report = {
            "benchmark": "sync",
            "records": args.records,
            "anchor_pycrdt_websocket": reference,
            "backlog": shapes,
            "live": live_latency(root, args.adds),
            "target_ratio": 1.3,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
