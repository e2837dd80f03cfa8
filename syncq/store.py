"""Local persistence of envelopes and checkpoints: the ``Store`` port and its two adapters.

A store holds opaque sealed envelopes keyed by (author, seq), an encrypted checkpoint of the Doc
state with the version vector it covers, a few metadata strings and a count of rejected
envelopes. It never sees plaintext: the database must hold no prompt or result.

``SqliteStore`` is the real one; ``MemoryStore`` backs in-process tests. Both pass the same
acceptance suite (``tests/syncq/test_store.py``).

Why plain ``sqlite3`` and not sqlite-utils (which DESIGN.md names): importing sqlite-utils costs
about 115 ms, most of the 150 ms budget of a cold ``syncq add``, and every query here is a
hand-written transaction (BEGIN IMMEDIATE to allocate seqs) that sqlite-utils would not help with.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from syncq.errors import StoreBroken, StoreClosed

APPLICATION_ID = 0x53594E51  # "SYNQ": tells our database from any other SQLite file
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS envelopes (
    pos    INTEGER PRIMARY KEY,          -- arrival order on this device
    author BLOB    NOT NULL,             -- 32-byte Ed25519 public key
    seq    INTEGER NOT NULL,             -- per author, gapless from 1
    data   BLOB    NOT NULL,             -- the sealed envelope, exactly as signed
    UNIQUE (author, seq)
);
CREATE TABLE IF NOT EXISTS checkpoint (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    vv     TEXT    NOT NULL,             -- JSON {author hex: seq} covered by the state
    data   BLOB    NOT NULL              -- the Doc state, sealed with a local key
);
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    url       TEXT PRIMARY KEY,          -- ws://host:port, or "inbound:<node id>"
    source    TEXT NOT NULL,             -- config | invite | mdns | inbound
    node_id   TEXT,
    name      TEXT,
    connected INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER,                   -- ms since the epoch
    behind    INTEGER,                   -- envelopes we hold that the peer lacks
    error     TEXT
);
CREATE TABLE IF NOT EXISTS rejections (
    id     INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Row:
    """One stored envelope."""

    author: bytes
    seq: int
    data: bytes


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

    def append_own(self, author: bytes, seals: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Allocate the next seqs of ``author`` and store ``seal(seq)`` for each, atomically."""
        ...

    def put(self, rows: Sequence[Row]) -> PutReport:
        """Store envelopes from elsewhere; exact duplicates are dropped, conflicts refused."""
        ...

    def tops(self) -> dict[bytes, int]:
        """Per author with at least one envelope, the highest seq stored."""
        ...

    def rows(self, author: bytes, after: int = 0) -> Iterator[Row]:
        """The author's envelopes with seq > ``after``, in seq order."""
        ...

    def gapless_seqs(self) -> dict[bytes, int]:
        """Per author, the highest seq such that every seq from 1 to it is stored.

        This, not the highest stored seq, is what a device may tell peers it has: an envelope
        held after a gap must not hide the missing one.
        """
        ...

    def count(self) -> int:
        """How many envelopes are stored."""
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

    def record_rejection(self, reason: str, detail: str) -> None:
        """Count an envelope that was refused."""
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
            conn.executescript(_SCHEMA)
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
        return cls(conn, path)

    def append_own(self, author: bytes, seals: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Allocate seqs and store each ``seal(seq)`` in one transaction."""
        self._tops = None
        with self._write() as conn:
            last = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM envelopes WHERE author = ?", (author,)
            ).fetchone()[0]
            seqs = list(range(last + 1, last + 1 + len(seals)))
            conn.executemany(
                "INSERT INTO envelopes (author, seq, data) VALUES (?, ?, ?)",
                [(author, seq, seal(seq)) for seq, seal in zip(seqs, seals, strict=True)],
            )
        return seqs

    def put(self, rows: Sequence[Row]) -> PutReport:
        """Store envelopes from elsewhere in one transaction.

        Without an fsync of its own (synchronous=NORMAL): the commit is atomic and survives the
        process being killed, and power loss can only drop the last few received envelopes,
        which their authors (who stored them with an fsync) send again on the next sync, as
        HAVE is computed from what is stored. Own envelopes are different: losing one would let
        this device reuse a seq that peers already saw.
        """
        report = PutReport()
        self._tops = None
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
                    report.added.append(row)
                elif found[0] == row.data:
                    report.duplicates += 1
                else:
                    report.conflicts.append(row)
        return report

    def tops(self) -> dict[bytes, int]:
        """Per author with at least one envelope, the highest seq stored."""
        version = self.data_version()
        if self._tops is None or self._tops[0] != version:
            found = self._read("SELECT author, MAX(seq) FROM envelopes GROUP BY author ORDER BY author")
            self._tops = (version, {author: top for author, top in found})
        return self._tops[1]

    def rows(self, author: bytes, after: int = 0) -> Iterator[Row]:
        """The author's envelopes after ``after``, in seq order (fetched in pages)."""
        while True:
            page = self._read(
                "SELECT seq, data FROM envelopes WHERE author = ? AND seq > ? ORDER BY seq LIMIT 1000",
                (author, after),
            )
            for seq, data in page:
                yield Row(author, seq, data)
            if len(page) < 1000:
                return
            after = page[-1][0]

    def gapless_seqs(self) -> dict[bytes, int]:
        """Per author, the highest seq with every seq from 1 to it stored."""
        # Seqs are unique per author, so MAX(seq) = COUNT(*) means "no gap" (the usual case);
        # otherwise the end of the first run is the first seq whose successor is missing.
        found = {}
        for author, top, count, first in self._read(
            "SELECT author, MAX(seq), COUNT(*), MIN(seq) FROM envelopes GROUP BY author"
        ):
            if first != 1:
                continue
            if top != count:
                top = self._read(
                    "SELECT MIN(seq) FROM envelopes e WHERE author = ? AND NOT EXISTS "
                    "(SELECT 1 FROM envelopes f WHERE f.author = e.author AND f.seq = e.seq + 1)",
                    (author,),
                )[0][0]
            found[author] = top
        return found

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

    def record_rejection(self, reason: str, detail: str) -> None:
        """Count an envelope that was refused."""
        with self._write(durable=False) as conn:
            conn.execute("INSERT INTO rejections (reason, detail) VALUES (?, ?)", (reason, detail))

    def rejections(self) -> dict[str, int]:
        """Refused envelopes counted by reason."""
        return dict(self._read("SELECT reason, COUNT(*) FROM rejections GROUP BY reason"))

    def size_bytes(self) -> int:
        """Bytes of the database file and its WAL."""
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists())

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
            raise StoreBroken(f"cannot write {self._path}: {exc}") from exc
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
            raise StoreBroken(f"cannot write {self._path}: {err}") from err
        if isinstance(exc, sqlite3.Error):
            raise StoreBroken(f"cannot write {self._path}: {exc}") from exc


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


class MemoryStore:
    """The store in memory, for tests and in-process meshes; same behaviour as ``SqliteStore``."""

    def __init__(self) -> None:
        self._rows: dict[bytes, dict[int, bytes]] | None = {}
        self._checkpoint: Checkpoint | None = None
        self._meta: dict[str, str] = {}
        self._rejections: Counter[str] = Counter()
        self._peers: dict[str, Peer] = {}

    def append_own(self, author: bytes, seals: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Allocate seqs and store each ``seal(seq)``."""
        rows = self._all().setdefault(author, {})
        last = max(rows, default=0)
        seqs = list(range(last + 1, last + 1 + len(seals)))
        datas = [seal(seq) for seq, seal in zip(seqs, seals, strict=True)]  # all or nothing
        rows.update(zip(seqs, datas, strict=True))
        return seqs

    def put(self, rows: Sequence[Row]) -> PutReport:
        """Store envelopes from elsewhere."""
        report = PutReport()
        for row in rows:
            mine = self._all().setdefault(row.author, {})
            found = mine.get(row.seq)
            if found is None:
                mine[row.seq] = row.data
                report.added.append(row)
            elif found == row.data:
                report.duplicates += 1
            else:
                report.conflicts.append(row)
        return report

    def tops(self) -> dict[bytes, int]:
        """Per author with at least one envelope, the highest seq stored."""
        return {a: max(rows) for a, rows in sorted(self._all().items()) if rows}

    def rows(self, author: bytes, after: int = 0) -> Iterator[Row]:
        """The author's envelopes after ``after``, in seq order."""
        mine = self._all().get(author, {})
        return iter([Row(author, s, mine[s]) for s in sorted(mine) if s > after])

    def gapless_seqs(self) -> dict[bytes, int]:
        """Per author, the highest seq with every seq from 1 to it stored."""
        found = {}
        for author, rows in self._all().items():
            top = 0
            while top + 1 in rows:
                top += 1
            if top:
                found[author] = top
        return found

    def count(self) -> int:
        """How many envelopes are stored."""
        return sum(len(rows) for rows in self._all().values())

    def load_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint, if any."""
        self._all()
        return self._checkpoint

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Replace the checkpoint."""
        self._all()
        self._checkpoint = Checkpoint(vv=dict(checkpoint.vv), data=checkpoint.data)

    def get_meta(self, key: str) -> str | None:
        """A metadata string."""
        self._all()
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata string."""
        self._all()
        self._meta[key] = value

    def record_rejection(self, reason: str, detail: str) -> None:
        """Count an envelope that was refused."""
        self._all()
        self._rejections[reason] += 1

    def rejections(self) -> dict[str, int]:
        """Refused envelopes counted by reason."""
        self._all()
        return dict(self._rejections)

    def size_bytes(self) -> int:
        """Nothing on disk."""
        self._all()
        return 0

    def save_peer(self, peer: Peer) -> None:
        """Insert or replace a peer."""
        self._all()
        self._peers[peer.url] = peer

    def peers(self) -> list[Peer]:
        """Every known peer, by url."""
        self._all()
        return [self._peers[url] for url in sorted(self._peers)]

    def data_version(self) -> int:
        """Always the same: no other process can write to memory."""
        self._all()
        return 0

    def close(self) -> None:
        """Drop everything; later calls raise ``StoreClosed``."""
        self._rows = None

    def _all(self) -> dict[bytes, dict[int, bytes]]:
        if self._rows is None:
            raise StoreClosed("the store is closed")
        return self._rows
