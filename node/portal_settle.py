"""When a folder in a portal's inbox is whole: renamed in at once, copied in once it settled.

A client should write its request folder elsewhere and rename it into ``inbox/``: a rename is
atomic, so the folder is whole the moment it appears, and the portal takes it at once. inotify
tells the two apart: a rename into the inbox is ``IN_MOVED_TO``, a folder made there (``cp -r``,
a ``mv`` across file systems, a program writing in place) is ``IN_CREATE``.

Any other folder (made in place, or found in the inbox at start, or seen without inotify) is
taken only once it has *settled*: its tree (every name, type, size and mtime) is the same at two
looks ``SETTLE_S`` apart. A writer still appending to a file changes its size and mtime between
the looks, so the folder keeps waiting, and a file is never taken truncated. The trade-off,
candidly: a writer that stops for longer than ``SETTLE_S`` in the middle of a file and then goes
on is indistinguishable from one that finished. Copying tools do not pause like that; a program
that might should write elsewhere and rename.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

SETTLE_S = 2.0  # a copied-in folder must look the same for this long
_IN_CREATE, _IN_MOVED_TO = 0x100, 0x80
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

Tree = tuple[tuple[str, bool, int, int], ...]  # (path, is folder, size, mtime ns) per entry


def snapshot(folder: Path, limit: int) -> Tree:
    """Every entry under ``folder`` (links not followed), at most ``limit`` + 1 of them."""
    entries: list[tuple[str, bool, int, int]] = []
    stack = [folder]
    while stack and len(entries) <= limit:
        here = stack.pop()
        try:
            with os.scandir(here) as found:
                for entry in found:
                    st = entry.stat(follow_symlinks=False)
                    is_dir = entry.is_dir(follow_symlinks=False)
                    entries.append((os.path.relpath(entry.path, folder), is_dir, st.st_size, st.st_mtime_ns))
                    if is_dir:
                        stack.append(Path(entry.path))
        except OSError:
            # Removed, swapped for a file or unreadable while we looked: the next look tells,
            # and a folder that stays so is taken and refused by the guarded work (errors/).
            entries.append((os.path.relpath(here, folder), True, -1, -1))
    return tuple(sorted(entries))


def renamed_names(data: bytes) -> tuple[set[str], set[str]]:
    """The names that inotify ``data`` (one read of the inbox's descriptor) reports renamed in,
    and those it reports created there."""
    moved: set[str] = set()
    created: set[str] = set()
    offset = 0
    while offset + _EVENT.size <= len(data):
        _, mask, _, length = _EVENT.unpack_from(data, offset)
        raw = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
        offset += _EVENT.size + length
        name = os.fsdecode(raw)
        if mask & _IN_MOVED_TO:
            moved.add(name)
            created.discard(name)
        elif mask & _IN_CREATE:
            created.add(name)
            moved.discard(name)
    return moved, created


@dataclass(slots=True)
class Settling:
    """Which inbox folders may be taken now (the portal's bookkeeping of the rule above)."""

    settle_s: float = SETTLE_S
    limit: int = 10_000
    renamed: set[str] = field(default_factory=set)  # reported renamed in: whole already
    _looks: dict[str, tuple[Tree, float]] = field(default_factory=dict)  # name -> tree, since when
    _told: set[str] = field(default_factory=set)  # settling folders already reported

    def events(self, data: bytes) -> None:
        """Feed one read of the inbox's inotify descriptor."""
        moved, created = renamed_names(data)
        self.renamed |= moved
        self.renamed -= created
        for name in moved | created:
            self._looks.pop(name, None)

    def ready(self, folder: Path, now: float) -> bool:
        """Whether ``folder`` is whole: renamed in, or unchanged for ``settle_s`` (``now`` is a
        monotonic clock's)."""
        name = folder.name
        if name in self.renamed:
            return True
        tree = snapshot(folder, self.limit) if folder.is_dir() and not folder.is_symlink() else ()
        seen = self._looks.get(name)
        if seen is None or seen[0] != tree:
            self._looks[name] = (tree, now)
            return False
        return now - seen[1] >= self.settle_s

    @property
    def waiting(self) -> bool:
        """Whether some folder is settling (the portal then looks again soon)."""
        return bool(self._looks)

    def first_wait(self, name: str) -> bool:
        """Whether this is the first time ``name`` waits to settle (to say so once)."""
        told = name in self._told
        self._told.add(name)
        return not told

    def keep(self, names: set[str]) -> None:
        """Forget the folders that are no longer in the inbox (``names`` are those that are)."""
        for name in set(self._looks) - names:
            del self._looks[name]
        self.renamed &= names
        self._told &= names

    def taken(self, name: str) -> None:
        """``name`` left the inbox: forget it."""
        self.renamed.discard(name)
        self._told.discard(name)
        self._looks.pop(name, None)
