"""Every record names its writer, and that must be the envelope's author (syncq.authorship)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq import yjs
from syncq.authorship import check_update
from syncq.claims import expiry_record
from syncq.errors import BadUpdate, ForgedRecord, MalformedRecord
from syncq.ids import DeviceId, PromptId
from syncq.log import Log
from syncq.records import (
    Cancel,
    Claim,
    Device,
    NodeInfo,
    Prompt,
    PromptKind,
    Result,
    Retry,
    RunStatus,
    decode,
    encode,
)

PID = PromptId("01J0000000000000000000000A")
IDS = st.binary(min_size=32, max_size=32).map(lambda b: DeviceId(b.hex()))


def writes(me: DeviceId, other: DeviceId) -> list[Callable[[Log], bytes]]:
    """One mutation of each record type, as device ``me`` writes it (about ``other`` where a
    record is about another device)."""
    claim = Claim(prompt_id=PID, node=other, attempt=1, heartbeat=3)
    return [
        lambda log: log.cancel(Cancel(prompt_id=PID, by=me, at=1)),
        lambda log: log.put_retry(Retry(prompt_id=PID, by=me, at=1, max_attempts=4)),
        lambda log: log.put_claim(Claim(prompt_id=PID, node=me, attempt=1, heartbeat=1)),
        lambda log: log.put_result(
            Result(
                prompt_id=PID,
                node=me,
                node_name="n",
                attempt=1,
                status=RunStatus.DONE,
                started_at=1,
                finished_at=2,
            )
        ),
        lambda log: log.put_result(expiry_record(claim, observer=me, observer_name="n", now_ms=5)),
        lambda log: log.put_node(NodeInfo(id=me, name="n", version="1", last_seen=1)),
        lambda log: log.put_device(Device(id=other, name="d", x25519="00", added_by=me, added_at=1)),
    ]


def prompt_update(author: DeviceId) -> bytes:
    prompt = Prompt(id=PID, model="echo", kind=PromptKind.LLM, input="hi", created_at=1, author=author)
    return yjs.encode_map_inserts(9, 0, "prompts", [(PID, encode(prompt.to_wire()))])


@given(me=IDS, other=IDS, which=st.integers(0, 6), again=st.booleans())
def test_a_record_passes_for_its_writer_only(me: DeviceId, other: DeviceId, which: int, again: bool) -> None:
    log = Log(client_id=11)
    write = writes(me, other)[which]
    update = write(log)
    if again:  # an overwrite of the key: the update names neither map nor key
        update = write(log)
    check_update(update, me)
    if other != me:
        with pytest.raises(ForgedRecord):
            check_update(update, other)


@given(me=IDS, other=IDS)
def test_prompts_are_their_authors(me: DeviceId, other: DeviceId) -> None:
    check_update(prompt_update(me), me)
    if other != me:
        with pytest.raises(ForgedRecord):
            check_update(prompt_update(me), other)


@given(me=IDS, other=IDS)
def test_a_result_done_on_another_node_is_forged_even_as_an_observer(me: DeviceId, other: DeviceId) -> None:
    log = Log(client_id=12)
    base = dict(prompt_id=PID, node_name="n", attempt=1, started_at=1, finished_at=2)
    if other != me:
        with pytest.raises(ForgedRecord):
            check_update(log.put_result(Result(node=other, status=RunStatus.DONE, **base)), me)  # type: ignore[arg-type]  # an "expiry" that claims the run succeeded, or names another observer
        with pytest.raises(ForgedRecord):
            check_update(log.put_result(Result(node=other, status=RunStatus.DONE, observer=me, **base)), me)  # type: ignore[arg-type]
        with pytest.raises(ForgedRecord):
            check_update(log.put_result(Result(node=me, status=RunStatus.FAILED, observer=other, **base)), me)  # type: ignore[arg-type]


def test_presence_under_another_nodes_key_is_forged_even_naming_its_writer() -> None:
    me, other = DeviceId("aa" * 32), DeviceId("bb" * 32)
    record = encode(NodeInfo(id=me, name="n", version="1", last_seen=1).to_wire())
    with pytest.raises(ForgedRecord):
        check_update(yjs.encode_map_inserts(3, 0, "nodes", [(other, record)]), me)
    check_update(yjs.encode_map_inserts(3, 0, "nodes", [(me, record)]), me)


def test_a_record_naming_no_writer_is_forged_and_non_records_pass() -> None:
    me = DeviceId("aa" * 32)
    with pytest.raises(ForgedRecord):
        check_update(yjs.encode_map_inserts(3, 0, "nodes", [(me, '{"name":"old presence"}')]), me)
    check_update(
        yjs.encode_map_inserts(3, 0, "prompts", [(PID, "not json"), ("x", {"a": 1}), ("y", "[1]")]), me
    )
    log = Log(client_id=13)
    check_update(log.append_stream(PID, "streamed text naming " + "bb" * 32), me)
    with pytest.raises(BadUpdate):
        check_update(b"\x01\x02garbage", me)


@given(pad=st.text(alphabet=" \t\r\n\ufeff", min_size=1, max_size=4))
def test_what_the_writer_check_passes_as_no_record_no_reader_takes_as_one(pad: str) -> None:
    # A forged result padded so that it does not start with "{": json.loads would read it, so
    # the check and the readers must agree that it is no record at all.
    me, other = DeviceId("aa" * 32), DeviceId("bb" * 32)
    forged = encode(
        Result(
            prompt_id=PID,
            node=other,
            node_name="beta",
            attempt=1,
            status=RunStatus.DONE,
            started_at=1,
            finished_at=2,
        ).to_wire()
    )
    update = yjs.encode_map_inserts(3, 0, "results", [(f"{PID}/{other}/1", pad + forged)])
    check_update(update, me)  # not a record to the check ...
    log = Log(client_id=14)
    log.apply(prompt_update(me))
    log.apply(update)
    assert log.entry(PID).results == ()  # ... nor to any reader
    with pytest.raises(MalformedRecord):
        decode(pad + forged)


def test_a_record_nested_past_the_stack_is_refused_by_the_check_and_the_readers() -> None:
    # json.loads raised RecursionError out of check_update (the envelope check of every peer)
    # and out of records.decode (every device's log reader). Refused, never let through as "no
    # record": whether json.loads manages it depends on how deep the caller's stack already is.
    me = DeviceId("aa" * 32)
    deep = '{"by":"' + me + '","x":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(BadUpdate, match="nests too deep"):
        check_update(yjs.encode_map_inserts(3, 0, "cancels", [(PID, deep)]), me)
    with pytest.raises(MalformedRecord):
        decode(deep)
