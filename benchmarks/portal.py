"""Ways in: the file portal and the HTTP API, each against its anchor; prints one JSON object.

1. Portal round trip with the echo executor (no delay): a request folder renamed into the inbox
   until its folder appears in the outbox with the answer. Anchor, same run: a bare program that
   watches a folder with inotify and renames each folder that arrives straight into an outbox,
   measured the same way (target: the portal within 5 ms of it).
2. API round trip: a chat completion with echo over HTTP, against the same prompt through
   `syncq add --wait` (a process per prompt, as a user types it).

Usage: python benchmarks/portal.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nodes import start_node, stop_node

from syncq.space import Space
from syncq.watch import FolderWatch

BIN = Path(sys.executable).parent
ANCHOR = """
import os, sys
from pathlib import Path
from syncq.watch import FolderWatch
inbox, outbox = Path(sys.argv[1]), Path(sys.argv[2])
watch = FolderWatch(inbox)
print("ready", flush=True)
while True:
    watch.wait(1.0)
    for entry in os.listdir(inbox):
        os.rename(inbox / entry, outbox / entry)
"""


def stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 2),
    }


def round_trips(inbox: Path, outbox: Path, staging: Path, rounds: int) -> list[float]:
    """Rename request folders into ``inbox`` one at a time; time each until ``outbox`` has it."""
    watch = FolderWatch(outbox)
    times = []
    try:
        for i in range(rounds):
            folder = staging / f"r{i}"
            folder.mkdir()
            (folder / "request.yaml").write_text(f"model: echo\nprompt: round {i}\n")
            before = len(os.listdir(outbox))
            start = time.perf_counter()
            os.rename(folder, inbox / folder.name)
            while len(os.listdir(outbox)) == before:
                watch.wait(1.0)
            times.append(time.perf_counter() - start)
    finally:
        watch.close()
    return times


def anchor(root: Path, rounds: int) -> list[float]:
    inbox, outbox, staging = root / "in", root / "out", root / "staging-anchor"
    for folder in (inbox, outbox, staging):
        folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", ANCHOR, str(inbox), str(outbox)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return round_trips(inbox, outbox, staging, rounds)
    finally:
        proc.kill()
        proc.wait()


def api_round_trips(url: str, rounds: int) -> list[float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    times = []
    for i in range(rounds):
        body = json.dumps(
            {"model": "echo", "messages": [{"role": "user", "content": f"api round {i}"}]}
        ).encode()
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        times.append(time.perf_counter() - start)
        assert answer["choices"][0]["message"]["content"] == f"api round {i}", answer
    conn.close()
    return times


def cli_round_trips(home: Path, rounds: int) -> list[float]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        subprocess.run(
            [str(BIN / "syncq"), "add", f"cli round {i}", "-m", "echo", "--wait"],
            env=env,
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncq-portal-bench-") as tmp:
        root = Path(tmp)
        Space.init(root / "home", name="bench").close()
        port = free_port()
        node, _ = start_node(root / "home", "--api", f"127.0.0.1:{port}")
        try:
            portal = root / "home" / "portal"
            deadline = time.monotonic() + 30
            while not (portal / "outbox").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            (root / "staging").mkdir()
            warm = root / "warm"
            warm.mkdir()
            round_trips(portal / "inbox", portal / "outbox", warm, 3)  # loads the echo worker
            bare = stats(anchor(root, args.rounds))
            through = stats(round_trips(portal / "inbox", portal / "outbox", root / "staging", args.rounds))
            url = f"http://127.0.0.1:{port}"
            api = stats(api_round_trips(url, args.rounds))
            cli = stats(cli_round_trips(root / "home", min(args.rounds, 20)))
        finally:
            stop_node(node)
    report: dict[str, Any] = {
        "benchmark": "portal",
        "rounds": args.rounds,
        "anchor_bare_inotify_rename": bare,
        "portal_round_trip": through,
        "portal_over_anchor_p50_ms": round(through["p50_ms"] - bare["p50_ms"], 2),
        "api_chat_completion": api,
        "cli_add_wait": cli,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
