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
  padded (at the small or the content floor), for prompts of several sizes, a batch, claims and
  heartbeats, presence, cancels, retries, stream chunks, results and the batches that mix them.

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
from typing import Any

from syncq import crypto, padding
from syncq.ids import DeviceId, PromptId
from syncq.records import Claim, ModelAd, NodeInfo, Result, Retry, RunStatus
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
    "Padding"), with the floor its writer chose by what it carries. Claims, heartbeats,
    presence, cancels, retries, stream chunks and device records are small and frequent: they
    pad to the small floor; prompts and results, and any batch with one, to the content floor."""
    with Space.init(root / "ovh", name="bench") as space:
        me = space.device_id
        ids = [space.add(f"seed {i}", model="echo").id for i in range(8)]
        at_once = space.prepare(NewPrompt(text=TEXT, model="echo"))
        late = space.prepare(NewPrompt(text=TEXT, model="echo"))
        small, content = padding.Floor.SMALL, padding.Floor.CONTENT
        written: dict[str, tuple[padding.Floor, Callable[[], object]]] = {
            f"prompt_{n}_bytes": (content, lambda n=n: space.add("x" * n, model="echo")) for n in PROMPT_SIZES
        }
        written |= {
            "batch_100_prompts": (
                content,
                lambda: space.add_many([NewPrompt(text=TEXT, model="echo")] * 100),
            ),
            "claim": (small, lambda: space.put_claim(_claim(ids[0], me, 1))),
            "heartbeat_1_claim": (small, lambda: space.put_claim(_claim(ids[0], me, 2))),
            "heartbeat_3_claims": (small, lambda: _claims(space, ids[:3], me, 3)),  # a model's depth
            "heartbeat_3_claims_again": (small, lambda: _claims(space, ids[:3], me, 4)),
            "heartbeat_8_claims": (small, lambda: _claims(space, ids, me, 5)),
            "presence_no_models": (small, lambda: space.put_node(_presence(me, 0))),
            "presence_3_models": (small, lambda: space.put_node(_presence(me, 3))),  # what `make run` serves
            "presence_6_models": (small, lambda: space.put_node(_presence(me, 6))),
            "cancel": (small, lambda: space.cancel(ids[3])),
            "retry": (small, lambda: space.write(lambda log: log.put_retry(_retry(ids[2], me)))),
            "device": (small, lambda: space.put_device(space._own_record())),
            "first_output_with_running_claim": (
                small,
                lambda: space.write(
                    lambda log: (
                        log.put_claim(_claim(ids[1], me, 6, running=True)),
                        log.append_stream(ids[1], WORDS),
                    )
                ),
            ),
            "stream_chunk": (small, lambda: space.append_stream(ids[1], WORDS)),
            "stream_chunk_4x": (small, lambda: space.append_stream(ids[1], WORDS * 4)),
            "stream_chunk_16x": (small, lambda: space.append_stream(ids[1], WORDS * 16)),
            "drop_stream": (small, lambda: space.drop_stream(ids[1])),
            "claims_with_a_prompt_run_at_once": (
                content,
                lambda: space.write(
                    lambda log: (log.put_prompt(late), log.put_claim(_claim(late.id, me, 1)))
                ),
            ),
            "run_at_once_prompt_claim_result": (
                content,
                lambda: space.write(
                    lambda log: (
                        log.put_prompt(at_once),
                        log.put_claim(_claim(at_once.id, me, 1)),
                        log.finish(_result(at_once.id, me, "y" * 200)),
                    )
                ),
            ),
            "result_200_bytes": (content, lambda: space.finish(_result(ids[0], me, "y" * 200))),
            "result_10000_bytes": (content, lambda: space.finish(_result(ids[1], me, "y" * 10_000))),
        }
        sizes = {name: _measure(space, floor, write) for name, (floor, write) in written.items()}
    chunk = sizes["stream_chunk"]
    return {
        "envelope_overhead_bytes": crypto.OVERHEAD,
        "padding_floor_bytes": {"small": int(small), "content": int(content)},
        "envelopes": sizes,
        "stream_chunk_chars": len(WORDS),
        "stream_bytes_per_s_unpadded": chunk["unpadded"] * STREAM_PER_S,
        "stream_bytes_per_s_padded": chunk["padded"] * STREAM_PER_S,
        "stream_bytes_per_s_at_the_content_floor": (crypto.OVERHEAD + int(content)) * STREAM_PER_S,
    }


PROMPT_SIZES = (10, 100, 900, 2000, 10_000, 100_000)
STREAM_PER_S = 10  # node.scheduler.STREAM_EVERY_S: a running job's output goes out every 100 ms
# 100 ms of a small model's answer on a laptop (about 100 tokens/s, 4 characters a token); the
# 4x and 16x chunks are a fast GPU's 400 and 1600 tokens/s.
WORDS = " the sky is blue because the air scatter"


def _claim(prompt_id: str, node: str, heartbeat: int, *, running: bool = False) -> Claim:
    return Claim(
        prompt_id=PromptId(prompt_id), node=DeviceId(node), attempt=1, heartbeat=heartbeat, running=running
    )


def _claims(space: Space, ids: list[PromptId], node: str, heartbeat: int) -> None:
    space.write(lambda log: [log.put_claim(_claim(p, node, heartbeat)) for p in ids])


def _presence(node: str, models: int) -> NodeInfo:
    served = [
        ModelAd(name="smollm2-135m", backend="llamacpp", loaded=True, size=270_600_000),
        ModelAd(name="gemma3-270m", backend="llamacpp", loaded=False, size=253_100_000),
        ModelAd(name="echo", backend="echo", loaded=True, size=0),
        ModelAd(name="whisper-small", backend="whisper", loaded=False, size=487_600_000),
        ModelAd(name="sd-turbo", backend="diffusers", loaded=False, size=5_210_000_000),
        ModelAd(name="qwen2.5-7b-instruct", backend="ollama", loaded=False, size=4_680_000_000),
    ]
    return NodeInfo(
        id=DeviceId(node), name="bench-laptop", version="0.17.0", last_seen=1_764_640_000_000,
        listen="http://192.168.178.20:7331", models=tuple(served[:models]),
    )  # fmt: skip


def _retry(prompt_id: str, node: str) -> Retry:
    return Retry(prompt_id=PromptId(prompt_id), by=DeviceId(node), at=1_764_640_000_000, max_attempts=6)


def _result(prompt_id: str, node: str, output: str) -> Result:
    return Result(
        prompt_id=PromptId(prompt_id), node=DeviceId(node), node_name="bench", attempt=1,
        status=RunStatus.DONE, output=output, started_at=1, finished_at=2,
    )  # fmt: skip


def _measure(space: Space, floor: padding.Floor, write: Callable[[], object]) -> dict[str, Any]:
    write()
    *_, data = space.envelopes()
    update = crypto.open_envelope(data, space.keys)[1]
    unpadded = len(update) + crypto.OVERHEAD
    # The writer chose the floor the table names (where the two floors differ, this tells).
    assert len(data) == crypto.OVERHEAD + padding.padded_size(len(update), floor), floor
    return {
        "floor": floor.name.lower(),
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
