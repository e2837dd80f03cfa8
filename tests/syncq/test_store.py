"""One acceptance suite run against every Store adapter (automerge-repo's habit)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncq.errors import StoreBroken, StoreClosed
from syncq.memstore import MemoryStore
from syncq.schema import SCHEMA_VERSION
from syncq.space import Space
from syncq.store import MAX_DETAIL, Checkpoint, Peer, Row, SqliteStore, Store

A, B = b"a" * 32, b"b" * 32


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = SqliteStore.create(tmp_path / "s.db") if request.param == "sqlite" else MemoryStore()
    yield made
    made.close()


def seals(*payloads: bytes) -> list[Callable[[int], bytes]]:
    return [lambda seq, p=p: p + seq.to_bytes(2, "big") for p in payloads]


def test_append_own_allocates_gapless_seqs(store: Store) -> None:
    assert store.append_own(A, seals(b"x", b"y")) == [1, 2]
    assert store.append_own(A, seals(b"z")) == [3]
    assert store.append_own(B, seals(b"w")) == [1]
    assert [r.seq for r in store.rows(A)] == [1, 2, 3]
    assert [r.data for r in store.rows(A, after=2)] == [b"z\x00\x03"]
    assert store.gapless_seqs() == {A: 3, B: 1}
    assert store.count() == 4
    assert store.tops() == {A: 3, B: 1}


def test_a_failing_seal_stores_nothing(store: Store) -> None:
    def broken(seq: int) -> bytes:
        raise ValueError("seal failed")

    with pytest.raises(ValueError):
        store.append_own(A, [*seals(b"ok"), broken])
    assert store.count() == 0


def test_put_drops_duplicates_and_refuses_conflicts(store: Store) -> None:
    report = store.put([Row(A, 1, b"one"), Row(A, 3, b"three")])
    assert [r.seq for r in report.added] == [1, 3]
    again = store.put([Row(A, 1, b"one"), Row(A, 3, b"THREE"), Row(A, 2, b"two")])
    assert again.duplicates == 1
    assert again.conflicts == [Row(A, 3, b"THREE")]
    assert [(r.seq, r.data) for r in store.rows(A)] == [(1, b"one"), (2, b"two"), (3, b"three")]


def test_gapless_seqs_stop_at_the_first_gap(store: Store) -> None:
    store.put([Row(A, 2, b"2"), Row(B, 1, b"1"), Row(B, 2, b"2"), Row(B, 4, b"4"), Row(B, 5, b"5")])
    assert store.gapless_seqs() == {B: 2}  # A lacks seq 1; B lacks seq 3
    store.put([Row(A, 1, b"1"), Row(B, 3, b"3")])
    assert store.gapless_seqs() == {A: 2, B: 5}


def test_gapless_seqs_count_from_a_floor(store: Store) -> None:
    store.put([Row(A, 5, b"5"), Row(A, 6, b"6"), Row(A, 8, b"8"), Row(B, 1, b"1")])
    assert store.gapless_seqs({A: 4}) == {A: 6, B: 1}  # what snapshots cover, then the run after
    assert store.gapless_seqs({A: 7, B: 3}) == {A: 8, B: 3}
    assert store.has_run(A, 4, 6) and not store.has_run(A, 4, 8) and store.has_run(A, 9, 9)


def test_snapshots_are_held_forgotten_and_replaced(store: Store) -> None:
    first, second = b"S" * 100, b"T" * 200
    store.keep_snapshot(first, b"1" * 32, b"head one")
    generation = store.generation()
    store.keep_snapshot(second, b"2" * 32, b"head two", drop=[b"1" * 32])
    assert store.generation() > generation  # what this device covers changed
    assert store.snapshots() == [(b"2" * 32, b"head two")]
    assert store.snapshot_data(b"2" * 32) == second and store.snapshot_data(b"1" * 32) is None
    store.forget_snapshots([b"2" * 32])
    assert store.snapshots() == [] and store.snapshot_data(b"2" * 32) is None


def test_a_snapshot_lives_in_a_private_file_and_one_whose_file_is_gone_covers_nothing(tmp_path: Path) -> None:
    store = SqliteStore.create(tmp_path / "s.db")
    store.keep_snapshot(b"S" * 100, b"1" * 32, b"head")
    path = tmp_path / "snapshots" / ("31" * 32)
    assert path.read_bytes() == b"S" * 100 and path.stat().st_mode & 0o777 == 0o600
    assert store.size_bytes() >= 100
    path.unlink()  # a damaged home: the row names bytes that are not there
    assert store.snapshots() == [] and store.snapshot_data(b"1" * 32) is None
    store.close()


def test_pruning_keeps_device_lists_and_keys(store: Store) -> None:
    rows = [Row(A, s, b"SQ\x02" + bytes([kind]) + b"x" * 80) for s, kind in enumerate([4, 1, 1, 3, 1, 1], 1)]
    store.put([*rows, Row(A, 7, b"SQ\x02\x01 newest")])
    store.mark(A, 2, "bad-tag")
    assert store.prune({A: 6}) == 4
    assert [r.seq for r in store.rows(A)] == [1, 4, 7]
    assert store.quarantined() == {}  # a pruned envelope's mark goes with it


def test_rows_page_through_long_runs(store: Store) -> None:
    store.put([Row(A, s, b"%d" % s) for s in range(1, 2501)])
    assert [r.seq for r in store.rows(A, after=10)] == list(range(11, 2501))


def test_checkpoint_meta_and_rejections(store: Store) -> None:
    assert store.load_checkpoint() is None
    store.save_checkpoint(Checkpoint(vv={A: 2}, data=b"state"))
    store.save_checkpoint(Checkpoint(vv={A: 3, B: 1}, data=b"newer"))
    assert store.load_checkpoint() == Checkpoint(vv={A: 3, B: 1}, data=b"newer")
    assert store.get_meta("k") is None
    store.set_meta("k", "v")
    assert store.get_meta("k") == "v"
    store.record_rejection("bad-tag", "x")
    store.record_rejection("bad-tag", "y")
    store.record_rejection("malformed", "z")
    assert store.rejections() == {"bad-tag": 2, "malformed": 1}
    assert store.size_bytes() >= 0


def test_quarantine_marks_travel_with_their_rows(store: Store) -> None:
    store.put([Row(A, 1, b"one"), Row(A, 2, b"two", "bad-tag"), Row(A, 3, b"three", "unknown-epoch")])
    assert [r.quarantined for r in store.rows(A)] == [None, "bad-tag", "unknown-epoch"]
    assert store.put([Row(A, 2, b"two", "bad-tag")]).duplicates == 1
    store.mark(A, 3, None)  # its key came and it applied
    store.mark(A, 1, "bad-update")
    assert [r.quarantined for r in store.rows(A)] == ["bad-update", "bad-tag", None]
    assert store.quarantined() == {"bad-update": 1, "bad-tag": 1}
    assert store.gapless_seqs() == {A: 3}  # quarantined envelopes are held like any other


def test_rejections_are_one_row_per_reason(tmp_path: Path) -> None:
    store = SqliteStore.create(tmp_path / "s.db")
    for n in range(500):
        store.record_rejection("malformed", f"junk {n}")
    store.record_rejection("bad-tag", "\x1b[31mred\n" + "é" * 500, count=7)
    assert store.rejections() == {"malformed": 500, "bad-tag": 7}
    rows = {r[0]: r for r in store.rejection_details()}
    assert rows["malformed"][4] == "junk 499"
    assert rows["malformed"][2] is not None and rows["malformed"][2] <= rows["malformed"][3]
    detail = rows["bad-tag"][4]
    assert detail.startswith("\\x1b[31mred\\x0a\\xe9") and len(detail) == MAX_DETAIL
    assert detail.isascii() and detail.isprintable()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 2
    conn.close()
    store.close()


SCHEMA_1 = """
CREATE TABLE envelopes (pos INTEGER PRIMARY KEY, author BLOB NOT NULL, seq INTEGER NOT NULL,
    data BLOB NOT NULL, UNIQUE (author, seq));
CREATE TABLE checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1), vv TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE peers (url TEXT PRIMARY KEY, source TEXT NOT NULL, node_id TEXT, name TEXT,
    connected INTEGER NOT NULL DEFAULT 0, last_seen INTEGER, behind INTEGER, error TEXT);
CREATE TABLE rejections (id INTEGER PRIMARY KEY, reason TEXT NOT NULL, detail TEXT NOT NULL);
"""


def test_a_schema_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_1)
    conn.execute("PRAGMA application_id=0x53594E51")
    conn.execute("PRAGMA user_version=1")
    conn.executemany(
        "INSERT INTO envelopes (author, seq, data) VALUES (?, ?, ?)", [(A, 1, b"x"), (A, 2, b"y")]
    )
    conn.executemany("INSERT INTO rejections (reason, detail) VALUES (?, ?)", [("bad-tag", "d")] * 3)
    conn.execute("INSERT INTO meta VALUES ('k', 'v')")
    conn.commit()
    conn.close()
    store = SqliteStore.open(path)
    assert store.rejections() == {"bad-tag": 3}
    assert [(r.seq, r.data, r.quarantined) for r in store.rows(A)] == [(1, b"x", None), (2, b"y", None)]
    assert store.get_meta("k") == "v"
    store.record_rejection("bad-tag", "new")
    assert store.rejections() == {"bad-tag": 4}
    store.put([Row(B, 1, b"q", "forged")])
    assert store.quarantined() == {"forged": 1}
    store.close()
    again = SqliteStore.open(path)  # a second open finds nothing to do
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert again.rejections() == {"bad-tag": 4}
    again.close()


def test_closed_store_refuses_use(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreClosed):
        store.count()
    with pytest.raises(StoreClosed):
        store.append_own(A, seals(b"x"))


def test_sqlite_store_persists_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore.create(path)
    store.append_own(A, seals(b"x"))
    store.close()
    assert path.stat().st_mode & 0o777 == 0o600
    reopened = SqliteStore.open(path)
    assert [r.data for r in reopened.rows(A)] == [b"x\x00\x01"]
    assert reopened.size_bytes() > 0
    reopened.close()
    with pytest.raises(StoreBroken, match="exists already"):
        SqliteStore.create(path)


def test_sqlite_store_refuses_garbage_foreign_missing_and_newer(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreBroken, match="not a syncq database or is corrupt"):
        SqliteStore.open(garbage)
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreBroken, match="another program"):
        SqliteStore.open(foreign)
    with pytest.raises(StoreBroken, match="missing"):
        SqliteStore.open(tmp_path / "absent.db")
    newer = tmp_path / "newer.db"
    SqliteStore.create(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreBroken, match="newer syncq"):
        SqliteStore.open(newer)


def test_a_read_only_database_reports_broken_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore.create(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE envelopes")  # a damaged file: writes fail inside SQLite
    conn.close()
    store = SqliteStore.open(path)
    with pytest.raises(StoreBroken, match="cannot write"):
        store.append_own(A, seals(b"x"))
    with pytest.raises(StoreBroken, match="cannot read"):
        store.count()
    store.close()


def test_peers_are_saved_replaced_and_listed(store: Store) -> None:
    store.save_peer(Peer(url="ws://b:7330", source="config"))
    store.save_peer(Peer(url="ws://a:7330", source="invite"))
    store.save_peer(
        Peer(
            url="ws://b:7330",
            source="config",
            node_id="ab",
            name="gpu",
            connected=True,
            last_seen=5,
            behind=3,
            error=None,
        )
    )
    assert [p.url for p in store.peers()] == ["ws://a:7330", "ws://b:7330"]
    assert store.peers()[1] == Peer(
        url="ws://b:7330", source="config", node_id="ab", name="gpu", connected=True, last_seen=5, behind=3
    )


def test_data_version_changes_when_another_connection_commits(tmp_path: Path) -> None:
    one = SqliteStore.create(tmp_path / "s.db")
    two = SqliteStore.open(tmp_path / "s.db")
    before = one.data_version()
    one.append_own(A, seals(b"mine"))
    assert one.data_version() == before  # own commits do not count
    two.append_own(A, seals(b"theirs"))
    assert one.data_version() != before
    one.close()
    two.close()


def test_tops_see_writes_from_this_and_other_connections(tmp_path: Path) -> None:
    one = SqliteStore.create(tmp_path / "s.db")
    two = SqliteStore.open(tmp_path / "s.db")
    assert one.tops() == {}
    one.append_own(A, seals(b"x"))
    assert one.tops() == {A: 1}
    two.put([Row(B, 4, b"y")])
    assert one.tops() == {A: 1, B: 4}  # the cache notices another process's commit
    one.put([Row(B, 5, b"z")])
    assert one.tops() == two.tops() == {A: 1, B: 5}
    one.close()
    two.close()


def test_committed_is_told_after_each_commit_of_own_envelopes_on_its_connection_only(
    tmp_path: Path,
) -> None:
    one = SqliteStore.create(tmp_path / "s.db")
    two = SqliteStore.open(tmp_path / "s.db")
    told: list[int] = []
    one.committed = lambda: told.append(one.count())  # the commit is visible when it is told
    one.append_own(A, seals(b"x"))
    one.put([Row(B, 1, b"y")])  # received envelopes and bookkeeping: nobody is told
    one.set_meta("k", "v")
    one.append_own(A, seals(b"z"))
    assert told == [1, 3]
    two.append_own(A, seals(b"theirs"))  # another connection's commit: not this one's to tell
    with pytest.raises(ValueError):
        one.append_own(A, [lambda seq: (_ for _ in ()).throw(ValueError("seal failed"))])
    assert told == [1, 3]  # nor a rolled-back transaction

    def broken() -> None:
        raise RuntimeError("a listener's bug")

    one.committed = broken
    assert one.append_own(A, seals(b"still stored")) == [4]  # the write does not look failed
    assert one.count() == 5
    one.close()
    two.close()


def test_own_envelopes_written_without_an_fsync_are_synced_before_they_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore.create(tmp_path / "s.db")
    other = SqliteStore.open(tmp_path / "s.db")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the OS call, watched: which file each fsync was of
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.append_own(A, seals(b"claim"), durable=False)
    assert [r.data for r in other.rows(A)] == [b"claim\x00\x01"]  # committed: others see it
    store.sync()
    store.sync()  # nothing new since: no second fsync
    assert synced == [f"{tmp_path / 's.db'}-wal"]
    store.append_own(A, seals(b"claim"), durable=False)
    store.append_own(A, seals(b"result"))  # a FULL commit syncs the WAL, the claim with it
    store.sync()
    assert len(synced) == 1
    store.close()
    other.close()


def test_envelopes_for_a_peer_are_read_after_a_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Space.init(tmp_path / "h", name="h") as space:
        store = space.store
        assert isinstance(store, SqliteStore)
        order: list[str] = []
        real_sync, real_rows = store.sync, store.rows
        monkeypatch.setattr(store, "sync", lambda: order.append("sync") or real_sync())
        monkeypatch.setattr(store, "rows", lambda *a, **k: order.append("rows") or real_rows(*a, **k))
        space.write(lambda log: log.append_stream("p", "x"), durable=False)
        order.clear()  # the write read the store too
        assert space.envelopes_for({}, 100, 1 << 20)
        assert order[0] == "sync" and "rows" in order
