"""Where the local view's rows are kept (``syncq.view``): a table of the store's database, or
memory for in-process tests.

The view is a cache of the Doc, trusted only while it covers what the store holds: its state
records the store's generation (a counter that every write of envelopes or quarantine marks
moves on, in the same transaction) when it was last brought up to date. A reader that finds the
store still at that generation may read the view instead of loading the Doc; any other reader
loads the Doc, which brings the view up to date again. (The tops would not do: an envelope that
fills a gap, or a mark, changes what the Doc holds but no author's highest seq.)

A row is written only with the store at the generation its writer's Doc was brought to (a flush
checks it in its transaction, an own write's rows go in its envelope's): a writer overtaken
between reading the store and writing writes nothing, since its rows may be older than rows
another writer wrote meanwhile, and keeps them to write again. Rows may be newer than the state
says (a blind add's, a partial flush's), never older; and the Doc's load rewrites every row
changed since its checkpoint, which the state's version vector is at least as new as.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from syncq.entries import Entry
from syncq.errors import MalformedRecord
from syncq.ids import ID_LENGTH, PromptId, normalize_prefix, resolve_prefix
from syncq.lifecycle import Status
from syncq.view import Keys, Sealed

STATE_META = "view.state"
# A running node writes what its peers changed into the view this often (node/daemon.py): a
# reader that finds the view behind while a node runs waits up to twice that for it.
NODE_FLUSH_S = 0.25
PAGE = 200  # rows read at a time when listing


@dataclass(frozen=True, slots=True)
class ViewState:
    """What the view covers: the store's generation then, the Doc's version vector then (which
    checkpoints it is at least as new as) and how many member devices the Doc listed."""

    generation: int
    vv: Mapping[bytes, int] = field(default_factory=dict)
    devices: int = 0
    # The key epochs held then: an envelope held for a key applies once the key is here, which
    # changes the Doc but not the store.
    epochs: tuple[int, ...] = ()

    def to_json(self) -> str:
        """The state as the store keeps it (authors and seqs: nothing the envelopes hide)."""
        return json.dumps(
            {
                "generation": self.generation,
                "vv": _hex(self.vv),
                "devices": self.devices,
                "epochs": list(self.epochs),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ViewState | None:
        """The state, or None for text that is not one (then the view is rebuilt)."""
        try:
            found = json.loads(text)
            return cls(
                generation=int(found["generation"]),
                vv={bytes.fromhex(k): int(v) for k, v in found["vv"].items()},
                devices=int(found["devices"]),
                epochs=tuple(int(e) for e in found["epochs"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def after_append(self, before: int, after: int, author: bytes, seqs: Sequence[int]) -> ViewState | None:
        """The state once ``author`` appended ``seqs`` (the store going from generation
        ``before`` to ``after``), with rows that cover their changes, if the view covered the
        store before; else None (the state stays as it was)."""
        if self.generation != before:
            return None
        vv = dict(self.vv)
        if vv.get(author, 0) == seqs[0] - 1:  # nothing of the author held back
            vv[author] = seqs[-1]
        return replace(self, generation=after, vv=vv)


class ViewTable(Protocol):
    """The view's rows and state in a store."""

    def state(self) -> ViewState | None:
        """What the view covers, or None if it must be rebuilt before it is read."""
        ...

    def write(
        self,
        rows: Sequence[Sealed],
        state: ViewState,
        *,
        replace: bool = False,
        removed: Sequence[str] = (),
        partial: bool = False,
    ) -> bool:
        """If the store is still at ``state.generation``: store ``rows`` (with ``replace``,
        instead of every row held), drop the rows of ``removed`` and, unless ``partial`` (some
        changed prompts are left for later), record ``state`` (a partial replace forgets the
        state held); else change nothing (the rows may be older than rows written since).
        Returns whether it wrote."""
        ...

    def clear(self) -> None:
        """Forget the state: the view must be rebuilt before it is read again."""
        ...

    def page(
        self, *, below: str | None = None, above: str | None = None, status: bytes | None = None
    ) -> list[tuple[str, bytes, bytes]]:
        """Up to ``PAGE`` rows (id, sealed), newest id first, with ids between ``above`` and
        ``below`` (both excluded) and, if given, that status tag."""
        ...

    def prefixed(self, prefix: str) -> list[tuple[str, bytes, bytes]]:
        """Every row whose id starts with ``prefix``, by id."""
        ...

    def counts(self) -> dict[bytes, int]:
        """How many rows have each status tag."""
        ...


class SqliteView:
    """The view in the store's SQLite database (table ``view``, meta ``view.state``)."""

    def __init__(
        self,
        read: Callable[[str, tuple[object, ...]], list[Any]],
        write: Callable[[], _Transaction],
    ) -> None:
        self._read = read
        self._write = write

    def state(self) -> ViewState | None:
        """What the view covers, or None."""
        found = self._read("SELECT value FROM meta WHERE key = ?", (STATE_META,))
        return ViewState.from_json(str(found[0][0])) if found else None

    def write(
        self,
        rows: Sequence[Sealed],
        state: ViewState,
        *,
        replace: bool = False,
        removed: Sequence[str] = (),
        partial: bool = False,
    ) -> bool:
        """Store rows and record ``state`` if the store is still there (``ViewTable.write``)."""
        with self._write() as conn:
            if state.generation != generation_in(conn):
                return False  # nothing written: the transaction commits nothing
            if replace:
                conn.execute("DELETE FROM view")
                conn.execute("DELETE FROM view_counts")
                if partial:  # the rest comes in later writes: nobody may read a half table
                    conn.execute("DELETE FROM meta WHERE key = ?", (STATE_META,))
            conn.executemany("DELETE FROM view WHERE id = ?", [(i,) for i in removed])
            put_rows(conn, rows)
            if not partial:
                set_state(conn, state)
        return True

    def clear(self) -> None:
        """Forget the state."""
        with self._write() as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (STATE_META,))

    def page(
        self, *, below: str | None = None, above: str | None = None, status: bytes | None = None
    ) -> list[tuple[str, bytes, bytes]]:
        """Up to ``PAGE`` rows, newest first (``ViewTable.page``)."""
        bounds = (below if below is not None else "~", above or "")
        if status is None:
            found = self._read(
                "SELECT id, status, data FROM view WHERE id < ? AND id > ? ORDER BY id DESC LIMIT ?",
                (*bounds, PAGE),
            )
        else:
            found = self._read(
                "SELECT id, status, data FROM view WHERE status = ? AND id < ? AND id > ?"
                " ORDER BY id DESC LIMIT ?",
                (status, *bounds, PAGE),
            )
        return [(str(i), bytes(t), bytes(d)) for i, t, d in found]

    def prefixed(self, prefix: str) -> list[tuple[str, bytes, bytes]]:
        """Rows whose id starts with ``prefix``: from it up to the prefix with its last
        character moved on (not ``prefix + "~"``: a member may write keys that are no prompt id,
        such as ``prefix + "~"`` or ``prefix + "é"``, and the Doc counts them as matches)."""
        if not prefix:
            found = self._read("SELECT id, status, data FROM view ORDER BY id", ())
        else:
            above = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            found = self._read(
                "SELECT id, status, data FROM view WHERE id >= ? AND id < ? ORDER BY id", (prefix, above)
            )
        return [(str(i), bytes(t), bytes(d)) for i, t, d in found]

    def counts(self) -> dict[bytes, int]:
        """Rows per status tag."""
        found = self._read("SELECT status, n FROM view_counts WHERE n > 0", ())
        return {bytes(s): int(n) for s, n in found}


class _Transaction(Protocol):
    def __enter__(self) -> sqlite3.Connection: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object, /
    ) -> None: ...


# A skip-scan of the (author, seq) index: one seek per author, not a pass over every envelope.
TOPS_SQL = (
    "WITH RECURSIVE a(author) AS (SELECT MIN(author) FROM envelopes UNION ALL"
    " SELECT (SELECT MIN(author) FROM envelopes WHERE author > a.author) FROM a"
    " WHERE a.author IS NOT NULL)"
    " SELECT author, (SELECT MAX(seq) FROM envelopes e WHERE e.author = a.author)"
    " FROM a WHERE author IS NOT NULL"
)


GENERATION_META = "store.generation"
# How many voids (a mark ``Unlisted.reason`` set, replaced or released) the store has seen: a
# Doc loaded before one may hold what is voided now (or lack what came back), so it writes no
# view rows and is loaded again (``Replica``).
VOIDS_META = "store.voids"


def generation_in(conn: sqlite3.Connection) -> int:
    """The store's generation, read in the connection's transaction."""
    found = conn.execute("SELECT value FROM meta WHERE key = ?", (GENERATION_META,)).fetchone()
    return int(found[0]) if found else 0


def next_generation(conn: sqlite3.Connection) -> int:
    """Move the store's generation on, in the transaction of a write of envelopes or marks."""
    found = conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, '1')"
        " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value",
        (GENERATION_META,),
    ).fetchone()
    return int(found[0])


def put_rows(conn: sqlite3.Connection, rows: Sequence[Sealed]) -> None:
    """Insert or replace view rows in the connection's transaction."""
    conn.executemany(
        "INSERT INTO view (id, status, data) VALUES (?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET status = excluded.status, data = excluded.data",
        [(r.prompt_id, r.status, r.data) for r in rows],
    )


def set_state(conn: sqlite3.Connection, state: ViewState) -> None:
    """Record the view's state in the connection's transaction."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (STATE_META, state.to_json()))


def appended(
    conn: sqlite3.Connection,
    author: bytes,
    seqs: Sequence[int],
    before: int,
    after: int,
    rows: Sequence[Sealed],
) -> None:
    """In an own append's transaction: store the rows its envelopes change, and move the state
    on if it covered the store before them (``ViewState.after_append``)."""
    put_rows(conn, rows)
    found = conn.execute("SELECT value FROM meta WHERE key = ?", (STATE_META,)).fetchone()
    state = ViewState.from_json(found[0]) if found else None
    moved = state.after_append(before, after, author, seqs) if state is not None else None
    if moved is not None:
        set_state(conn, moved)


class MemoryView:
    """The view in memory, beside ``MemoryStore``'s envelopes."""

    def __init__(self, generation: Callable[[], int]) -> None:
        self._generation = generation
        self.rows: dict[str, Sealed] = {}
        self._state: ViewState | None = None

    def state(self) -> ViewState | None:
        """What the view covers, or None."""
        return self._state

    def write(
        self,
        rows: Sequence[Sealed],
        state: ViewState,
        *,
        replace: bool = False,
        removed: Sequence[str] = (),
        partial: bool = False,
    ) -> bool:
        """Store rows and record ``state`` if the store is still there."""
        if state.generation != self._generation():
            return False
        if replace:
            self.rows.clear()
            if partial:
                self._state = None
        for prompt_id in removed:
            self.rows.pop(prompt_id, None)
        self.appended(rows)
        if not partial:
            self._state = state
        return True

    def appended(self, rows: Sequence[Sealed]) -> None:
        """Store rows (``MemoryStore.append_own`` moves the state on itself)."""
        self.rows.update((r.prompt_id, r) for r in rows)

    def move(self, author: bytes, seqs: Sequence[int], before: int, after: int) -> None:
        """``ViewState.after_append`` for an append to memory."""
        moved = self._state.after_append(before, after, author, seqs) if self._state else None
        self._state = moved or self._state

    def clear(self) -> None:
        """Forget the state."""
        self._state = None

    def page(
        self, *, below: str | None = None, above: str | None = None, status: bytes | None = None
    ) -> list[tuple[str, bytes, bytes]]:
        """Up to ``PAGE`` rows, newest first."""
        ids = sorted(
            (
                i
                for i, r in self.rows.items()
                if (below is None or i < below)
                and (above is None or i > above)
                and status in (None, r.status)
            ),
            reverse=True,
        )
        return [(i, self.rows[i].status, self.rows[i].data) for i in ids[:PAGE]]

    def prefixed(self, prefix: str) -> list[tuple[str, bytes, bytes]]:
        """Rows whose id starts with ``prefix``."""
        return [(i, r.status, r.data) for i, r in sorted(self.rows.items()) if i.startswith(prefix)]

    def counts(self) -> dict[bytes, int]:
        """Rows per status tag."""
        counts: dict[bytes, int] = {}
        for row in self.rows.values():
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts


class Reader:
    """The Doc's answers to ``syncq log``, ``show`` and ``status``, read from the view: only
    the rows asked for are read and opened. Raises ``EnvelopeRejected`` for a damaged row (the
    caller then rebuilds the view from the Doc)."""

    def __init__(self, table: ViewTable, keys: Keys, state: ViewState) -> None:
        self._table = table
        self._keys = keys
        self.devices = state.devices

    def resolve(self, prefix: str) -> PromptId:
        """The one prompt id starting with ``prefix`` (``ids.resolve_prefix``); a whole id held
        is itself, as on the Doc (``space._resolve``), whatever longer keys a member wrote."""
        if len(prefix) == ID_LENGTH and any(i == prefix for i, _, _ in self._table.prefixed(prefix)):
            return PromptId(prefix)  # as typed: a key a member wrote need not be normalized
        return resolve_prefix(prefix, [i for i, _, _ in self._table.prefixed(normalize_prefix(prefix))])

    def show(self, prefix: str) -> Entry:
        """The prompt ``prefix`` names. Raises ``UnknownId``, ``AmbiguousId``, ``MalformedRecord``."""
        prompt_id = self.resolve(prefix)
        ((_, tag, data),) = [row for row in self._table.prefixed(prompt_id) if row[0] == prompt_id]
        return self._keys.entry(prompt_id, tag, data)

    def entries(
        self,
        *,
        limit: int | None,
        status: Status | None,
        model: str | None,
        since: str | None,
        grep: str | None = None,
    ) -> list[Entry]:
        """The newest ``limit`` prompts that match, oldest first (``Space.entries``)."""
        above = self.resolve(since) if since is not None else None
        tag = self._keys.tag(status) if status is not None else None
        picked: list[Entry] = []
        below: str | None = None
        while limit is None or len(picked) < limit:
            page = self._table.page(below=below, above=above, status=tag)
            for prompt_id, found, data in page:
                try:
                    entry = self._keys.entry(prompt_id, found, data)
                except MalformedRecord:
                    continue
                if (model is None or entry.prompt.model == model) and (grep is None or entry.mentions(grep)):
                    picked.append(entry)
                    if limit is not None and len(picked) >= limit:
                        break
            if len(page) < PAGE:
                break
            below = page[-1][0]
        picked.reverse()
        return picked

    def counts(self) -> tuple[int, dict[Status, int]]:
        """How many prompts there are, and how many have each status."""
        found = self._table.counts()
        counts = {s: n for tag, n in found.items() if (s := self._keys.status_of(tag)) is not None}
        return sum(found.values()), counts


def _hex(vector: Mapping[bytes, int]) -> dict[str, int]:
    return {a.hex(): s for a, s in sorted(vector.items())}
