"""Execution benchmarks; each section prints one JSON object.

1. gemma3-270m, 20 prompts of 32 tokens each, the same prompts and seed, three ways:
   (a) direct llama-cpp-python calls in one process (the anchor);
   (b) llama_cpp.server (llama-cpp-python's OpenAI-compatible server) over HTTP, streaming,
       with the official ``openai`` client;
   (c) syncq: a running node with the model warm; (c1) library calls from another process
       (``Space.add``, then watching the store for the first streamed chunk and the result);
       (c2) the CLI, ``syncq add --wait`` (a new process per prompt, as a user types it).
   Each prompt goes through (a), (b) and (c1) in turn, so that a busy spell of the machine
   slows all three alike. Time to first token and total per prompt (medians), and syncq's
   overhead over (a): the median of the per-prompt differences.
   Target: overhead over (a) below 3% of total or 30 ms; faster than (b).
2. Three echo nodes, 1,000 prompts of 20 ms added on a fourth node without executors:
   throughput as a share of ideal (3 nodes x 50 prompts/s), and duplicate runs (target 0).
3. whisper: ~30 s of speech through whisper-tiny.en, syncq end to end (on the node's own home,
   and from a laptop home to a gpu home) against direct faster-whisper calls, interleaved.
   Target: overhead below 5%.
4. blobs: a 100 MiB attachment fetched by one node from another on loopback, against a plain
   websockets transfer of as many bytes. Target: at least 0.7x the anchor's MiB/s.
   Sections 3 and 4 live in attachments.py, whose docstring says what is measured and how.
5. cpu: the direct calls of (a) under each CPU option: the native build with and without
   llama.cpp's extra buffer types, a portable build if ``--portable-site`` names one, at 1 and
   2 threads, idle and with one core busy (llama_cpu.py says how).

Each section prints one JSON object when it ends ("benchmark": "exec" for 1, "exec.echo_mesh",
"exec.whisper", "exec.blobs", "exec.cpu"). Without section names, the first four run, in this
order.

Usage: python benchmarks/exec.py [llm] [echo] [whisper] [blobs] [cpu] [--prompts 20] [--echo 1000]
           [--whisper-rounds 5] [--blob-mib 100] [--blob-runs 3] [--blob-profile DIR]
           [--threads 1,2] [--portable-site DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attachments
import llama_cpu
from nodes import start_node, stop_node
from syncq.executors.cpu import default_threads, physical_cores
from syncq.executors.llama import model_path
from syncq.executors.models import discover

import syncq
from syncq.space import NewPrompt, Space
from syncq.store import Peer

BIN = Path(sys.executable).parent
PROMPTS = [f"Write a short note about topic number {i}: the sea, the sky and the stars." for i in range(100)]
PARAMS = {"max_tokens": 32, "seed": 42, "temperature": 0.0, "mode": "complete"}
THREADS = default_threads(physical_cores())  # what the node gives llama: the anchors get as many


def med(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def gguf(root: Path) -> str:
    """The bundled model's GGUF file, found and assembled as a node would."""
    return str(model_path(discover(root)["gemma3-270m"]))


class Direct:
    """(a) llama-cpp-python in this process."""

    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=2048, n_threads=THREADS, verbose=False)
        self.llm.create_completion("Hi", max_tokens=1)

    def __call__(self, text: str) -> tuple[float, float]:
        start, first = time.perf_counter(), None
        for _ in self.llm.create_completion(text, stream=True, max_tokens=32, seed=42, temperature=0.0):
            first = first or time.perf_counter()
        end = time.perf_counter()
        return (first or end) - start, end - start

    def close(self) -> None:
        self.llm.close()


class Server:
    """(b) llama_cpp.server over HTTP, streaming, with the official openai client."""

    def __init__(self, path: str) -> None:
        from openai import OpenAI

        port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                path,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                str(THREADS),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.model = self.client.models.list().data[0].id
                break
            except Exception:  # not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.client.completions.create(model=self.model, prompt="Hi", max_tokens=1)

    def __call__(self, text: str) -> tuple[float, float]:
        start, first = time.perf_counter(), None
        for _ in self.client.completions.create(
            model=self.model, prompt=text, max_tokens=32, seed=42, temperature=0.0, stream=True
        ):
            first = first or time.perf_counter()
        end = time.perf_counter()
        return (first or end) - start, end - start

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


class Library:
    """(c1) a running syncq node with the model warm, used through the Python API from here
    (``syncq.open``: it sleeps until the store changes, so it takes no CPU from llama)."""

    def __init__(self, home: Path) -> None:
        self.space = syncq.open(home)
        self.space.run("Hi", model="gemma3-270m", params={"max_tokens": 1}, timeout=120)

    def __call__(self, text: str) -> tuple[float, float]:
        start = time.perf_counter()
        prompt = self.space.add(text, model="gemma3-270m", params=PARAMS)
        first = None
        for _ in self.space.stream(prompt.id, timeout=120):
            first = first or time.perf_counter()
        outcome = self.space.result(prompt.id)
        end = time.perf_counter()
        if not outcome.ok:
            raise RuntimeError(outcome.error or str(outcome.status))
        return (first or end) - start, end - start

    def close(self) -> None:
        self.space.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interleaved(ways: dict[str, Any], prompts: list[str]) -> dict[str, dict[str, float]]:
    """Each prompt through every way in turn: a busy spell of this shared machine then slows
    all of them alike instead of whichever ran during it."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for text in prompts:
        for name, way in ways.items():
            times[name].append(way(text))
    return {
        name: {"ttft_ms": med([t for t, _ in got]), "total_ms": med([t for _, t in got])}
        for name, got in times.items()
    } | {
        "paired_overhead_ms": {
            name: med([c[1] - a[1] for c, a in zip(got, times["a_direct"], strict=True)])
            for name, got in times.items()
            if name != "a_direct"
        }
    }


def syncq_cli(home: Path, prompts: list[str]) -> dict[str, Any]:
    total = []
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    args = [f"--param={k}={v}" for k, v in PARAMS.items()]
    for text in prompts:
        start = time.perf_counter()
        subprocess.run(
            [str(BIN / "syncq"), "add", text, "-m", "gemma3-270m", "--wait", *args],
            env=env,
            check=True,
            capture_output=True,
        )
        total.append(time.perf_counter() - start)
    return {"total_ms": med(total)}


def echo_mesh(root: Path, n: int) -> dict[str, Any]:
    with Space.init(root / "laptop", name="laptop") as laptop:
        for i in range(3):
            Space.join(root / f"echo{i}", name=f"echo{i}", keys=laptop.keys).close()
    hub, url = start_node(root / "laptop", "--no-executors")
    workers = []
    for i in range(3):
        with Space.open(root / f"echo{i}") as s:
            s.store.save_peer(Peer(url=url, source="config"))
        workers.append(start_node(root / f"echo{i}")[0])
    try:
        with Space.open(root / "laptop") as space:
            deadline = time.monotonic() + 60
            while len(space.log.nodes()) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            start = time.perf_counter()
            added = space.add_many(
                [NewPrompt(text=f"p{i}", model="echo", params={"delay": 0.02}) for i in range(n)]
            )
            with syncq.open(root / "laptop") as client:  # waits on the store's writes: no polling
                for prompt in reversed(added):  # the last one is done last, the rest by then
                    client.result(prompt.id, timeout=600)
            seconds = time.perf_counter() - start
            entries = space.entries(limit=None)
            duplicates = sum(len(e.results) - 1 for e in entries)
            by_node = Counter(e.result.node_name for e in entries if e.result)
    finally:
        for proc in [hub, *workers]:
            stop_node(proc)
    ideal = n * 0.02 / 3
    return {
        "prompts": n,
        "seconds": round(seconds, 2),
        "ideal_seconds": round(ideal, 2),
        "share_of_ideal": round(ideal / seconds, 3),
        "duplicate_runs": duplicates,
        "by_node": dict(by_node),
    }


def llm(root: Path, prompts: list[str]) -> dict[str, Any]:
    """Section 1: gemma3-270m direct, through llama_cpp.server and through syncq."""
    path = gguf(root)
    Space.init(root / "node", name="gpu").close()
    node, _ = start_node(root / "node")
    ways: dict[str, Any] = {}
    try:
        ways = {
            "a_direct": Direct(path),
            "b_llama_cpp_server": Server(path),
            "c1_syncq_library": Library(root / "node"),
        }
        got = interleaved(ways, prompts)
        c2 = syncq_cli(root / "node", prompts)
    finally:
        for way in ways.values():
            way.close()
        stop_node(node)
    a, b, c1 = got["a_direct"], got["b_llama_cpp_server"], got["c1_syncq_library"]
    return {
        "benchmark": "exec",
        "model": "gemma3-270m",
        "prompts": len(prompts),
        "a_direct": a,
        "b_llama_cpp_server": b,
        "c1_syncq_library": c1,
        "c2_syncq_cli_wait": c2,
        "overhead_over_direct_ms": got["paired_overhead_ms"]["c1_syncq_library"],
        "overhead_over_direct_share": round(got["paired_overhead_ms"]["c1_syncq_library"] / a["total_ms"], 3),
        "server_overhead_over_direct_ms": got["paired_overhead_ms"]["b_llama_cpp_server"],
        "faster_than_server_ms": round(b["total_ms"] - c1["total_ms"], 1),
    }


SECTIONS = ("llm", "echo", "whisper", "blobs", "cpu")
DEFAULT_SECTIONS = ("llm", "echo", "whisper", "blobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)"
    )
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--echo", type=int, default=1000)
    parser.add_argument("--whisper-rounds", type=int, default=5)
    parser.add_argument("--blob-mib", type=int, default=100)
    parser.add_argument("--blob-runs", type=int, default=3)
    parser.add_argument(
        "--blob-profile", type=Path, help="run the blob section's nodes under cProfile, files here"
    )
    parser.add_argument("--threads", default="1,2", help="the cpu section's thread counts")
    parser.add_argument(
        "--portable-site", type=Path, help="the cpu section: a GGML_NATIVE=OFF llama-cpp-python, unpacked"
    )
    args = parser.parse_args()
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
    for section in args.sections or DEFAULT_SECTIONS:
        # One folder per section: each makes its own homes and nodes, and removes them.
        with tempfile.TemporaryDirectory(prefix=f"syncq-exec-bench-{section}-") as tmp:
            root = Path(tmp)
            if section == "llm":
                report = llm(root, PROMPTS[: args.prompts])
            elif section == "echo":
                report = {"benchmark": "exec.echo_mesh"} | echo_mesh(root, args.echo)
            elif section == "whisper":
                report = attachments.whisper(root, args.whisper_rounds)
            elif section == "cpu":
                threads = [int(n) for n in args.threads.split(",")]
                report = llama_cpu.run(gguf(root), PROMPTS[: args.prompts], threads, args.portable_site)
            else:
                report = attachments.blobs(root, args.blob_mib, args.blob_runs, args.blob_profile)
        print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
