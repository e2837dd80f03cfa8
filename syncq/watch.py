"""Waking up when a folder changes (the local store's, a portal's inbox), without polling.

A node (or another program) commits to the home's SQLite database; each commit writes to the
database's files in the home folder. ``FolderWatch`` asks Linux's inotify to report writes,
new files and renames into a folder, so a waiter sleeps until something happened there and
then reads the log once. The event carries no meaning of its own: the caller re-reads and
checks (``PRAGMA data_version``).

A commit is reported as its frames reach the WAL file, a moment *before* it becomes visible
(SQLite then publishes it in the memory-mapped ``-shm`` index, which inotify does not see), so
after a wake a caller looks again at ``RECHECK_S`` (``recheck`` does this for a blocking one).

Where inotify is missing (not Linux), ``wait`` falls back to sleeping ``FALLBACK_S`` at a time:
slower to wake, still correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

FALLBACK_S = 0.05
RECHECK_S = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032)  # after a wake, look again at these delays
_IN_MODIFY, _IN_CREATE, _IN_MOVED_TO = 0x2, 0x100, 0x80
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class FolderWatch:
    """Reports writes, new files and renames into one folder (not its subfolders)."""

    def __init__(self, folder: Path) -> None:
        self._fd = _inotify(folder)

    def fileno(self) -> int | None:
        """A descriptor that turns readable on a change (for ``loop.add_reader``), or None
        where inotify is missing."""
        return self._fd

    def wait(self, timeout: float) -> bool:
        """Block until the folder changes (True) or ``timeout`` seconds pass (False)."""
        if self._fd is None:
            time.sleep(min(timeout, FALLBACK_S))
            return True
        readable, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if readable:
            self.drain()
        return bool(readable)

    @staticmethod
    def recheck(changed: Callable[[], bool]) -> None:
        """After a wake: look again at the ``RECHECK_S`` delays until ``changed()`` is true."""
        start = time.monotonic()
        for delay in RECHECK_S:
            if changed():
                return
            time.sleep(max(0.0, start + delay - time.monotonic()))

    def moves(
        self, version: Callable[[], int], timeout: float | None, *, safety_s: float = 1.0
    ) -> Iterator[None]:
        """Yield once at first, then each time ``version()`` (SQLite's ``data_version``) moves,
        looking at least every ``safety_s``. Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            now = version()
            if now != seen:
                seen = now
                yield
            left = safety_s if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if self.wait(min(left, safety_s)):
                self.recheck(lambda: version() != seen)  # noqa: B023 (called before seen changes)

    def reader(self, then: Callable[[], None]) -> Callable[[], None]:
        """A callback for ``loop.add_reader(fileno(), ...)``: forget the changes, then ``then()``."""

        def readable() -> None:
            self.drain()
            then()

        return readable

    def drain(self) -> None:
        """Forget the changes reported so far (the caller is about to look)."""
        if self._fd is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._fd, 65536):
                pass

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False).

    Not ``asyncio.wait_for``: in Python 3.11 it can swallow a cancellation that arrives just as
    the event is set, and the cancelled task runs on (seen here: a job's stream task outlived its
    job, and a node's job never ended). ``asyncio.timeout`` tells its own expiry from a cancel.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _inotify(folder: Path) -> int | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # this process's own symbols: libc is in them
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    mask = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO
    if libc.inotify_add_watch(fd, os.fsencode(folder), mask) < 0:
        os.close(fd)
        return None
    return int(fd)
