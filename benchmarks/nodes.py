"""Helpers the benchmarks share: real `syncq node` processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

BIN = Path(sys.executable).parent


def start_node(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `syncq node`; its log is drained by a thread (a full pipe would stall the node)."""
    proc = subprocess.Popen(
        [
            str(BIN / "syncq"),
            "--home",
            str(home),
            "node",
            "--listen",
            "127.0.0.1:0",
            "--no-discovery",
            "--json-log",
            *([] if "--api" in args else ["--no-api"]),  # benchmarks run several nodes at once
            *args,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "listening":
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, event["url"]
    raise RuntimeError("node did not start")


def stop_node(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then wait for a clean exit."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
