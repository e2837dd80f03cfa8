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
- bytes on disk per prompt, and envelope overhead against the raw Yjs update.

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
from pathlib import Path

from syncq import crypto, yjs
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
    with Space.init(root / "ovh", name="bench") as space:
        one = [("01M880YASPKYQXRC5ZMSDQP441", {"model": "echo", "input": TEXT})]
        update = yjs.encode_map_inserts(1, 0, "prompts", one)
        envelope = crypto.seal(device=space.device, space=space.keys, seq=1, payload=update, nonce=bytes(12))
        batch = [(f"01M880YASPKYQXRC5ZMSDQP{i:03d}", {"model": "echo", "input": TEXT}) for i in range(100)]
        batch_update = yjs.encode_map_inserts(1, 0, "prompts", batch)
    return {
        "envelope_overhead_bytes": crypto.OVERHEAD,
        "single_prompt_update_bytes": len(update),
        "single_prompt_envelope_bytes": len(envelope),
        "single_prompt_ratio": round(len(envelope) / len(update), 3),
        "batch_100_ratio": round((len(batch_update) + crypto.OVERHEAD) / len(batch_update), 4),
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
