"""The store in memory: the ``Store`` port without SQLite, for tests and in-process meshes.

It passes the same acceptance suite as ``SqliteStore`` (``tests/syncq/test_store.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

from syncq.errors import StoreClosed, Unlisted
from syncq.store import Checkpoint, Peer, PutReport, Row
from syncq.view import Sealed
from syncq.viewstore import VOIDS_META, MemoryView


class MemoryStore:
    """The store in memory, for tests and in-process meshes; same behaviour as ``SqliteStore``."""

    def __init__(self) -> None:
        self._rows: dict[bytes, dict[int, bytes]] | None = {}
        self._checkpoint: Checkpoint | None = None
        self._meta: dict[str, str] = {}
        self._rejections: Counter[str] = Counter()
        self._marks: dict[tuple[bytes, int], str] = {}
        self._peers: dict[str, Peer] = {}
        self._snapshots: dict[bytes, tuple[bytes, bytes]] = {}  # digest: (head, data)
        self._generation = 0
        self.view = MemoryView(self.generation)

    def append_own(
        self,
        author: bytes,
        seals: Sequence[Callable[[int], bytes]],
        *,
        durable: bool = True,
        view: Sequence[Sealed] = (),
        covered: int | None = None,
    ) -> list[int]:
        """Allocate seqs and store each ``seal(seq)`` (memory: ``durable`` means nothing), with
        the view rows they change."""
        rows = self._all().setdefault(author, {})
        last = max(rows, default=0)
        seqs = list(range(last + 1, last + 1 + len(seals)))
        datas = [seal(seq) for seq, seal in zip(seqs, seals, strict=True)]  # all or nothing
        rows.update(zip(seqs, datas, strict=True))
        self._generation += 1
        if view and seqs and covered in (None, self._generation - 1):
            self.view.appended(view)
            self.view.move(author, seqs, self._generation - 1, self._generation)
        return seqs

    def generation(self) -> int:
        """The count every write of envelopes or marks moves on."""
        self._all()
        return self._generation

    def put(self, rows: Sequence[Row]) -> PutReport:
        """Store envelopes from elsewhere."""
        report = PutReport()
        for row in rows:
            mine = self._all().setdefault(row.author, {})
            found = mine.get(row.seq)
            if found is None:
                mine[row.seq] = row.data
                if row.quarantined is not None:
                    self._marks[(row.author, row.seq)] = row.quarantined
                report.added.append(row)
            elif found == row.data:
                report.duplicates += 1
            else:
                report.conflicts.append(row)
        self._generation += bool(report.added)
        return report

    def tops(self) -> dict[bytes, int]:
        """Per author with at least one envelope, the highest seq stored."""
        return {a: max(rows) for a, rows in sorted(self._all().items()) if rows}

    def rows(self, author: bytes, after: int = 0) -> Iterator[Row]:
        """The author's envelopes after ``after``, in seq order."""
        mine = self._all().get(author, {})
        marks = self._marks
        return iter([Row(author, s, mine[s], marks.get((author, s))) for s in sorted(mine) if s > after])

    def gapless_seqs(self, floor: Mapping[bytes, int] | None = None) -> dict[bytes, int]:
        """Per author, the highest seq with every seq from 1 (or after its floor) to it stored."""
        floor = floor or {}
        found = {a: s for a, s in floor.items() if s > 0}
        for author, rows in self._all().items():
            top = floor.get(author, 0)
            while top + 1 in rows:
                top += 1
            if top:
                found[author] = top
        return found

    def has_run(self, author: bytes, after: int, upto: int) -> bool:
        """Whether every envelope of ``author`` after ``after`` up to ``upto`` is stored."""
        rows = self._all().get(author, {})
        return all(seq in rows for seq in range(after + 1, upto + 1))

    def snapshots(self) -> list[tuple[bytes, bytes]]:
        """The snapshots held: (digest, head), oldest stored first."""
        self._all()
        return [(digest, head) for digest, (head, _) in self._snapshots.items()]

    def snapshot_data(self, digest: bytes) -> bytes | None:
        """A held snapshot's bytes."""
        self._all()
        found = self._snapshots.get(digest)
        return found[1] if found else None

    def keep_snapshot(self, data: bytes, digest: bytes, head: bytes, drop: Sequence[bytes] = ()) -> None:
        """Hold a snapshot and forget those it makes redundant."""
        self._all()
        for gone in drop:
            self._snapshots.pop(gone, None)
        self._snapshots.setdefault(digest, (head, data))
        self._generation += 1

    def prune(self, bounds: Mapping[bytes, int]) -> int:
        """Delete envelopes covered by snapshots, but device lists and keys."""
        gone = 0
        for author, bound in bounds.items():
            rows = self._all().get(author, {})
            for seq in [s for s, data in rows.items() if s <= bound and data[3] not in (3, 4)]:
                del rows[seq]
                self._marks.pop((author, seq), None)
                gone += 1
        return gone

    def forget_snapshots(self, digests: Sequence[bytes]) -> None:
        """Forget held snapshots."""
        self._all()
        for gone in digests:
            self._snapshots.pop(gone, None)
        self._generation += 1

    def sync(self) -> None:
        """Nothing to put on disk."""

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

    def mark(self, author: bytes, seq: int, reason: str | None) -> None:
        """Quarantine a stored envelope for ``reason``, or release it (``None``)."""
        self._all()
        self._generation += 1
        if Unlisted.reason in (reason, self._marks.get((author, seq))):
            self.view.clear()
            self._meta[VOIDS_META] = str(int(self._meta.get(VOIDS_META, "0")) + 1)
        if reason is None:
            self._marks.pop((author, seq), None)
        else:
            self._marks[(author, seq)] = reason

    def quarantined(self) -> dict[str, int]:
        """Quarantined envelopes counted by reason."""
        self._all()
        return dict(Counter(self._marks.values()))

    def record_rejection(self, reason: str, detail: str, count: int = 1) -> None:
        """Count refused envelopes."""
        self._all()
        self._rejections[reason] += count

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
