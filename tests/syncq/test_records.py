from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Map

from syncq.errors import InvalidInput, MalformedRecord
from syncq.ids import DeviceId, PromptId, new_prompt_id
from syncq.records import (
    Cancel,
    Claim,
    Device,
    ModelAd,
    NodeInfo,
    Prompt,
    PromptKind,
    Result,
    RunStatus,
    check_max_attempts,
    check_model,
    check_params,
    check_priority,
    check_prompt_input,
    decode,
    encode,
    parse_param,
)

PID = new_prompt_id(1_700_000_000_000, bytes(10))
DEV = DeviceId("ab" * 32)


def through_crdt(wire: dict[str, object]) -> object:
    """Store a record in a real Doc as the log does, replicate it, and read it back."""
    doc: Doc = Doc()
    doc.get("r", type=Map)["k"] = encode(wire)
    replica: Doc = Doc()
    root = replica.get("r", type=Map)
    replica.apply_update(doc.get_update())
    return decode(root["k"])


params = st.dictionaries(
    st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=10),
    max_size=5,
)


@given(params=params, priority=st.integers(-1000, 1000), attempts=st.integers(1, 100))
def test_prompt_survives_the_crdt_with_exact_types(params: dict, priority: int, attempts: int) -> None:
    prompt = Prompt(
        id=PID,
        model="gemma3-270m",
        kind=PromptKind.LLM,
        input="hi",
        params=params,
        created_at=1_700_000_000_123,
        author=DEV,
        priority=priority,
        max_attempts=attempts,
    )
    assert Prompt.from_wire(PID, through_crdt(prompt.to_wire())) == prompt


def test_other_records_survive_the_crdt() -> None:
    cancel = Cancel(prompt_id=PID, by=DEV, at=5)
    claim = Claim(prompt_id=PID, node=DEV, attempt=2, heartbeat=7, running=True)
    result = Result(
        prompt_id=PID,
        node=DEV,
        node_name="gpu",
        attempt=1,
        status=RunStatus.FAILED,
        output="",
        error="boom",
        started_at=1,
        finished_at=2,
        usage={"tokens": 3},
    )
    device = Device(id=DEV, name="laptop", x25519="00" * 32, added_by=DEV, added_at=9)
    assert Cancel.from_wire(PID, through_crdt(cancel.to_wire())) == cancel
    assert Claim.from_wire(claim.key, through_crdt(claim.to_wire())) == claim
    assert Result.from_wire(result.key, through_crdt(result.to_wire())) == result
    assert Device.from_wire(DEV, through_crdt(device.to_wire())) == device


def test_a_run_that_does_not_count_and_an_unusable_model_survive_the_crdt_and_are_left_out_otherwise() -> (
    None
):
    refused = Result(
        prompt_id=PID,
        node=DEV,
        node_name="gpu",
        attempt=1,
        status=RunStatus.FAILED,
        error="killed by SIGILL",
        started_at=1,
        finished_at=2,
        counts=False,
    )
    assert Result.from_wire(refused.key, through_crdt(refused.to_wire())) == refused
    assert "counts" not in dataclasses.replace(refused, counts=True).to_wire()  # old nodes' shape
    ads = (
        ModelAd(name="gemma3-270m", backend="llama", loaded=False, size=1, unusable="killed by SIGILL"),
        ModelAd(name="echo", backend="echo", loaded=True, size=0),
    )
    node = NodeInfo(id=DEV, name="gpu", version="0.1.0", last_seen=3, models=ads)
    assert NodeInfo.from_wire(DEV, through_crdt(node.to_wire())) == node
    assert "unusable" not in ads[1].to_wire()
    assert [m.name for m in node.serving()] == ["echo"]
    with pytest.raises(MalformedRecord):
        Result.from_wire(refused.key, {**refused.to_wire(), "counts": "no"})


@pytest.mark.parametrize(
    "wire",
    [
        None,
        "text",
        {"model": 1},
        {"model": "m", "kind": "video"},
        {
            "model": "m",
            "kind": "llm",
            "input": "x",
            "params": "not json",
            "created_at": 1,
            "author": "a",
            "priority": 0,
            "max_attempts": 3,
        },
        {
            "model": "m",
            "kind": "llm",
            "input": "x",
            "params": "[]",
            "created_at": 1,
            "author": "a",
            "priority": 0,
            "max_attempts": 3,
        },
        {
            "model": "m",
            "kind": "llm",
            "input": "x",
            "params": "{}",
            "created_at": 1.5,
            "author": "a",
            "priority": 0,
            "max_attempts": 3,
        },
        {
            "model": "m",
            "kind": "llm",
            "input": "x",
            "params": "{}",
            "created_at": True,
            "author": "a",
            "priority": 0,
            "max_attempts": 3,
        },
    ],
)
def test_malformed_prompt_records_are_refused(wire: object) -> None:
    with pytest.raises(MalformedRecord):
        Prompt.from_wire(PID, wire)


@pytest.mark.parametrize("stored", [None, 3, {"a": 1}, "not json", "[1, 2]", '"text"'])
def test_stored_values_that_are_not_json_objects_are_refused(stored: object) -> None:
    with pytest.raises(MalformedRecord):
        decode(stored)


def test_record_with_bad_key_or_status_is_refused() -> None:
    good = Prompt(id=PID, model="m", kind=PromptKind.LLM, input="x", created_at=1, author=DEV)
    with pytest.raises(MalformedRecord):
        Prompt.from_wire("not-an-id", good.to_wire())
    bad_result = {
        "node": "n",
        "node_name": "n",
        "attempt": 1,
        "status": "maybe",
        "output": "",
        "error": None,
        "started_at": 1,
        "finished_at": 1,
        "usage": "{}",
    }
    with pytest.raises(MalformedRecord):
        Result.from_wire(f"{PID}/n/1", bad_result)
    with pytest.raises(MalformedRecord):
        Result.from_wire(f"{PID}/n/1", {**bad_result, "status": "done", "error": 3})
    with pytest.raises(MalformedRecord):
        Claim.from_wire(f"{PID}/n", {"node": "n", "attempt": 1, "heartbeat": 1, "running": "yes"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temperature=0.7", ("temperature", 0.7)),
        ("seed=42", ("seed", 42)),
        ("stop=###", ("stop", "###")),
        ("stream=true", ("stream", True)),
        ("name=", ("name", "")),
        ('grammar={"a": 1}', ("grammar", '{"a": 1}')),
        ('note="quoted"', ("note", "quoted")),
        ("x=null", ("x", None)),
    ],
)
def test_param_parsing(text: str, expected: tuple[str, object]) -> None:
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "Bad=1", "=1", "x y=1", "t=NaN"])
def test_bad_params_are_user_errors(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_param(text)


def test_input_checks() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        check_prompt_input("  \n")
    with pytest.raises(InvalidInput, match="limit"):
        check_prompt_input("x" * (256 * 1024 + 1))
    with pytest.raises(InvalidInput, match="Unicode"):  # json.loads('"\\ud800"') gives one
        check_prompt_input("hello \ud800")
    with pytest.raises(InvalidInput):
        check_model("bad model name")
    with pytest.raises(InvalidInput):
        check_priority(5000)
    with pytest.raises(InvalidInput):
        check_max_attempts(0)
    with pytest.raises(InvalidInput):
        check_params({f"p{i}": i for i in range(65)})
    with pytest.raises(InvalidInput):
        check_params({"x": [1]})  # type: ignore[dict-item]
    assert check_model("hf.co/org/model:Q4_K_M") == "hf.co/org/model:Q4_K_M"
    assert PromptId(PID) == PID


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_tokens": -3}, "max_tokens=-3 is invalid"),
        ({"max_tokens": 1.5}, "whole number"),
        ({"temperature": "hot"}, "temperature"),
        ({"mode": "poem"}, "chat, complete or embed"),
        ({"frobnicate": 1}, "unknown parameter 'frobnicate'"),
    ],
)
def test_llm_params_are_checked_at_add_time(params: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_params(params, PromptKind.LLM)


def test_good_llm_params_and_other_kinds_pass() -> None:
    good = {
        "max_tokens": 32,
        "temperature": 0.7,
        "seed": 42,
        "mode": "complete",
        "stop": "\n\n",
        "keep_alive": 60,
    }
    assert check_params(good, PromptKind.LLM) == good
    assert check_params({"language": "en"}, PromptKind.ASR) == {"language": "en"}


def test_records_under_another_writers_key_are_malformed() -> None:
    """A member that overwrites another's claim, result or presence naming itself deletes that
    record for every reader; it does not take it over (PROTOCOL.md, "Who may write what")."""
    other = DeviceId("cd" * 32)
    claim = Claim(prompt_id=PID, node=DEV, attempt=1, heartbeat=1)
    result = Result(
        prompt_id=PID, node=DEV, node_name="n", attempt=1, status=RunStatus.DONE, started_at=1, finished_at=2
    )
    expiry = dataclasses.replace(result, status=RunStatus.FAILED, observer=other)
    for convert, record in [(Claim.from_wire, claim), (Result.from_wire, result), (Result.from_wire, expiry)]:
        assert convert(record.key, through_crdt(record.to_wire())) == record
        with pytest.raises(MalformedRecord):
            convert(record.key.replace(DEV, other), through_crdt(record.to_wire()))
    with pytest.raises(MalformedRecord):
        Result.from_wire(f"{result.key}/lease-{other}", through_crdt(result.to_wire()))
    node = NodeInfo(id=DEV, name="gpu", version="1", last_seen=3)
    assert NodeInfo.from_wire(DEV, through_crdt(node.to_wire())) == node
    with pytest.raises(MalformedRecord):
        NodeInfo.from_wire(other, through_crdt(node.to_wire()))
    old_presence = {k: v for k, v in node.to_wire().items() if k != "node"}
    assert NodeInfo.from_wire(DEV, through_crdt(old_presence)) == node  # older nodes still read
