"""What a member does with envelopes it cannot apply (PROTOCOL.md, "Envelope", checks on
receipt): each is judged on its own; nothing blocks the rest, nothing is applied that should
not be, and a flood costs counters, not rows."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from syncq import crypto, yjs
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.ids import new_prompt_id
from syncq.records import Result, RunStatus, encode
from syncq.space import Space


def stranger_envelope(space_id: str, seq: int = 1, *, device: DeviceKeys | None = None) -> bytes:
    """What an attacker with a relay code can make: signed by its own key, garbage inside."""
    device = device or DeviceKeys.from_seed(os.urandom(64))
    header = crypto._HEADER.pack(
        crypto.MAGIC, crypto.ENVELOPE_VERSION, 1, bytes.fromhex(space_id), 0, device.public_key, seq
    )
    body = header + os.urandom(12) + os.urandom(40)
    return body + device.sign(body)


def sealed_by(space: Space, seq: int, payload: bytes, keys: SpaceKeys | None = None) -> bytes:
    return crypto.seal(
        device=space.device, space=keys or space.keys, seq=seq, payload=payload, nonce=os.urandom(12)
    )


def result_update(prompt_id: str, node: str, *, observer: str | None = None, status: str = "done") -> bytes:
    record = {
        "node": node, "node_name": "beta", "attempt": 1, "status": status, "output": "forged",
        "error": None, "started_at": 1, "finished_at": 2, "usage": {}, "observer": observer,
    }  # fmt: skip
    key = f"{prompt_id}/{node}/1" + (f"/lease-{observer}" if observer else "")
    return yjs.encode_map_inserts(
        int.from_bytes(os.urandom(6), "big") + 1, 0, "results", [(key, encode(record))]
    )


def test_a_strangers_garbage_is_quarantined_and_the_rest_of_the_batch_applies(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    space.add("after the garbage", model="echo")
    garbage = stranger_envelope(space.keys.space_id)
    report = gpu.receive([garbage, *space.envelopes()])
    assert report.rejected == {}
    assert report.quarantined == {"bad-tag": 1}
    assert "after the garbage" in [e.prompt.input for e in gpu.entries()]
    assert gpu.version_vector()[garbage[24:56]] == 1  # stored: HAVE says so, nobody sends it again
    assert gpu.receive([garbage]).duplicates == 1
    assert gpu.status().rejected == {"bad-tag": 1}  # counted once
    assert gpu.store.quarantined() == {"bad-tag": 1}
    relayed = list(gpu.envelopes())  # forwarded like any other: peers reach the same verdict
    assert garbage in relayed


def test_a_quarantined_envelope_spends_its_seq_and_later_ones_apply(
    space: Space, member: Callable[[str], Space], home: Path
) -> None:
    gpu = member("gpu")
    bad = lambda seq: sealed_by(space, seq, b"\xff\xfe not an update")  # noqa: E731
    space.store.append_own(space.device.public_key, [bad])  # a broken member's envelope
    space.add("seq 2", model="echo")
    gpu.receive(space.envelopes())
    assert [e.prompt.input for e in gpu.entries()] == ["seq 2"]
    assert gpu.status().rejected == {"bad-update": 1}
    gpu.close()
    reopened = Space.open(gpu.paths.root)  # replayed from the store: skipped, not counted again
    assert [e.prompt.input for e in reopened.entries()] == ["seq 2"]
    assert reopened.status().rejected == {"bad-update": 1}
    reopened.close()


def test_a_record_naming_another_node_is_quarantined_as_forged(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    prompt = space.add("who ran me?", model="echo")
    gpu.receive(space.envelopes())
    seq = space.version_vector()[space.device.public_key]
    forged = sealed_by(space, seq + 1, result_update(prompt.id, gpu.device_id))  # "done on gpu"
    honest = sealed_by(space, seq + 2, result_update(prompt.id, space.device_id))
    report = gpu.receive([forged, honest])
    assert report.quarantined == {"forged": 1}
    results = gpu.log.entry(prompt.id).results
    assert [(r.node, r.output) for r in results] == [(space.device_id, "forged")]  # only the honest one


def test_a_lease_expiry_is_the_observers_and_only_a_failure(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    prompt = space.add("expired", model="echo")
    gpu.receive(space.envelopes())
    seq = space.version_vector()[space.device.public_key]
    me, other = space.device_id, gpu.device_id
    envelopes = [
        sealed_by(space, seq + 1, result_update(prompt.id, other, observer=me, status="failed")),
        sealed_by(space, seq + 2, result_update(prompt.id, other, observer=me, status="done")),
        sealed_by(space, seq + 3, result_update(prompt.id, me, observer=other, status="failed")),
    ]
    report = gpu.receive(envelopes)
    assert report.quarantined == {"forged": 2}
    assert [(r.node, r.observer, r.status) for r in gpu.log.entry(prompt.id).results] == [
        (other, me, RunStatus.FAILED)
    ]


def test_an_envelope_of_an_unknown_epoch_is_held_until_its_key_comes(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    gpu.receive(space.envelopes())
    rotated = SpaceKeys(space_id=space.keys.space_id, secrets={**space.keys.secrets, 1: os.urandom(32)})
    seq = space.version_vector()[space.device.public_key]
    later = [
        sealed_by(space, seq + n, yjs.encode_map_inserts(77, n - 1, "prompts", [(pid, encode(w))]), rotated)
        for n, (pid, w) in enumerate(
            [(new_prompt_id(n, os.urandom(10)), prompt_wire(space, f"epoch 1 #{n}")) for n in (1, 2)], start=1
        )
    ]
    report = gpu.receive(later)
    assert report.quarantined == {"unknown-epoch": 2}
    assert [e.prompt.input for e in gpu.entries()] == []
    assert gpu.version_vector()[space.device.public_key] == seq + 2  # stored: not asked for again
    gpu.checkpoint()
    gpu.replica.keys = rotated  # what the device list's key delivery will do
    gpu.replica.drop()
    assert sorted(e.prompt.input for e in gpu.entries()) == ["epoch 1 #1", "epoch 1 #2"]
    assert gpu.store.quarantined() == {}


def test_a_second_envelope_for_a_seq_is_dropped_without_failing_the_rest(
    space: Space, member: Callable[[str], Space]
) -> None:
    gpu = member("gpu")
    gpu.receive(space.envelopes())
    seq = space.version_vector()[space.device.public_key]
    first = sealed_by(
        space, seq + 1, yjs.encode_map_inserts(5, 0, "prompts", [(new_prompt_id(1, bytes(10)), "{}")])
    )
    second = sealed_by(
        space, seq + 1, yjs.encode_map_inserts(5, 0, "prompts", [(new_prompt_id(2, bytes(10)), "{}")])
    )
    space.add("next", model="echo")
    assert gpu.receive([first]).quarantined == {"forged": 1}  # "{}" names no writer
    report = gpu.receive([second])
    assert report.rejected == {"seq-conflict": 1}


def test_a_flood_of_garbage_adds_a_handful_of_rows(space: Space, member: Callable[[str], Space]) -> None:
    gpu = member("gpu")
    attacker = DeviceKeys.from_seed(os.urandom(64))
    flood = [os.urandom(200) for _ in range(2000)]
    flood += [stranger_envelope(space.keys.space_id) for _ in range(1000)]  # bad-tag, one seq each
    flood += [
        flipped(stranger_envelope(space.keys.space_id, n, device=attacker), -64) for n in range(1, 2001)
    ]
    for start in range(0, len(flood), 1000):
        gpu.receive(flood[start : start + 1000])
    conn = sqlite3.connect(gpu.paths.root / "syncq.db")
    assert conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] <= 3
    conn.close()
    assert gpu.status().rejected == {"malformed": 2000, "bad-tag": 1000, "bad-signature": 2000}


def flipped(data: bytes, index: int) -> bytes:
    damaged = bytearray(data)
    damaged[index] ^= 1
    return bytes(damaged)


def prompt_wire(space: Space, text: str) -> dict[str, object]:
    return {
        "model": "echo", "kind": "llm", "input": text, "params": {}, "created_at": 1,
        "author": space.device_id, "priority": 0, "max_attempts": 3,
    }  # fmt: skip


def test_results_naming_their_author_still_apply(space: Space, member: Callable[[str], Space]) -> None:
    gpu = member("gpu")
    prompt = space.add("ran here", model="echo")
    gpu.receive(space.envelopes())
    gpu.put_result(
        Result(prompt_id=prompt.id, node=gpu.device_id, node_name="gpu", attempt=1,
               status=RunStatus.DONE, output="ok", started_at=1, finished_at=2)
    )  # fmt: skip
    report = space.receive(gpu.envelopes(space.version_vector()))
    assert report.quarantined == {} and report.rejected == {}
    assert space.log.entry(prompt.id).result is not None
