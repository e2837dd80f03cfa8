"""One node per home: the running node holds an exclusive lock on ``node.lock`` in the home.

Two nodes on one home would both claim and run its prompts, and the second would take the first
one's claims for its own left-overs ("took over" from itself). The lock is ``flock`` on a file
the node keeps open, so the kernel releases it however the node ends, kill -9 included: a stale
lock cannot outlive its process, unlike a pid file. The file holds the holder's pid, for the
error a second node prints.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from syncq.errors import NodeRunning


class NodeLock:
    """The lock of one home's node, held from ``acquire`` until ``release`` (or the end of the
    process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, address: str | None = None) -> None:
        """Take the lock, or raise ``NodeRunning`` naming the node that holds it: its pid, and
        ``address``, where the store says the node of this home listens."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeRunning(self._held_by(address)) from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid()}).encode(), 0)

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def _held_by(self, address: str | None) -> str:
        try:
            pid = int(json.loads(self.path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            pid = 0  # the holder has not written it yet
        who = f"pid {pid}" if pid else "pid not known yet"
        where = f", listening on {address}" if address else ""
        return (
            f"a node already runs in this home ({who}{where}): stop it first, or give this one "
            "its own home with --home"
        )
