from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import syncq
from syncq import crypto, yjs
from syncq.errors import (
    AlreadyInitialized,
    InvalidInput,
    InvalidState,
    NotInitialized,
    StoreBroken,
    StoreClosed,
    UnknownId,
)
from syncq.ids import new_prompt_id
from syncq.lifecycle import Status
from syncq.records import Claim, Result, RunStatus
from syncq.replica import CHECKPOINT_AFTER
from syncq.space import NewPrompt, Space
from syncq.store import SqliteStore


def ids(space: Space, **filters: object) -> list[str]:
    return [e.prompt.id for e in space.entries(limit=None, **filters)]  # type: ignore[arg-type]


def test_added_prompt_is_queued_and_survives_reopening(space: Space, home: Path) -> None:
    prompt = space.add("Why is the sky blue?", model="gemma3-270m", params={"max_tokens": 32})
    assert space.show(prompt.id[:20]).status is Status.QUEUED
    space.close()
    with Space.open(home) as again:
        entry = again.show(prompt.id)
        assert entry.prompt == prompt
        assert entry.prompt.params == {"max_tokens": 32}


def test_log_is_newest_last_and_filters(space: Space) -> None:
    a = space.add("one", model="echo")
    b = space.add("two", model="gemma3-270m")
    c = space.add("three", model="echo")
    space.cancel(b.id)
    assert ids(space) == [a.id, b.id, c.id]
    assert [e.prompt.id for e in space.entries(limit=2)] == [b.id, c.id]
    assert ids(space, model="echo") == [a.id, c.id]
    assert ids(space, status="cancelled") == [b.id]
    assert ids(space, status=Status.QUEUED) == [a.id, c.id]
    assert ids(space, since=a.id) == [b.id, c.id]


def test_writes_of_another_process_show_up_in_a_loaded_log(space: Space, home: Path) -> None:
    assert len(space.log) == 0
    with Space.open(home) as other:
        other.add("from elsewhere", model="echo")
        other.cancel(other.log.prompt_ids()[0])
    assert [e.status for e in space.entries()] == [Status.CANCELLED]


def test_cancel_rules(space: Space) -> None:
    prompt = space.add("x", model="echo")
    assert space.cancel(prompt.id).status is Status.CANCELLED
    with pytest.raises(InvalidState, match="cancelled already"):
        space.cancel(prompt.id)
    with pytest.raises(UnknownId):
        space.cancel("7ZZZ")
    done = space.add("y", model="echo")
    space.put_result(
        Result(
            prompt_id=done.id,
            node=space.device_id,
            node_name="gpu",
            attempt=1,
            status=RunStatus.DONE,
            output="ok",
            started_at=1,
            finished_at=2,
        )
    )
    with pytest.raises(InvalidState, match="done already"):
        space.cancel(done.id)


def test_claims_and_results_drive_the_status(space: Space) -> None:
    prompt = space.add("x", model="echo", max_attempts=2)
    node = space.device_id
    space.put_claim(Claim(prompt_id=prompt.id, node=node, attempt=1, heartbeat=1))
    assert space.show(prompt.id).status is Status.CLAIMED
    space.put_claim(Claim(prompt_id=prompt.id, node=node, attempt=1, heartbeat=2, running=True))
    assert space.show(prompt.id).status is Status.RUNNING
    for attempt in (1, 2):
        space.put_result(
            Result(
                prompt_id=prompt.id,
                node=node,
                node_name="gpu",
                attempt=attempt,
                status=RunStatus.FAILED,
                error="oom",
                started_at=1,
                finished_at=2,
            )
        )
    entry = space.show(prompt.id)
    assert entry.status is Status.FAILED
    assert entry.result is not None and entry.result.error == "oom"
    assert len(entry.results) == 2


def test_bad_input_stores_nothing(space: Space) -> None:
    with pytest.raises(InvalidInput):
        space.add_many([NewPrompt(text="fine", model="echo"), NewPrompt(text="", model="echo")])
    with pytest.raises(InvalidInput):
        space.add("x", model="echo", priority=10_000)
    assert space.entries() == []


def test_add_many_splits_large_batches_into_envelopes(space: Space) -> None:
    before = space.store.count()
    prompts = space.add_many([NewPrompt(text="x" * 1000, model="echo") for _ in range(1200)])
    assert len(prompts) == 1200
    assert 2 <= space.store.count() - before <= 4
    assert len(space.log) == 1200


def test_members_exchange_envelopes_and_converge(space: Space, member: Callable[[str], Space]) -> None:
    gpu = member("gpu")
    space.add("hello", model="echo")
    gpu.add("from the gpu", model="echo")
    report = gpu.receive(space.envelopes(gpu.version_vector()))
    assert report.added == 2 and not report.rejected  # the device record and the prompt
    space.receive(gpu.envelopes(space.version_vector()))
    assert ids(space) == ids(gpu)
    assert {d.name for d in gpu.log.devices()} == {"laptop", "gpu"}
    again = gpu.receive(space.envelopes())
    assert again.added == 0 and again.duplicates == 4  # both devices, two envelopes each


def test_envelopes_after_a_gap_are_held_until_it_fills(space: Space, member: Callable[[str], Space]) -> None:
    gpu = member("gpu")
    first = space.add("first", model="echo")
    second = space.add("second", model="echo")
    envelopes = list(space.envelopes())  # device record, first, second
    gpu.receive([envelopes[2]])
    gpu.receive([envelopes[1]])
    assert ids(gpu) == []  # seq 1 is still missing: 2 and 3 are stored, not applied
    gpu.receive([envelopes[0]])
    assert ids(gpu) == [first.id, second.id]


def test_rejected_envelopes_are_counted_and_never_applied(
    space: Space, member: Callable[[str], Space], tmp_path: Path
) -> None:
    gpu = member("gpu")
    good = next(iter(space.envelopes()))
    space.add("secret", model="echo")
    tampered = bytearray(list(space.envelopes())[-1])
    tampered[100] ^= 1
    stranger = Space.init(tmp_path / "stranger", name="stranger")
    stranger.add("not yours", model="echo")
    conflicting = crypto.seal(
        device=space.device, space=space.keys, seq=1, payload=b"\x00\x00", nonce=b"n" * 12
    )
    report = gpu.receive([bytes(tampered), *stranger.envelopes(), b"garbage", good, conflicting])
    assert report.added == 1
    assert report.rejected == {"bad-signature": 1, "wrong-space": 2, "malformed": 1, "seq-conflict": 1}
    assert gpu.entries() == []
    assert gpu.status().rejected == report.rejected
    stranger.close()


def test_broken_payloads_and_records_from_a_member_do_not_break_the_log(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    bad_payload = crypto.seal(
        device=space.device, space=space.keys, seq=2, payload=b"\xff\xff", nonce=b"n" * 12
    )
    bad_record = crypto.seal(
        device=space.device,
        space=space.keys,
        seq=3,
        nonce=b"m" * 12,
        payload=yjs.encode_map_inserts(99, 0, "prompts", [(new_prompt_id(1, bytes(10)), {"bogus": 1})]),
    )
    gpu.receive([*space.envelopes(), bad_payload, bad_record])
    later = space.add("after the junk", model="echo")  # seq 2 on the laptop: a conflict for gpu
    gpu.add("local", model="echo")
    assert [e.prompt.input for e in gpu.entries()] == ["local"]
    assert gpu.status().prompts == 2  # the malformed record exists, but no query shows it
    assert gpu.status().rejected == {"bad-update": 1}
    assert later.id not in ids(gpu)


def test_checkpoint_is_written_and_used(space: Space, home: Path) -> None:
    for i in range(CHECKPOINT_AFTER + 5):
        space.add(f"p{i}", model="echo")
    space.close()
    with Space.open(home) as opened:
        assert len(opened.log) == CHECKPOINT_AFTER + 5
        checkpoint = opened.store.load_checkpoint()
        assert checkpoint is not None
        assert checkpoint.vv == {opened.device.public_key: CHECKPOINT_AFTER + 6}
        opened.add("after the checkpoint", model="echo")
    with Space.open(home) as reopened:
        assert len(reopened.log) == CHECKPOINT_AFTER + 6
        assert reopened.entries(limit=1)[0].prompt.input == "after the checkpoint"


def test_a_damaged_checkpoint_is_ignored_and_rebuilt(space: Space, home: Path) -> None:
    for i in range(5):
        space.add(f"p{i}", model="echo")
    space.checkpoint()
    space.close()
    conn = sqlite3.connect(home / "syncq.db")
    conn.execute("UPDATE checkpoint SET data = zeroblob(100)")
    conn.commit()
    conn.close()
    with Space.open(home) as opened:
        assert len(opened.log) == 5
        assert opened.status().rejected == {"bad-tag": 1}


def test_no_plaintext_at_rest(space: Space, home: Path) -> None:
    marker = "MARKER-7f3a9c-the-user-secret"
    prompt = space.add(f"please keep {marker} private", model="echo", params={"stop": marker[:60]})
    space.put_result(
        Result(
            prompt_id=prompt.id,
            node=space.device_id,
            node_name="gpu",
            attempt=1,
            status=RunStatus.DONE,
            output=f"answer with {marker}",
            started_at=1,
            finished_at=2,
        )
    )
    space.checkpoint()
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files)
    for path in files:
        data = path.read_bytes()
        assert marker.encode() not in data, path
        assert marker.encode("utf-16-le") not in data, path


def test_init_twice_and_open_before_init(space: Space, home: Path, tmp_path: Path) -> None:
    with pytest.raises(AlreadyInitialized):
        Space.init(home, name="again")
    with pytest.raises(NotInitialized):
        Space.open(tmp_path / "nothing")


def test_a_database_of_another_space_is_refused(space: Space, home: Path, tmp_path: Path) -> None:
    other = Space.init(tmp_path / "other", name="other")
    other.close()
    space.close()
    (home / "syncq.db").unlink()
    for suffix in ("", "-wal", "-shm"):
        src = tmp_path / "other" / f"syncq.db{suffix}"
        if src.exists():
            (home / f"syncq.db{suffix}").write_bytes(src.read_bytes())
    with pytest.raises(StoreBroken, match="belongs to space"):
        Space.open(home)


def test_a_failed_write_leaves_no_gap_in_later_adds(space: Space, member: Callable[[str], Space]) -> None:
    gpu = member("gpu")
    space.store.close()  # the next write fails, as on a full disk
    with pytest.raises(StoreClosed):
        space.add("lost", model="echo")
    space.store = SqliteStore.open(space.paths.database)
    kept = space.add("kept", model="echo")
    gpu.receive(space.envelopes())
    assert ids(gpu) == [kept.id]


def test_a_change_that_failed_to_store_is_not_shown(space: Space) -> None:
    prompt = space.add("x", model="echo")
    assert space.show(prompt.id).status is Status.QUEUED
    assert isinstance(space.store, SqliteStore)
    space.store._connection().execute("PRAGMA query_only=ON")  # reads work, writes fail
    with pytest.raises(StoreBroken, match="cannot write"):
        space.cancel(prompt.id)
    space.store._connection().execute("PRAGMA query_only=OFF")
    assert space.show(prompt.id).status is Status.QUEUED  # the Doc was rebuilt from the store
    assert space.cancel(prompt.id).status is Status.CANCELLED


def test_a_write_between_two_of_another_process_of_the_home_is_still_read(tmp_path: Path) -> None:
    """Own envelopes are taken into the Doc without reading them back (``Replica.stored_own``),
    unless another process of the home wrote in between: its seqs leave a gap, then filled
    from the store."""
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
    with Space.open(home) as node, Space.open(home) as cli:
        mine = node.add("the node's", model="echo")
        theirs = cli.add("the other process's", model="echo")  # same device, the next seq
        node.put_claim(Claim(prompt_id=mine.id, node=node.device_id, attempt=1, heartbeat=1))
        between = cli.add("written while the node's Doc is loaded", model="echo")
        after = node.add("the node's again", model="echo")  # a seq past the gap
        log = node.log
        assert all(log.has_prompt(p.id) for p in (mine, theirs, between, after))
        assert log.entry(mine.id).claims
    with Space.open(home) as fresh:  # and the store holds each write once
        assert [e.prompt.input for e in fresh.entries(limit=None)] == [
            "the node's",
            "the other process's",
            "written while the node's Doc is loaded",
            "the node's again",
        ]


def test_entries_grep_searches_prompts_and_answers_with_the_other_filters(space: Space) -> None:
    sky = space.add("Why is the SKY blue?", model="echo")
    sea = space.add("why is the sea blue?", model="gemma3-270m")
    space.add("what is a sky hook?", model="echo")
    space.put_result(
        Result(
            prompt_id=sea.id,
            node=space.device_id,
            node_name="gpu",
            attempt=1,
            status=RunStatus.DONE,
            output="It reflects the sky.",
            started_at=1,
            finished_at=2,
        )
    )
    assert [e.prompt.input for e in space.entries(grep="sky")] == [
        "Why is the SKY blue?",
        "why is the sea blue?",  # by its answer
        "what is a sky hook?",
    ]
    assert [e.prompt.id for e in space.entries(grep="SKY", limit=1)] == [space.log.prompt_ids()[-1]]
    assert [e.prompt.id for e in space.entries(grep="sky", status="done")] == [sea.id]
    assert [e.prompt.id for e in space.entries(grep="sky", model="echo", since=sky.id)] == [
        space.log.prompt_ids()[-1]
    ]
    assert space.entries(grep="blue sky") == []
    with syncq.open(space.paths.root) as client:  # the Python API's log
        assert [e.prompt.id for e in client.log(grep="reflects")] == [sea.id]
