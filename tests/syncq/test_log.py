from __future__ import annotations

import pytest

from syncq import yjs
from syncq.errors import MalformedEnvelope
from syncq.ids import DeviceId, new_prompt_id
from syncq.lifecycle import Status
from syncq.log import Log
from syncq.records import Cancel, Claim, Device, Prompt, PromptKind, Result, RunStatus, encode

DEV = DeviceId("d" * 64)


def prompt(n: int, **kw: object) -> Prompt:
    fields = {
        "id": new_prompt_id(1_700_000_000_000 + n, bytes(10)),
        "model": "echo",
        "kind": PromptKind.LLM,
        "input": f"p{n}",
        "created_at": n,
        "author": DEV,
        **kw,
    }
    return Prompt(**fields)  # type: ignore[arg-type]


def added(log: Log, *prompts: Prompt, client: int = 42, clock: int = 0) -> bytes:
    update = yjs.encode_map_inserts(client, clock, "prompts", [(p.id, encode(p.to_wire())) for p in prompts])
    log.apply(update)
    return update


def test_each_mutation_is_one_update_that_replicates() -> None:
    here, there = Log(client_id=1), Log(client_id=2)
    p = prompt(1)
    there.apply(added(here, p))
    updates = [
        here.put_claim(Claim(prompt_id=p.id, node=DEV, attempt=1, heartbeat=1, running=True)),
        here.put_result(
            Result(
                prompt_id=p.id,
                node=DEV,
                node_name="n",
                attempt=1,
                status=RunStatus.DONE,
                output="out",
                started_at=1,
                finished_at=2,
            )
        ),
        here.cancel(Cancel(prompt_id=p.id, by=DEV, at=3)),
        here.put_device(Device(id=DEV, name="n", x25519="", added_by=DEV, added_at=1)),
    ]
    assert all(isinstance(u, bytes) and u for u in updates)
    for update in updates:
        there.apply(update)
    assert there.entry(p.id) == here.entry(p.id)
    assert there.entry(p.id).status is Status.DONE
    assert there.state() and there.devices() == here.devices()


def test_queries_skip_malformed_records() -> None:
    log = Log(client_id=1)
    good = prompt(1)
    bad_id = new_prompt_id(5, bytes(10))
    added(log, good)
    log.apply(yjs.encode_map_inserts(7, 0, "prompts", [(bad_id, '{"nonsense": true}')]))
    log.apply(yjs.encode_map_inserts(7, 1, "claims", [(f"{good.id}/x", "not a dict")]))
    log.apply(yjs.encode_map_inserts(7, 2, "devices", [("x", 1)]))
    assert [e.prompt.id for e in log.entries(log.prompt_ids())] == [good.id]
    assert log.entry(good.id).claims == ()
    assert log.counts()[Status.QUEUED] == 2  # counting does not read records nothing happened to
    assert log.devices() == []


def test_status_fast_path_agrees_with_the_full_entry() -> None:
    log = Log(client_id=1)
    ps = [prompt(i, max_attempts=1) for i in range(4)]
    added(log, *ps)
    log.cancel(Cancel(prompt_id=ps[1].id, by=DEV, at=1))
    log.put_claim(Claim(prompt_id=ps[2].id, node=DEV, attempt=1, heartbeat=1))
    log.put_result(
        Result(
            prompt_id=ps[3].id,
            node=DEV,
            node_name="n",
            attempt=1,
            status=RunStatus.FAILED,
            error="x",
            started_at=1,
            finished_at=2,
        )
    )
    assert [log.status(p.id) for p in ps] == [log.entry(p.id).status for p in ps]
    assert [log.status(p.id) for p in ps] == [Status.QUEUED, Status.CANCELLED, Status.CLAIMED, Status.FAILED]


def test_garbage_payload_is_a_malformed_envelope() -> None:
    with pytest.raises(MalformedEnvelope):
        Log(client_id=1).apply(b"\x01\x01\x05")


def test_the_change_feed_names_each_prompt_whose_facts_changed() -> None:
    log, other = Log(client_id=1), Log(client_id=2)
    first, second = prompt(1), prompt(2)
    added(log, first)
    feed = log.follow()
    assert feed.drain() == {first.id}  # everything there is, the first time
    assert feed.drain() == set()
    other.apply(added(other, second, client=7))
    log.apply(other.state())  # from a peer
    update = log.put_claim(Claim(prompt_id=first.id, node=DEV, attempt=1, heartbeat=1, running=False))
    assert feed.drain() == {first.id, second.id}
    outputs = log.follow(streams=True)
    outputs.drain()
    log.append_stream(first.id, "streamed output is not a fact")
    assert feed.drain() == set()
    assert outputs.drain() == {first.id}  # but a feed that asks for streams hears of it
    assert log.status(first.id) is Status.CLAIMED
    other.apply(log.state())
    other.apply(update)
    assert other.status(first.id) is Status.CLAIMED


def test_a_batch_of_mutations_is_one_update() -> None:
    here, there = Log(client_id=1), Log(client_id=2)
    a, b = prompt(1), prompt(2)
    there.apply(added(here, a, b))
    update = here.batch(
        lambda log: (
            [
                log.put_claim(Claim(prompt_id=p.id, node=DEV, attempt=1, heartbeat=1, running=True))
                for p in (a, b)
            ]
            + [log.append_stream(a.id, "first words")]
        )
    )
    there.apply(update)
    assert [there.status(p.id) for p in (a, b)] == [Status.RUNNING, Status.RUNNING]
    assert there.stream(a.id) == "first words"


def test_mentions_finds_text_conversation_answer_and_error_ignoring_case() -> None:
    from syncq.chat import LlmInput, Message

    log = Log(client_id=1)
    chat = LlmInput(
        messages=(Message(role="system", content="Answer as a PIRATE"), Message(role="user", content="hi"))
    )
    plain, talk, quoted = (
        prompt(1, input="Die STRAẞE am Meer"),
        prompt(2, input="hi", llm=chat),
        prompt(3, input='say "\\n"\x01'),
    )
    added(log, plain, talk, quoted)
    log.put_result(
        Result(
            prompt_id=talk.id,
            node=DEV,
            node_name="n",
            attempt=1,
            status=RunStatus.FAILED,
            error="Out of Memory",
            started_at=1,
            finished_at=2,
        )
    )
    log.put_result(
        Result(
            prompt_id=plain.id,
            node=DEV,
            node_name="n",
            attempt=1,
            status=RunStatus.DONE,
            output="Rayleigh / scattering",
            started_at=1,
            finished_at=2,
        )
    )

    def found(text: str) -> list[str]:
        return [p.id for p in (plain, talk, quoted) if log.mentions(p.id, text)]

    assert found("strasse") == [plain.id]  # casefold: ß is ss
    assert found("pirate") == found("out of memory") == [talk.id]
    assert found("rayleigh / SCATTERING") == [plain.id]  # "/" may be escaped in JSON: decoded
    assert found('"\\n"') == found("\x01") == [quoted.id]
    assert found("echo") == found("node_name") == []  # model and field names are not searched
    for text in ("strasse", "pirate", "out of memory", '"\\n"', "echo", "x"):
        assert found(text) == [
            e.prompt.id for e in log.entries([plain.id, talk.id, quoted.id]) if e.mentions(text)
        ]


def test_a_fingerprint_moves_with_every_fact_of_its_prompt_only() -> None:
    log = Log(client_id=1)
    first, second = prompt(1), prompt(2)
    added(log, first, second)
    before = log.fingerprints()
    assert set(before) == {first.id, second.id} and before[first.id] != before[second.id]
    assert log.fingerprints() == before
    seen = [before[first.id]]
    for change in (
        lambda: log.put_claim(Claim(prompt_id=first.id, node=DEV, attempt=1, heartbeat=1)),
        lambda: log.put_claim(Claim(prompt_id=first.id, node=DEV, attempt=1, heartbeat=2)),
        lambda: log.cancel(Cancel(prompt_id=first.id, by=DEV, at=3)),
    ):
        change()
        now = log.fingerprints()
        assert now[second.id] == before[second.id] and now[first.id] not in seen
        seen.append(now[first.id])
