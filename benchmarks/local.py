"""Local benchmarks of the encrypted log on one device; prints one JSON object.

Each figure comes with its anchor measured in the same run, so ratios survive a slower machine:

- cold `syncq add` (median of 10 processes) against a bare `python -c pass` and against
  `python -c "import click"` (the CLI framework alone);
- cold `syncq log -n 20` with 1k, 10k and 100k prompts (median of 5 processes, checkpoint
  and local view present) against loading the same Doc state into pycrdt directly, plus the
  first open after the prompts were added (replay of every envelope, then a checkpoint and the
  view are written); cold `syncq status` and `syncq show ID` on the same home, one
  `syncq log --grep`, and library adds one per call into it;
- memory (max RSS) of a process that opened a 100k space and listed it;
- library add throughput, one prompt per call and batched (``add_many``);
- bytes on disk per prompt, and envelope overhead against the raw Yjs update: unpadded and
  padded, for prompts of several sizes, a batch, claims, presence, a stream chunk and results.

Usage: python benchmarks/local.py [--sizes 1000,10000,100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from syncq import crypto, padding
from syncq.ids import DeviceId, PromptId
from syncq.records import Claim, NodeInfo, Result, RunStatus
from syncq.space import NewPrompt, Space

BIN = Path(sys.executable).parent
TEXT = "Summarise the following meeting notes in three bullet points: " + "lorem ipsum " * 20


def timed_runs(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def cold_add(root: Path) -> dict[str, object]:
    home = root / "add"
    Space.init(home, name="bench").close()
    # With bytecode caching, as an installed program runs; this sandbox sets
    # PYTHONDONTWRITEBYTECODE, which makes every start compile syncq from source: reported too.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["SYNCQ_HOME"] = str(home)
    cmd = [str(BIN / "syncq"), "add", "hello", "-m", "echo"]
    timed_runs(cmd, env, 2)  # writes the .pyc files
    add = timed_runs(cmd, env, 10)
    uncached = timed_runs(cmd, {**env, "PYTHONDONTWRITEBYTECODE": "1"}, 10)
    bare = timed_runs([sys.executable, "-c", "pass"], env, 10)
    click = timed_runs([sys.executable, "-c", "import click"], env, 10)
    return {
        "median_ms": ms(add),
        "min_ms": round(min(add) * 1000, 1),
        "median_ms_without_bytecode_cache": ms(uncached),
        "anchor_python_startup_ms": ms(bare),
        "anchor_import_click_ms": ms(click),
        "target_ms": 150,
    }


def fill(home: Path, n: int) -> tuple[float, int]:
    """n prompts in batches of 100 (one envelope per batch), as a busy client would add them."""
    start = time.perf_counter()
    with Space.init(home, name="bench") as space:
        for i in range(0, n, 100):
            space.add_many([NewPrompt(text=f"{TEXT} #{j}", model="echo") for j in range(i, min(n, i + 100))])
        envelopes = space.store.count()
    return time.perf_counter() - start, envelopes


def cold_log(root: Path, n: int) -> dict[str, object]:
    home = root / f"log-{n}"
    fill_s, envelopes = fill(home, n)
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    cmd = [str(BIN / "syncq"), "log", "-n", "20", "--json"]
    first = timed_runs(cmd, env, 1)  # replays every envelope, writes a checkpoint and the view
    steady = timed_runs(cmd, env, 5)
    status = timed_runs([str(BIN / "syncq"), "status", "--json"], env, 5)
    with Space.open(home) as space:
        newest = space.entries(limit=1)[0].prompt.id
    show = timed_runs([str(BIN / "syncq"), "show", newest, "--json"], env, 5)
    grep = timed_runs([str(BIN / "syncq"), "log", "--grep", "#7", "-n", "20", "--json"], env, 1)
    adds = add_rate(home)
    with Space.open(home) as space:
        state = space.log.state()
        size = space.store.size_bytes()
    anchor = (
        timed_runs([sys.executable, "-c", ANCHOR_LOAD, str(root / "state.bin")], env, 3)
        if _write(root / "state.bin", state)
        else []
    )
    rss = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(home)], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    return {
        "prompts": n,
        "envelopes": envelopes,
        "fill_s": round(fill_s, 2),
        "first_open_ms": ms(first),
        "cold_log_ms": ms(steady),
        "anchor_pycrdt_load_process_ms": ms(anchor),
        "ratio_to_anchor": round(statistics.median(steady) / statistics.median(anchor), 2),
        "cold_status_ms": ms(status),
        "cold_show_ms": ms(show),
        "cold_grep_ms": ms(grep),
        "library_adds_per_s_into_it": adds,
        "state_bytes": len(state),
        "store_bytes": size,
        "bytes_per_prompt": round(size / n),
        "max_rss_mb_open_and_list": float(rss),
    }


def add_rate(home: Path, n: int = 300) -> int:
    """Prompts a second through one open library Space into this home, one per call (durable)."""
    with Space.open(home) as space:
        start = time.perf_counter()
        for i in range(n):
            space.add(f"{TEXT} more {i}", model="echo")
        return round(n / (time.perf_counter() - start))


ANCHOR_LOAD = """
import sys
from pycrdt import Doc, Map
doc = Doc()
roots = [doc.get(n, type=Map) for n in ("prompts", "cancels", "claims", "results", "nodes", "devices")]
doc.apply_update(open(sys.argv[1], "rb").read())
ids = sorted(roots[0])[-20:]
[roots[0][i] for i in ids]
"""

# VmHWM, not ru_maxrss: ru_maxrss survives exec and so counts the forking parent's pages.
RSS_PROBE = """
import sys
from pathlib import Path
from syncq.space import Space
with Space.open(Path(sys.argv[1])) as space:
    space.entries(limit=20)
    space.status()
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(int(peak.split()[1]) / 1024)
"""


def _write(path: Path, data: bytes) -> bool:
    path.write_bytes(data)
    return True


def throughput(root: Path) -> dict[str, object]:
    with Space.init(root / "tp-single", name="bench") as space:
        n = 500
        start = time.perf_counter()
        for i in range(n):
            space.add(f"{TEXT} {i}", model="echo")
        single = n / (time.perf_counter() - start)
    with Space.init(root / "tp-batch", name="bench") as space:
        n = 20_000
        start = time.perf_counter()
        for i in range(0, n, 100):
            space.add_many([NewPrompt(text=f"{TEXT} {j}", model="echo") for j in range(i, i + 100)])
        batched = n / (time.perf_counter() - start)
    return {
        "single_add_per_s": round(single),
        "batched_100_per_s": round(batched),
        "target_per_s": 2000,
    }


def overhead(root: Path) -> dict[str, object]:
    """Bytes of real envelopes, each written as the node writes it: the Yjs update, the envelope
    it would be unpadded (version 1: the update and 156 bytes) and padded (version 2, PROTOCOL.md
    "Padding"). Claims, heartbeats, presence and stream chunks are small and frequent: they all
    pad up to the floor."""
    with Space.init(root / "ovh", name="bench") as space:
        me = space.device_id
        ids = [space.add(f"seed {i}", model="echo").id for i in range(2)]
        written: dict[str, Callable[[], object]] = {
            f"prompt_{n}_bytes": lambda n=n: space.add("x" * n, model="echo") for n in PROMPT_SIZES
        }
        written |= {
            "batch_100_prompts": lambda: space.add_many([NewPrompt(text=TEXT, model="echo")] * 100),
            "claim": lambda: space.put_claim(Claim(prompt_id=ids[0], node=me, attempt=1, heartbeat=1)),
            "claims_heartbeat_2": lambda: space.write(
                lambda log: [log.put_claim(Claim(prompt_id=p, node=me, attempt=1, heartbeat=2)) for p in ids]
            ),
            "presence": lambda: space.put_node(NodeInfo(id=me, name="bench", version="0", last_seen=1)),
            "stream_chunk": lambda: space.append_stream(ids[0], " the next few words"),
            "result_200_bytes": lambda: space.finish(_result(ids[0], me, "y" * 200)),
            "result_10000_bytes": lambda: space.finish(_result(ids[1], me, "y" * 10_000)),
        }
        sizes = {name: _measure(space, write) for name, write in written.items()}
    return {
        "envelope_overhead_bytes": crypto.OVERHEAD,
        "padding_floor_bytes": padding.FLOOR,
        "envelopes": sizes,
        "stream_bytes_per_s_unpadded": sizes["stream_chunk"]["unpadded"] * STREAM_PER_S,
        "stream_bytes_per_s_padded": sizes["stream_chunk"]["padded"] * STREAM_PER_S,
    }


PROMPT_SIZES = (10, 100, 900, 2000, 10_000, 100_000)
STREAM_PER_S = 10  # node.scheduler.STREAM_EVERY_S: a running job's output goes out every 100 ms


def _result(prompt_id: str, node: str, output: str) -> Result:
    return Result(
        prompt_id=PromptId(prompt_id), node=DeviceId(node), node_name="bench", attempt=1,
        status=RunStatus.DONE, output=output, started_at=1, finished_at=2,
    )  # fmt: skip


def _measure(space: Space, write: Callable[[], object]) -> dict[str, float]:
    write()
    *_, data = space.envelopes()
    update = crypto.open_envelope(data, space.keys)[1]
    unpadded = len(update) + crypto.OVERHEAD
    return {
        "update": len(update),
        "unpadded": unpadded,
        "padded": len(data),
        "padded_over_unpadded": round(len(data) / unpadded, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncq-bench-") as tmp:
        root = Path(tmp)
        report = {
            "benchmark": "local",
            "python": sys.version.split()[0],
            "cores": os.cpu_count(),
            "cold_add": cold_add(root),
            "cold_log": [cold_log(root, int(n)) for n in args.sizes.split(",")],
            "throughput": throughput(root),
            "overhead": overhead(root),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
