"""Local storage of attachments: sealed chunks in ``blobs/<id>`` files, indexed in ``blobs.db``.

Each blob is one file holding its sealed chunks at fixed offsets (chunk i at i * (1 MiB + 16));
``blobs.db`` (SQLite) records which chunks are there, with their relay tags. A chunk is written
to its file first and recorded second, so a recorded chunk is always whole after a kill -9, and
a transfer resumes by asking which chunks are missing (one indexed query). After a power cut a
record may outlive its bytes (received chunks are not fsync'd one by one): reading checks the
AEAD or the tag again, and a bad chunk is dropped and fetched again.

Why not the chunks themselves in SQLite (the first version): every 1 MiB row crossed SQLite's
WAL and was then copied into the database by checkpoints, fsync'd on the node's event loop; a
100 MiB transfer ran at 80-100 MiB/s, about a fifth of a plain websocket. Why a database apart
from ``syncq.db``: a transfer would otherwise wake every process that follows the log for each
chunk it records.

Like the envelope store, this holds no plaintext: chunks are sealed (``syncq.blobs``) before they
are stored, and ``save`` decrypts into the caller's folder only.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from syncq.blobs import (
    CHUNK_SIZE,
    ID_SIZE,
    MAX_BLOB_SIZE,
    BlobRef,
    Sealer,
    check_name,
    chunk_count,
    chunk_length,
)
from syncq.crypto import TAG_SIZE
from syncq.errors import BadTag, BlobError, BlobUnavailable, InvalidInput, StoreBroken

BUSY_TIMEOUT_MS = 30_000
DEFAULT_RELAY_QUOTA = 2 << 30  # bytes a relay keeps for one member (relay_quota in config.toml)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id    BLOB    NOT NULL,              -- 32-byte content id (syncq.blobs)
    idx   INTEGER NOT NULL,
    size  INTEGER NOT NULL,              -- the whole blob's plaintext size
    epoch INTEGER NOT NULL,
    tag   BLOB    NOT NULL,              -- the relay tag of the sealed chunk in blobs/<id>
    PRIMARY KEY (id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wants (
    id    BLOB    PRIMARY KEY,           -- blobs to fetch: asked by a local process, or (at a
    size  INTEGER NOT NULL,              -- relay) by a member that asked it to keep them
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS own (
    id    BLOB    PRIMARY KEY,           -- blobs added on this device (add_file): relays are
    size  INTEGER NOT NULL,              -- asked to keep them
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kept (
    id    BLOB    PRIMARY KEY,           -- (at a relay) a blob kept for a member: the one whose
    peer  BLOB    NOT NULL,              -- KEEP_BLOB came first, whose quota it counts against
    size  INTEGER NOT NULL,
    at    REAL    NOT NULL               -- when it was asked for (time.time())
);
CREATE INDEX IF NOT EXISTS kept_peer ON kept (peer);
CREATE TABLE IF NOT EXISTS offered (
    peer  BLOB    NOT NULL,              -- a relay's node id, and an own blob it said it keeps
    id    BLOB    NOT NULL,
    PRIMARY KEY (peer, id)
) WITHOUT ROWID;
"""

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One sealed chunk as stored and sent."""

    blob_id: bytes
    index: int
    size: int  # of the whole blob
    epoch: int
    sealed: bytes
    tag: bytes


class BlobStore:
    """The chunks of every attachment this device holds. Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.parent / "blobs"
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._conn = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreBroken(f"cannot open the attachment store {path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the database."""
        with self._lock:
            self._conn.close()

    # -- adding files ------------------------------------------------------------------------

    def add_file(
        self,
        path: Path,
        sealer: Sealer,
        *,
        name: str | None = None,
        limit: int = MAX_BLOB_SIZE,
        progress: Progress | None = None,
    ) -> BlobRef:
        """Seal and store a file; returns its reference once it is durably stored.

        The file is read twice (its id is the HMAC of the whole content, and the chunk keys
        follow from the id). Raises ``InvalidInput`` for a missing, unreadable or too large file.
        """
        name = check_name(name if name is not None else path.name)
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise InvalidInput(f"{path} is not a regular file")
        except OSError as exc:
            raise InvalidInput(f"cannot attach {path}: {exc.strerror}") from exc
        if size > limit:
            raise InvalidInput(
                f"{path} is {_mib(size)}; attachments are limited to {_mib(limit)} "
                "(blob_limit in the [node] table of config.toml)"
            )
        hasher = sealer.hasher()
        for piece in _read_chunks(path):
            hasher.update(piece)
        blob_id = hasher.digest()
        have = set(self._indices(blob_id))
        rows, done = [], 0
        with self._open_blob(blob_id) as fd:
            for index, piece in enumerate(_read_chunks(path)):
                if index not in have:
                    sealed, tag = sealer.seal(blob_id, size, index, piece)
                    os.pwrite(fd, sealed, _offset(index))
                    rows.append((blob_id, index, size, sealer.epoch, tag))
                done += len(piece)
                if progress is not None:
                    progress(done, size)
            if done != size:
                raise InvalidInput(f"{path} changed while it was being attached; try again")
            os.fsync(fd)  # the bytes first: a prompt naming this file may be written next
        with self._lock:
            # FULL: the records are durable once this returns, like the bytes above.
            self._conn.execute("PRAGMA synchronous=FULL")
            try:
                self._begin()
                self._conn.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)", rows)
                self._conn.execute(
                    "INSERT OR IGNORE INTO own VALUES (?, ?, ?)", (blob_id, size, sealer.epoch)
                )
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._conn.execute("PRAGMA synchronous=NORMAL")
        return BlobRef(id=blob_id.hex(), name=name, size=size, epoch=sealer.epoch)

    # -- chunks --------------------------------------------------------------------------------

    def missing(self, blob_id: bytes, size: int) -> list[int]:
        """The indices of the chunks not stored here, in order."""
        have = set(self._indices(blob_id))
        return [i for i in range(chunk_count(size)) if i not in have]

    def complete(self, ref: BlobRef) -> bool:
        """Whether every chunk of the blob is here."""
        return not self.missing(ref.raw_id, ref.size)

    def stored_bytes(self, blob_id: bytes) -> int:
        """Plaintext bytes of the blob held here (for progress)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), MAX(size) FROM chunks WHERE id = ?", (blob_id,)
            ).fetchone()
        count, size = row
        return 0 if not count else min(size, count * CHUNK_SIZE)

    def chunk(self, blob_id: bytes, index: int) -> Chunk | None:
        """One stored chunk, if it is here (its bytes as the file holds them: callers check)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT size, epoch, tag FROM chunks WHERE id = ? AND idx = ?", (blob_id, index)
            ).fetchone()
        if row is None:
            return None
        size, epoch, tag = row
        try:
            with self._open_blob(blob_id, create=False) as fd:
                sealed = os.pread(fd, chunk_length(size, index) + TAG_SIZE, _offset(index))
                os.utime(fd)  # last used now: a relay forgets the blobs nobody used for long
        except OSError:
            return None  # the file went away (lost in a power cut, or removed by hand)
        return Chunk(blob_id, index, size, epoch, sealed, tag)

    def put_chunk(self, chunk: Chunk) -> bool:
        """Store a chunk the caller has checked; False if it was here already."""
        with self._open_blob(chunk.blob_id) as fd:
            os.pwrite(fd, chunk.sealed, _offset(chunk.index))  # the bytes, then their record
        with self._lock:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)",
                (chunk.blob_id, chunk.index, chunk.size, chunk.epoch, chunk.tag),
            )
        return cursor.rowcount > 0

    def usage(self) -> tuple[int, int]:
        """How many blobs are held here, and their bytes on disk (sealed)."""
        sizes = []
        for path in self.folder.iterdir():
            with contextlib.suppress(OSError):
                sizes.append(path.stat().st_size)
        return len(sizes), sum(sizes)

    def forget_unused(self, before: float) -> int:
        """Delete the blobs neither stored nor read since ``before`` (a time.time() value);
        returns how many. A relay does this: it keeps copies for members, not their files."""
        forgotten = 0
        for path in self.folder.iterdir():
            try:
                blob_id = bytes.fromhex(path.name)
                if len(blob_id) != ID_SIZE or path.stat().st_mtime >= before:
                    continue
            except (ValueError, OSError):
                continue  # not a blob file (a stray file, or gone meanwhile)
            with self._lock:  # the records first: a record must never outlive its bytes
                self._conn.execute("DELETE FROM chunks WHERE id = ?", (blob_id,))
                self._conn.execute("DELETE FROM wants WHERE id = ?", (blob_id,))
                self._conn.execute("DELETE FROM kept WHERE id = ?", (blob_id,))
            path.unlink(missing_ok=True)
            forgotten += 1
        self._forget_unfetched(before)
        return forgotten

    def _forget_unfetched(self, before: float) -> None:
        # A kept file that never arrived (its member went away for good) would hold its quota
        # forever: its record goes after as long as an unused file would.
        with self._lock:
            rows = self._conn.execute("SELECT id FROM kept WHERE at < ?", (before,)).fetchall()
            for (blob_id,) in rows:
                if not (self.folder / blob_id.hex()).exists():
                    self._conn.execute("DELETE FROM kept WHERE id = ?", (blob_id,))
                    self._conn.execute("DELETE FROM wants WHERE id = ?", (blob_id,))

    # -- a relay's copies for members, within each member's quota -----------------------------

    def keep(self, ref: BlobRef, peer: bytes, quota: int, now: float) -> int | None:
        """Record that the member ``peer`` asks this relay to keep ``ref``: None if it is kept
        (now, or already for any member: it costs no more disk), else the bytes that member's
        kept files already take, which leave no room for it within ``quota``."""
        with self._lock:
            if self._conn.execute("SELECT 1 FROM kept WHERE id = ?", (ref.raw_id,)).fetchone():
                return None
            used = self._kept_bytes(peer)
            if used + ref.size > quota:
                return used
            self._conn.execute("INSERT INTO kept VALUES (?, ?, ?, ?)", (ref.raw_id, peer, ref.size, now))
        return None

    def kept_bytes(self, peer: bytes) -> int:
        """The bytes of the files kept here for the member ``peer``."""
        with self._lock:
            return self._kept_bytes(peer)

    def _kept_bytes(self, peer: bytes) -> int:  # the lock held
        used: int = self._conn.execute(
            "SELECT COALESCE(SUM(size), 0) FROM kept WHERE peer = ?", (peer,)
        ).fetchone()[0]
        return used

    def drop_chunk(self, blob_id: bytes, index: int) -> None:
        """Forget a chunk that turned out to be bad, so that it is fetched again."""
        with self._lock:
            self._conn.execute("DELETE FROM chunks WHERE id = ? AND idx = ?", (blob_id, index))

    # -- saving ----------------------------------------------------------------------------------

    def save(self, ref: BlobRef, sealer: Sealer, dest: Path) -> Path:
        """Decrypt the blob into the file ``dest`` (written whole, then renamed into place).

        Raises ``BlobUnavailable`` if chunks are missing, ``BlobError`` if one fails
        authentication (it is dropped, so a fetch gets it again) or the whole does not match
        its id.
        """
        blob_id = ref.raw_id
        missing = self.missing(blob_id, ref.size)
        if missing:
            raise BlobUnavailable(f"{ref.name}: {len(missing)} of {ref.chunks} chunks are not here yet")
        hasher = sealer.hasher()
        partial = dest.with_name(f".{dest.name}.partial")
        try:
            with open(partial, "wb") as out:
                for index in range(ref.chunks):
                    found = self.chunk(blob_id, index)
                    try:
                        if found is None:
                            raise BadTag(f"chunk {index} of {ref.name} is recorded but its file is gone")
                        plain = sealer.open(blob_id, ref.size, index, found.sealed)
                    except BadTag as exc:
                        self.drop_chunk(blob_id, index)
                        raise BlobError(f"{ref.name}: {exc}; it will be fetched again") from exc
                    hasher.update(plain)
                    out.write(plain)
            if not hmac.compare_digest(hasher.digest(), blob_id):
                raise BlobError(f"{ref.name}: the decrypted file does not match its id")
            partial.replace(dest)
        except OSError as exc:
            raise BlobError(f"cannot write {dest}: {exc.strerror}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return dest

    # -- wants: local processes asking the node to fetch --------------------------------------

    def want(self, ref: BlobRef) -> None:
        """Ask this home's node to fetch the blob."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO wants VALUES (?, ?, ?)", (ref.raw_id, ref.size, ref.epoch)
            )

    def wants(self) -> list[BlobRef]:
        """Blobs asked for and not yet complete (named by id)."""
        with self._lock:
            rows = self._conn.execute("SELECT id, size, epoch FROM wants").fetchall()
        refs = [BlobRef.by_id(*r) for r in rows]
        done = [r for r in refs if self.complete(r)]
        with self._lock:
            self._conn.executemany("DELETE FROM wants WHERE id = ?", [(r.raw_id,) for r in done])
        return [r for r in refs if r not in done]

    # -- offers: own blobs that relays are asked to keep ---------------------------------------

    def unoffered(self, peer: bytes) -> list[BlobRef]:
        """Own blobs the relay ``peer`` has not been asked to keep yet (named by id)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, size, epoch FROM own WHERE NOT EXISTS "
                "(SELECT 1 FROM offered WHERE offered.peer = ? AND offered.id = own.id)",
                (peer,),
            ).fetchall()
        return [BlobRef.by_id(*r) for r in rows]

    def offered_to(self, peer: bytes, blob_ids: list[bytes]) -> None:
        """Record that the relay ``peer`` keeps these blobs (it answered their KEEP_BLOB)."""
        with self._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO offered VALUES (?, ?)", [(peer, i) for i in blob_ids]
            )

    def data_version(self) -> int:
        """Changes when another process commits to this database."""
        with self._lock:
            value: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        return value

    # -- internals -----------------------------------------------------------------------------

    def _indices(self, blob_id: bytes) -> Iterator[int]:
        with self._lock:
            rows = self._conn.execute("SELECT idx FROM chunks WHERE id = ?", (blob_id,)).fetchall()
        return (r[0] for r in rows)

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def _open_blob(self, blob_id: bytes, *, create: bool = True) -> Iterator[int]:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(self.folder / blob_id.hex(), flags, 0o600)
        try:
            yield fd
        finally:
            os.close(fd)


def _offset(index: int) -> int:
    return index * (CHUNK_SIZE + TAG_SIZE)


def _read_chunks(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            first = True
            while (piece := f.read(CHUNK_SIZE)) or first:
                first = False
                yield piece
                if len(piece) < CHUNK_SIZE:
                    return
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"
