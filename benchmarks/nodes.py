"""Helpers the benchmarks share: real `syncq node` processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def node_command(home: Path, *args: str, syncq: tuple[str, ...] = (str(BIN / "syncq"),)) -> list[str]:
    """`syncq node` on loopback, with a JSON log and no discovery (and no API unless asked)."""
    quiet = [] if "--api" in args else ["--no-api"]  # benchmarks run several nodes at once
    listen = ["--listen", "127.0.0.1:0", "--no-discovery", "--json-log"]
    return [*syncq, "--home", str(home), "node", *listen, *quiet, *args]


def start_node(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `syncq node`; the rest of its log is drained by a process of its own (a full
    pipe would stall the node, and a thread of this process drained it late: it waits for the
    GIL behind the benchmark's own clients, and the node's log lines then blocked it)."""
    proc = subprocess.Popen(node_command(home, *args), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "listening":
            subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
            proc.stdout.close()
            return proc, event["url"]
    raise RuntimeError("node did not start")


def stop_node(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then wait for a clean exit."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
