"""Local persistence of envelopes and checkpoints: the ``Store`` port and its two adapters.

A store holds opaque sealed envelopes keyed by (author, seq), an encrypted checkpoint of the Doc
state with the version vector it covers, a few metadata strings and a count of rejected
envelopes. It never sees plaintext: the database must hold no prompt or result.

``SqliteStore`` is the real one; ``MemoryStore`` (``syncq.memstore``) backs in-process tests.
Both pass the same acceptance suite (``tests/syncq/test_store.py``).

Why plain ``sqlite3`` and not sqlite-utils (which DESIGN.md names): importing sqlite-utils costs
about 115 ms, most of the 150 ms budget of a cold ``syncq add``, and every query here is a
hand-written transaction (BEGIN IMMEDIATE to allocate seqs) that sqlite-utils would not help with.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from syncq.errors import DiskFull, StoreBroken, StoreClosed, StoreError, Unlisted
from syncq.schema import SCHEMA, SCHEMA_VERSION, upgrade
from syncq.view import Sealed
from syncq.viewstore import (
    GENERATION_META,
    STATE_META,
    TOPS_SQL,
    VOIDS_META,
    SqliteView,
    ViewTable,
    appended,
    next_generation,
)

APPLICATION_ID = 0x53594E51  # "SYNQ": tells our database from any other SQLite file
BUSY_TIMEOUT_MS = 30_000
MAX_DETAIL = 200  # characters of a rejection's last detail kept


@dataclass(frozen=True, slots=True)
class Row:
    """One stored envelope; ``quarantined`` says why it is never applied (PROTOCOL.md,
    "Envelope"), ``None`` for one that is."""

    author: bytes
    seq: int
    data: bytes
    quarantined: str | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A sealed Doc state and the version vector (author -> seq) it covers."""

    vv: Mapping[bytes, int]
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """A peer this node dials or was dialled by, with what the node last saw of it."""

    url: str
    source: str
    node_id: str | None = None
    name: str | None = None
    connected: bool = False
    last_seen: int | None = None
    behind: int | None = None
    error: str | None = None


@dataclass(slots=True)
class PutReport:
    """What ``Store.put`` did with a batch of envelopes."""

    added: list[Row] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[Row] = field(default_factory=list)  # same (author, seq), different bytes


class Store(Protocol):
    """The storage port. Every method raises ``StoreClosed`` after ``close`` and
    ``StoreBroken`` when the medium fails."""

    @property
    def view(self) -> ViewTable:
        """The local view's rows (``syncq.view``)."""
        ...

    def append_own(
        self,
        author: bytes,
        seals: Sequence[Callable[[int], bytes]],
        *,
        durable: bool = True,
        view: Sequence[Sealed] = (),
        covered: int | None = None,
    ) -> list[int]:
        """Allocate the next seqs of ``author`` and store ``seal(seq)`` for each, atomically;
        on disk before it returns unless ``durable`` is false (then ``sync`` makes it so).
        ``view`` holds the view rows of every prompt the envelopes change, written in the same
        transaction (``viewstore.appended``); ``covered``, if given, is the generation the
        writer's Doc was at when it made them (a blind write's rows need none)."""
        ...

    def sync(self) -> None:
        """Put on disk every own envelope written with ``durable=False``: called before
        envelopes leave this device, so that power lost after a peer got one can never make
        this device reuse its seq."""
        ...

    def put(self, rows: Sequence[Row]) -> PutReport:
        """Store envelopes from elsewhere (with their quarantine marks); exact duplicates are
        dropped, conflicts refused."""
        ...

    def mark(self, author: bytes, seq: int, reason: str | None) -> None:
        """Quarantine a stored envelope for ``reason``, or release it (``None``). A void (a
        mark ``Unlisted.reason`` set, replaced or released) forgets the local view's state in
        the same transaction and moves the count of voids (``viewstore.VOIDS_META``) on."""
        ...

    def quarantined(self) -> dict[str, int]:
        """Quarantined envelopes counted by reason."""
        ...

    def marked(self, reason: str) -> list[tuple[bytes, int]]:
        """The (author, seq) of every envelope quarantined for ``reason``, in order."""
        ...

    def tops(self) -> dict[bytes, int]:
        """Per author with at least one envelope, the highest seq stored."""
        ...

    def generation(self) -> int:
        """A count that every write of envelopes or quarantine marks moves on: the same number
        twice means the same envelopes, the same marks."""
        ...

    def rows(self, author: bytes, after: int = 0) -> Iterator[Row]:
        """The author's envelopes with seq > ``after``, in seq order."""
        ...

    def gapless_seqs(self, floor: Mapping[bytes, int] | None = None) -> dict[bytes, int]:
        """Per author, the highest seq such that every seq from 1 to it is stored, or (with a
        ``floor``: what held snapshots cover) every seq after the author's floor.

        This, not the highest stored seq, is what a device may tell peers it has: an envelope
        held after a gap must not hide the missing one.
        """
        ...

    def control_rows(self) -> list[Row]:
        """Every stored envelope of kind 3 (keys) or 4 (device list), by author and seq."""
        ...

    def count(self) -> int:
        """How many envelopes are stored."""
        ...

    def has_run(self, author: bytes, after: int, upto: int) -> bool:
        """Whether every envelope of ``author`` after ``after`` up to ``upto`` is stored."""
        ...

    def snapshots(self) -> list[tuple[bytes, bytes]]:
        """The snapshots held (``syncq.snapshots``): (digest, head), oldest stored first, without
        their states (a snapshot of a year is tens of MB)."""
        ...

    def snapshot_data(self, digest: bytes) -> bytes | None:
        """A held snapshot's bytes."""
        ...

    def keep_snapshot(self, data: bytes, digest: bytes, head: bytes, drop: Sequence[bytes] = ()) -> None:
        """Hold a snapshot and forget the held ones named in ``drop`` (their digests), in one
        transaction that moves the generation on (what this device covers changed)."""
        ...

    def forget_snapshots(self, digests: Sequence[bytes]) -> None:
        """Forget held snapshots (poisoned by a removal), moving the generation on."""
        ...

    def prune(self, bounds: Mapping[bytes, int]) -> int:
        """Delete each author's envelopes up to its bound (and their quarantine marks), except
        device lists and keys (kinds 4 and 3), in one transaction; returns how many went. The
        generation does not move: what this device covers is the same (snapshots cover them)."""
        ...

    def load_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint, if any."""
        ...

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Replace the checkpoint."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A metadata string."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata string."""
        ...

    def record_rejection(self, reason: str, detail: str, count: int = 1) -> None:
        """Count ``count`` envelopes refused for ``reason``; keeps ``detail`` as the last one."""
        ...

    def rejections(self) -> dict[str, int]:
        """Refused envelopes counted by reason."""
        ...

    def size_bytes(self) -> int:
        """Bytes used on disk (0 in memory)."""
        ...

    def save_peer(self, peer: Peer) -> None:
        """Insert or replace a peer."""
        ...

    def peers(self) -> list[Peer]:
        """Every known peer, by url."""
        ...

    def data_version(self) -> int:
        """A number that changes whenever another connection (process) commits a change."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise ``StoreClosed``."""
        ...


class SqliteStore:
    """The store in one SQLite file (WAL mode, ``synchronous=FULL``).

    Several processes may use one file at once: each write is one ``BEGIN IMMEDIATE``
    transaction, seqs are allocated inside it, and SQLite's busy timeout makes writers queue
    instead of failing with "database is locked".
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        # ``tops`` is asked on every read of the log and every batch sent to a peer: it is
        # cached until a write here, or another process's commit (data_version), changes it.
        self._tops: tuple[int, dict[bytes, int]] | None = None
        self._generation: tuple[int, int] | None = None  # (data version, generation), likewise
        self._unsynced = False  # own envelopes committed without an fsync since the last one
        # Called after each commit of own envelopes (``append_own``): a node learns this way of
        # what its scheduler, its portals and its HTTP API (which shares its Space) wrote;
        # bookkeeping writes (metadata, peers) and received envelopes wake nobody through it.
        # It must not raise: the envelopes are stored by then, whatever it does.
        self.committed: Callable[[], None] = no_hook
        self.view = SqliteView(self._read, lambda: self._write(durable=False))

    @classmethod
    def create(cls, path: Path) -> SqliteStore:
        """Create a new database. Raises ``StoreBroken`` if one exists or it cannot be written."""
        try:
            # 0600 before SQLite touches it: the WAL and shm files copy the database's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError as exc:
            raise StoreBroken(f"{path} exists already") from exc
        except OSError as exc:
            raise StoreBroken(f"cannot create the database {path}: {exc.strerror}") from exc
        conn = _connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreBroken(f"cannot create the database {path}: {exc}") from exc
        return cls(conn, path)

    @classmethod
    def open(cls, path: Path) -> SqliteStore:
        """Open an existing database. Raises ``StoreBroken`` if it is missing, corrupt, another
        program's, or of a newer schema."""
        if not path.is_file():
            raise StoreBroken(
                f"the database {path} is missing: restore it from a backup, or move the home "
                "aside and join the space again"
            )
        conn = _connect(path)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreBroken(f"{path} is not a syncq database or is corrupt ({exc})") from exc
        if app_id != APPLICATION_ID:
            conn.close()
            raise StoreBroken(f"{path} is not a syncq database (it belongs to another program)")
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreBroken(f"{path} was written by a newer syncq (schema {version}); upgrade")
        if version < SCHEMA_VERSION:
            try:
                upgrade(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise StoreBroken(f"cannot upgrade {path} to schema {SCHEMA_VERSION}: {exc}") from exc
        return cls(conn, path)

    def append_own(
        self,
        author: bytes,
        seals: Sequence[Callable[[int], bytes]],
        *,
        durable: bool = True,
        view: Sequence[Sealed] = (),
        covered: int | None = None,
    ) -> list[int]:
        """Allocate seqs and store each ``seal(seq)`` in one transaction (with an fsync, unless
        ``durable`` is false: see ``sync``), with the view rows they change."""
        self._tops = self._generation = None
        with self._write(durable=durable) as conn:
            last = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM envelopes WHERE author = ?", (author,)
            ).fetchone()[0]
            seqs = list(range(last + 1, last + 1 + len(seals)))
            conn.executemany(
                "INSERT INTO envelopes (author, seq, data) VALUES (?, ?, ?)",
                [(author, seq, seal(seq)) for seq, seal in zip(seqs, seals, strict=True)],
            )
            after = next_generation(conn)
            before = after - 1
            if view and seqs and covered in (None, before):
                appended(conn, author, seqs, before, after, view)
        # A FULL commit syncs the WAL, and with it every frame written before it.
        self._unsynced = not durable
        # Stored by now: a listener's bug must not make the write look failed (the caller
        # would then reuse its Yjs clocks, and peers ignore an update with reused clocks).
        with contextlib.suppress(Exception):
            self.committed()
        return seqs

    def sync(self) -> None:
        """fsync the WAL if an own envelope was committed without it. The WAL is the one file
        such a commit wrote (a checkpoint syncs the WAL before copying it into the database,
        and the database after), so syncing it puts every such envelope on disk."""
        if not self._unsynced:
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and removed: the database holds it, synced
            self._unsynced = False
            return
        except OSError as exc:
            raise write_error(self.path, exc, "cannot sync") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise write_error(self.path, exc, "cannot sync") from exc
        finally:
            os.close(fd)
        self._unsynced = False

    def put(self, rows: Sequence[Row]) -> PutReport:
        """Store envelopes from elsewhere in one transaction.

        Without an fsync of its own (synchronous=NORMAL): the commit is atomic and survives the
        process being killed, and power loss can only drop the last few received envelopes,
        which their authors (who stored them with an fsync) send again on the next sync, as
        HAVE is computed from what is stored. Own envelopes are different: losing one would let
        this device reuse a seq that peers already saw.
        """
        report = PutReport()
        self._tops = self._generation = None
        with self._write(durable=False) as conn:
            for row in rows:
                found = conn.execute(
                    "SELECT data FROM envelopes WHERE author = ? AND seq = ?", (row.author, row.seq)
                ).fetchone()
                if found is None:
                    conn.execute(
                        "INSERT INTO envelopes (author, seq, data) VALUES (?, ?, ?)",
                        (row.author, row.seq, row.data),
                    )
                    if row.quarantined is not None:
                        conn.execute(
                            "INSERT OR REPLACE INTO quarantine (author, seq, reason) VALUES (?, ?, ?)",
                            (row.author, row.seq, row.quarantined),
                        )
                    report.added.append(row)
                elif found[0] == row.data:
                    report.duplicates += 1
                else:
                    report.conflicts.append(row)
            if report.added:
                next_generation(conn)
        return report

    def tops(self) -> dict[bytes, int]:
        """Per author with at least one envelope, the highest seq stored."""
        version = self.data_version()
        if self._tops is None or self._tops[0] != version:
            # One seek per author (a GROUP BY read every envelope, on each change: 16 ms at 75k).
            found = self._read(TOPS_SQL)
            self._tops = (version, {author: top for author, top in found})
        return self._tops[1]

    def generation(self) -> int:
        """The count every write of envelopes or marks moves on (``Store.generation``); asked on
        every read of the log, so cached until a write here or another process's commit."""
        version = self.data_version()
        if self._generation is None or self._generation[0] != version:
            found = self._read("SELECT value FROM meta WHERE key = ?", (GENERATION_META,))
            self._generation = (version, int(found[0][0]) if found else 0)
        return self._generation[1]

    def rows(self, author: bytes, after: int = 0) -> Iterator[Row]:
        """The author's envelopes after ``after``, in seq order (fetched in pages)."""
        while True:
            page = self._read(
                "SELECT e.seq, e.data, q.reason FROM envelopes e LEFT JOIN quarantine q"
                " ON q.author = e.author AND q.seq = e.seq"
                " WHERE e.author = ? AND e.seq > ? ORDER BY e.seq LIMIT 1000",
                (author, after),
            )
            for seq, data, reason in page:
                yield Row(author, seq, data, reason)
            if len(page) < 1000:
                return
            after = page[-1][0]

    def control_rows(self) -> list[Row]:
        """Every stored envelope of kind 3 (keys) or 4 (device list), by author and seq (found
        through a partial index: they are few among many)."""
        found = self._read(
            "SELECT author, seq, data FROM envelopes"
            " WHERE substr(data, 4, 1) IN (x'03', x'04') ORDER BY author, seq"
        )
        return [Row(author, seq, data) for author, seq, data in found]

    def gapless_seqs(self, floor: Mapping[bytes, int] | None = None) -> dict[bytes, int]:
        """Per author, the highest seq with every seq from 1 (or after its floor) to it stored."""
        # Seqs are unique per author, so MAX(seq) = COUNT(*) means "no gap" (the usual case);
        # otherwise the end of the first run is the first seq whose successor is missing.
        floor = floor or {}
        found = {a: s for a, s in floor.items() if s > 0}
        for author, top, count, first in self._read(
            "SELECT author, MAX(seq), COUNT(*), MIN(seq) FROM envelopes GROUP BY author"
        ):
            base = floor.get(author, 0)
            if top <= base:
                continue
            if base:  # what is above the floor counts: one look at that run
                count, first = self._read(
                    "SELECT COUNT(*), MIN(seq) FROM envelopes WHERE author = ? AND seq > ?", (author, base)
                )[0]
            if first != base + 1:
                continue
            if top - base != count:
                top = self._read(
                    "SELECT MIN(seq) FROM envelopes e WHERE author = ? AND seq > ? AND NOT EXISTS "
                    "(SELECT 1 FROM envelopes f WHERE f.author = e.author AND f.seq = e.seq + 1)",
                    (author, base),
                )[0][0]
            found[author] = top
        return found

    def has_run(self, author: bytes, after: int, upto: int) -> bool:
        """Whether every envelope of ``author`` after ``after`` up to ``upto`` is stored."""
        found = self._read(
            "SELECT COUNT(*) FROM envelopes WHERE author = ? AND seq > ? AND seq <= ?", (author, after, upto)
        )
        return bool(found[0][0] == upto - after)

    # A snapshot's bytes live in a file of their own (``snapshots/<digest hex>``, beside the
    # database), written and synced before the row that names it is committed: 5 MB into
    # SQLite took 69 ms (the WAL, then its checkpoint), a file and its fsync 15 ms.

    def snapshots(self) -> list[tuple[bytes, bytes]]:
        """The snapshots held: (digest, head), oldest stored first; one whose file is gone (a
        damaged home) holds nothing, so it is not listed."""
        found = self._read("SELECT digest, head, data IS NULL FROM snapshots ORDER BY stored_at, digest")
        return [
            (bytes(d), bytes(h)) for d, h, in_file in found if not in_file or self._snapshot_file(d).exists()
        ]

    def snapshot_data(self, digest: bytes) -> bytes | None:
        """A held snapshot's bytes."""
        found = self._read("SELECT data FROM snapshots WHERE digest = ?", (digest,))
        if not found:
            return None
        if found[0][0] is not None:
            return bytes(found[0][0])
        try:
            return self._snapshot_file(digest).read_bytes()
        except OSError:
            return None

    def keep_snapshot(self, data: bytes, digest: bytes, head: bytes, drop: Sequence[bytes] = ()) -> None:
        """Hold a snapshot and forget those it makes redundant, in one transaction."""
        self._generation = None
        path = self._snapshot_file(digest)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())  # on disk before the row that names it: never a row without it
            os.replace(scratch, path)
            _sync_folder(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                scratch.unlink()  # a half-written file takes room the next try needs
            raise write_error(path.parent, exc, "cannot write a snapshot into") from exc
        with self._write(durable=False) as conn:
            conn.executemany("DELETE FROM snapshots WHERE digest = ?", [(d,) for d in drop])
            conn.execute(
                "INSERT OR IGNORE INTO snapshots (digest, author, count, head, data, stored_at)"
                " VALUES (?, ?, ?, ?, NULL, ?)",
                (digest, data[24:56], int.from_bytes(data[56:64], "big"), head, int(time.time() * 1000)),
            )
            next_generation(conn)
        self._unlink_snapshots(drop)

    def forget_snapshots(self, digests: Sequence[bytes]) -> None:
        """Forget held snapshots."""
        self._generation = None
        with self._write(durable=False) as conn:
            conn.executemany("DELETE FROM snapshots WHERE digest = ?", [(d,) for d in digests])
            next_generation(conn)
        self._unlink_snapshots(digests)

    def _snapshot_file(self, digest: bytes) -> Path:
        return self.path.parent / "snapshots" / digest.hex()

    def _unlink_snapshots(self, digests: Sequence[bytes]) -> None:
        # After the commit: a crash before it leaves a file nobody names (harmless, a few MB).
        for digest in digests:
            with contextlib.suppress(OSError):
                self._snapshot_file(digest).unlink()

    def prune(self, bounds: Mapping[bytes, int]) -> int:
        """Delete envelopes covered by snapshots, but device lists and keys, in one transaction."""
        gone = 0
        with self._write(durable=False) as conn:
            for author, bound in sorted(bounds.items()):
                if bound <= 0:
                    continue
                conn.execute(
                    "DELETE FROM quarantine WHERE author = ? AND seq <= ? AND seq IN (SELECT seq FROM"
                    " envelopes WHERE author = ? AND seq <= ? AND substr(data, 4, 1) NOT IN (x'03', x'04'))",
                    (author, bound, author, bound),
                )
                gone += conn.execute(
                    "DELETE FROM envelopes WHERE author = ? AND seq <= ?"
                    " AND substr(data, 4, 1) NOT IN (x'03', x'04')",
                    (author, bound),
                ).rowcount
        self._tops = None
        return gone

    def count(self) -> int:
        """How many envelopes are stored."""
        return int(self._read("SELECT COUNT(*) FROM envelopes")[0][0])

    def load_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint, if any."""
        found = self._read("SELECT vv, data FROM checkpoint WHERE id = 1")
        if not found:
            return None
        vv = {bytes.fromhex(k): int(v) for k, v in json.loads(found[0][0]).items()}
        return Checkpoint(vv=vv, data=found[0][1])

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Replace the checkpoint."""
        vv = json.dumps({k.hex(): v for k, v in sorted(checkpoint.vv.items())})
        with self._write(durable=False) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO checkpoint (id, vv, data) VALUES (1, ?, ?)",
                (vv, checkpoint.data),
            )

    def get_meta(self, key: str) -> str | None:
        """A metadata string."""
        found = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(found[0][0]) if found else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata string."""
        with self._write(durable=False) as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def mark(self, author: bytes, seq: int, reason: str | None) -> None:
        """Quarantine a stored envelope for ``reason``, or release it (``None``)."""
        self._generation = None
        with self._write(durable=False) as conn:
            before = conn.execute(
                "SELECT reason FROM quarantine WHERE author = ? AND seq = ?", (author, seq)
            ).fetchone()
            if Unlisted.reason in (reason, before[0] if before else None):
                # A void: the view's state goes, and Docs loaded before it are loaded again.
                conn.execute("DELETE FROM meta WHERE key = ?", (STATE_META,))
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key)"
                    " DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                    (VOIDS_META,),
                )
            if reason is None:
                conn.execute("DELETE FROM quarantine WHERE author = ? AND seq = ?", (author, seq))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO quarantine (author, seq, reason) VALUES (?, ?, ?)",
                    (author, seq, reason),
                )
            next_generation(conn)

    def quarantined(self) -> dict[str, int]:
        """Quarantined envelopes counted by reason."""
        return dict(self._read("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason"))

    def marked(self, reason: str) -> list[tuple[bytes, int]]:
        """The (author, seq) of every envelope quarantined for ``reason``, in order."""
        found = self._read(
            "SELECT author, seq FROM quarantine WHERE reason = ? ORDER BY author, seq", (reason,)
        )
        return [(author, seq) for author, seq in found]

    def record_rejection(self, reason: str, detail: str, count: int = 1) -> None:
        """Count refused envelopes: one row per reason, however many arrive."""
        now = int(time.time() * 1000)
        with self._write(durable=False) as conn:
            conn.execute(
                "INSERT INTO rejections (reason, count, first_seen, last_seen, detail)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (reason) DO UPDATE SET"
                " count = count + excluded.count, last_seen = excluded.last_seen,"
                " detail = excluded.detail",
                (reason[:64], count, now, now, escaped(detail)),
            )

    def rejections(self) -> dict[str, int]:
        """Refused envelopes counted by reason."""
        return dict(self._read("SELECT reason, count FROM rejections"))

    def rejection_details(self) -> list[tuple[str, int, int | None, int | None, str]]:
        """Per reason: (reason, count, first seen ms, last seen ms, last detail)."""
        return self._read(
            "SELECT reason, count, first_seen, last_seen, detail FROM rejections ORDER BY reason"
        )

    def size_bytes(self) -> int:
        """Bytes of the database file, its WAL and the snapshots' files."""
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        folder = self.path.parent / "snapshots"
        files += list(folder.iterdir()) if folder.is_dir() else []
        return sum(f.stat().st_size for f in files if f.is_file())

    def save_peer(self, peer: Peer) -> None:
        """Insert or replace a peer."""
        with self._write(durable=False) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO peers (url, source, node_id, name, connected, last_seen,"
                " behind, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    peer.url,
                    peer.source,
                    peer.node_id,
                    peer.name,
                    int(peer.connected),
                    peer.last_seen,
                    peer.behind,
                    peer.error,
                ),
            )

    def peers(self) -> list[Peer]:
        """Every known peer, by url."""
        rows = self._read(
            "SELECT url, source, node_id, name, connected, last_seen, behind, error FROM peers ORDER BY url"
        )
        return [
            Peer(url=u, source=s, node_id=n, name=m, connected=bool(c), last_seen=t, behind=b, error=e)
            for u, s, n, m, c, t, b, e in rows
        ]

    def data_version(self) -> int:
        """SQLite's data_version: it changes when another connection commits."""
        return int(self._read("PRAGMA data_version")[0][0])

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- internals -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosed("the store is closed")
        return self._conn

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreBroken(f"cannot read {self.path}: {exc}") from exc

    def _write(self, *, durable: bool = True) -> _WriteTransaction:
        # Own envelopes are written with synchronous=FULL: an add that returned survives power
        # loss. Received envelopes (see ``put``), caches and bookkeeping (checkpoint, metadata,
        # peers, rejection counts) use NORMAL: still atomic, but they skip the fsync of every
        # commit.
        return _WriteTransaction(self._connection(), self.path, durable)


class _WriteTransaction:
    """``with`` block running one BEGIN IMMEDIATE transaction; commits or rolls back."""

    def __init__(self, conn: sqlite3.Connection, path: Path, durable: bool) -> None:
        self._conn = conn
        self._path = path
        self._durable = durable

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._conn.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise write_error(self._path, exc) from exc
        return self._conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
                return
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as err:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise write_error(self._path, err) from err
        if isinstance(exc, sqlite3.Error):
            raise write_error(self._path, exc) from exc


def write_error(path: Path, exc: sqlite3.Error | OSError, doing: str = "cannot write") -> StoreError:
    """The error for a failed write: ``DiskFull`` when the disk had no room (SQLite rolled the
    transaction back, so a retry once space is freed writes it whole), else ``StoreBroken``."""
    full = (
        exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if isinstance(exc, OSError)
        else (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    )
    if full:
        return DiskFull(
            f"the disk holding {path} is full: nothing was written, and nothing saved before is lost;"
            " free some space and try again"
        )
    detail = exc.strerror if isinstance(exc, OSError) else exc
    return StoreBroken(f"{doing} {path}: {detail}")


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a file renamed into it stays there through a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_hook() -> None:
    """The commit hook of a store nobody listens to."""


def escaped(detail: str) -> str:
    """``detail`` fit to keep: control and non-ASCII characters escaped, at most ``MAX_DETAIL``
    characters (a rejection's message may quote what a peer sent)."""
    return detail.encode("ascii", "backslashreplace").decode().translate(_CONTROLS)[:MAX_DETAIL]


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        # FULL: an envelope whose add returned is on disk even if the machine loses power.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.OperationalError as exc:
        raise StoreBroken(f"cannot open {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreBroken(f"{path} is not a syncq database or is corrupt ({exc})") from exc
    return conn
