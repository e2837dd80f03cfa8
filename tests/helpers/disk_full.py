"""Scenarios on a disk that fills, run inside a private mount namespace on a small tmpfs
(tests/syncq/test_disk_full.py starts this under ``unshare``). Each prints one JSON object of
what it saw; the test judges it.

    python tests/helpers/disk_full.py library|node MOUNT WORK
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import SYNCQ, NodeProcess, wait_until
from spaces import join

from syncq.errors import DiskFull
from syncq.space import Space

ROOM = 150_000  # bytes left free once the ballast is in: a few prompts' worth


def fill(mount: Path) -> Path:
    """Leave ``ROOM`` bytes free on the mount; returns the ballast file to delete later."""
    ballast = mount / "ballast"
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    with open(ballast, "wb") as out:
        out.write(b"\0" * max(0, free - ROOM))
    return ballast


def cli(home: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [SYNCQ, *args],
        env={**os.environ, "SYNCQ_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def ids(home: Path) -> set[str]:
    with Space.open(home) as space:
        return {e.prompt.id for e in space.entries(limit=None)}


def library(mount: Path, work: Path) -> dict[str, Any]:
    """Adds until the disk is full, through the library and the CLI; reads on the full disk;
    reopens; frees the space and adds again."""
    home = mount / "home"
    space = Space.init(home, name="laptop", device_list=True)
    before = [space.add(f"before {i}", model="echo").id for i in range(3)]
    with join(work / "other", space, "other") as other:
        before += [other.add(f"from the other {i}", model="echo").id for i in range(20)]
        space.receive(list(other.envelopes(space.version_vector())))
    space.store.close()  # killed: the view (a cache) never caught up with what was received
    ballast = fill(mount)
    acked: list[str] = []
    refusal = ""
    with Space.open(home) as space:
        for i in range(10_000):
            try:
                acked.append(space.add(f"{i} " + "x" * 2_000, model="echo").id)
            except DiskFull as exc:
                refusal = str(exc)
                break
    seen = {
        "refusal": refusal,
        "acked": len(acked),
        "cli_add": cli(home, "add", "on a full disk", "-m", "echo"),
        "cli_log": cli(home, "log", "-n", "5", "--json"),
        "cli_status": cli(home, "status", "--json"),
    }
    held = ids(home)  # opened again, on the full disk
    seen["lost"] = sorted(set(before + acked) - held)
    ballast.unlink()
    seen["cli_add_after"] = cli(home, "add", "room again", "-m", "echo")
    seen["after"] = len(ids(home)) - len(held)
    return seen


def node(mount: Path, work: Path) -> dict[str, Any]:
    """A node whose disk fills while a peer sends it prompts: it refuses them (the session ends
    and is retried), stays up, loses nothing, and takes them all once space is freed."""
    full_home, peer_home = mount / "full", work / "peer"
    with Space.init(full_home, name="full", device_list=True) as first:
        join(peer_home, first, "peer").close()
        before = [first.add(f"before {i}", model="echo").id for i in range(3)]
    full = NodeProcess(full_home, "--no-executors").start()
    peer = NodeProcess(peer_home, "--no-executors", "--peer", full.url).start()
    seen: dict[str, Any] = {}
    try:
        peer.wait_event("peer-connected")
        ballast = fill(mount)
        with Space.open(peer_home) as space:
            sent = {space.add(f"{i} " + "y" * 2_000, model="echo").id for i in range(200)}
        failed = wait_until(
            lambda: [e for e in full.events + peer.events if "is full" in json.dumps(e)] or full.find("x"),
            timeout=60,
            what="the full disk to be met",
        )
        seen["failure"] = failed[0]
        seen["alive_while_full"] = full.alive
        seen["cli_log_while_full"] = cli(full_home, "log", "-n", "3", "--json")
        ballast.unlink()
        wait_until(lambda: sent <= ids(full_home), timeout=120, what="every prompt at the full node")
        seen["lost"] = sorted(set(before) - ids(full_home))
        seen["synced"] = len(sent & ids(full_home))
        seen["alive"] = full.alive
    finally:
        for proc in (peer, full):
            if proc.alive:
                proc.stop()
    return seen


if __name__ == "__main__":
    scenario, mount, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    print(json.dumps({"library": library, "node": node}[scenario](mount, work)))
