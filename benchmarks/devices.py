"""Device removal benchmark; prints one JSON object.

Five real `syncq node` processes of one space on loopback: the founder ``a`` (the hub), members
``b``, ``c``, ``d`` and the device to remove, ``x``; every other node dials ``a``. Each round
joins a fresh ``x`` (a one-time invite, admitted by ``a`` through the library calls the join
handshake makes), waits until every node admits it,
then runs ``syncq devices remove x --yes`` in ``a``'s home and measures:

- ``admit_ms``: from the start of the command until no node admits ``x`` any more: each node's
  home is polled (``Space.peer_refusal``, what the sync handshake asks) every few ms, so the
  figure is an upper bound by about the poll period;
- ``closed_ms``: until ``x``'s node logs that its session with ``a`` was closed with 4410;
- ``command_ms``: until the command exits (a Python process start, about half of it);
- ``anchor_add_ms`` (the anchor, measured in each round just before the removal): from the start
  of a ``syncq add`` in ``a``'s home until the prompt is in every other home, polled the same
  way: one envelope's way through the same mesh, Python start included. A removal is two
  envelopes on that way, plus the session each node closes;
- ``rotation_bytes``: the envelopes ``a`` wrote for the removal (the device-list envelope, the
  keys envelope sealing the new epoch to every remaining device, the log envelope that revokes
  pending invites, and ``a``'s node re-announcing itself under the new epoch), in envelopes and
  bytes as stored: what every replica then holds and every peer is sent once.

Usage: python benchmarks/devices.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from nodes import BIN, node_command, stop_node

from syncq.crypto import DeviceKeys
from syncq.invite import decode_invite
from syncq.space import Space

MEMBERS = ("b", "c", "d")
POLL_S = 0.005


class Node:
    """A `syncq node` process whose JSON log lines are kept (read by a thread)."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            node_command(home, "--no-executors", *args), stdout=subprocess.PIPE, text=True
        )
        self._listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(60):
            raise RuntimeError(f"node in {home} did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == "listening":
                self.url = str(event["url"])
                self._listening.set()

    def closed_4410(self) -> bool:
        return any(e.get("code") == 4410 for e in list(self.events))


def syncq(home: Path, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "syncq"), "--home", str(home), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"syncq {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def join(home: Path, hub: Node, name: str) -> None:
    """A device admitted by the hub's home with a fresh invite, through the calls the join
    handshake makes (what is timed here is removal, not joining), dialling the hub."""
    with Space.open(hub.home) as member:
        code, _ = member.create_invite(addresses=[hub.url])
        device = DeviceKeys.from_seed(os.urandom(64))
        grant = member.admit(
            decode_invite(code).id, device=device.public_key, exchange=device.exchange_public_key, name=name
        )
    Space.join_granted(home, device=device, name=name, grant=grant).close()
    syncq(home, "peers", "add", hub.url)


def wait(condition: Any, what: str, timeout: float = 60) -> float:
    """Poll ``condition`` every POLL_S; the time.perf_counter() at which it first held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    return time.perf_counter()


def refusals(homes: list[Path], device: bytes) -> list[str | None]:
    """What each home's node says of a session with ``device`` (None: it admits it)."""
    found = []
    for home in homes:
        with Space.open(home) as space:
            found.append(space.peer_refusal(device))
    return found


def stored(home: Path, author: bytes) -> tuple[int, int]:
    """The envelopes ``author`` wrote in a home's store, and their bytes."""
    db = sqlite3.connect(f"file:{home / 'syncq.db'}?mode=ro", uri=True)
    try:
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM envelopes WHERE author = ?", (author,)
        ).fetchone()
    finally:
        db.close()
    return int(count), int(size)


def holds(homes: list[Path], text: str) -> bool:
    for home in homes:
        with Space.open(home) as space:
            if text not in {e.prompt.input for e in space.entries(limit=5)}:
                return False
    return True


def anchor(hub: Node, members: list[Node], n: int) -> float:
    """ms from the start of a `syncq add` in the hub's home until every member holds it."""
    text = f"anchor {n}"
    start = time.perf_counter()
    subprocess.Popen(
        [str(BIN / "syncq"), "--home", str(hub.home), "add", text, "-m", "echo"], stdout=subprocess.DEVNULL
    )
    done = wait(lambda: holds([m.home for m in members], text), "the anchor prompt everywhere")
    return round((done - start) * 1000, 1)


def one_round(root: Path, hub: Node, members: list[Node], n: int) -> dict[str, Any]:
    home = root / f"x{n}"
    join(home, hub, f"x{n}")
    with Space.open(home) as space:
        device = space.device.public_key
    with Space.open(hub.home) as space:
        author = space.device.public_key
    x = Node(home)
    try:
        homes = [hub.home, *(m.home for m in members)]
        wait(lambda: not any(refusals(homes, device)), "every node to list x")
        anchor_ms = anchor(hub, members, n)
        before = stored(hub.home, author)
        command = [str(BIN / "syncq"), "--home", str(hub.home), "devices", "remove", f"x{n}", "--yes"]
        start = time.perf_counter()
        removal = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        exited: list[float] = []
        waiter = threading.Thread(target=lambda: (removal.wait(60), exited.append(time.perf_counter())))
        waiter.start()
        refused = wait(lambda: all(refusals(homes, device)), "no node to admit x")
        try:
            closed: float | None = wait(x.closed_4410, "x's session to close with 4410", timeout=30)
        except RuntimeError:
            closed = None  # a node that does not close a removed peer's session (no 4410 yet)
        waiter.join(60)
        if removal.returncode != 0:
            raise RuntimeError("syncq devices remove failed")
        after = stored(hub.home, author)
    finally:
        stop_node(x.proc)
    return {
        "anchor_add_ms": anchor_ms,
        "command_ms": round((exited[0] - start) * 1000, 1),
        "admit_ms": round((refused - start) * 1000, 1),
        "closed_ms": None if closed is None else round((closed - start) * 1000, 1),
        "rotation_envelopes": after[0] - before[0],
        "rotation_bytes": after[1] - before[1],
    }


def _median(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncq-devices-bench-") as tmp:
        root = Path(tmp)
        syncq(root / "a", "init", "--name", "a")
        hub = Node(root / "a")
        members: list[Node] = []
        try:
            for name in MEMBERS:
                join(root / name, hub, name)
                members.append(Node(root / name))
            rounds = [one_round(root, hub, members, n) for n in range(args.rounds)]
        finally:
            for node in [hub, *members]:
                stop_node(node.proc)
    report = {
        "benchmark": "devices",
        "nodes": 2 + len(MEMBERS),
        "rounds": rounds,
        "command_ms_median": statistics.median(r["command_ms"] for r in rounds),
        "admit_ms_median": statistics.median(r["admit_ms"] for r in rounds),
        "anchor_add_ms_median": statistics.median(r["anchor_add_ms"] for r in rounds),
        "admit_over_anchor": round(
            statistics.median(r["admit_ms"] for r in rounds)
            / statistics.median(r["anchor_add_ms"] for r in rounds),
            2,
        ),
        "closed_ms_median": _median([r["closed_ms"] for r in rounds]),
        "rotation_bytes_median": statistics.median(r["rotation_bytes"] for r in rounds),
        "poll_ms": POLL_S * 1000,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
