"""Envelopes a member cannot apply, against real nodes: a stranger with a relay code poisons a
relay, a member forges another node's result, a stranger floods garbage. Members quarantine or
drop each one, count it, and keep syncing (PROTOCOL.md, "Envelope", checks on receipt)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, member, wait_until
from harness import inputs as ordered_inputs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from syncq import crypto
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.protocol import MAX_FRAME_SIZE, HaveReceived, Role, SyncSession, WindowOpen
from syncq.records import Result, RunStatus
from syncq.space import Space
from syncq.store import Peer

pytestmark = pytest.mark.slow


def inputs(home: Path) -> list[str]:
    return sorted(ordered_inputs(home))


def dial(home: Path, url: str) -> None:
    with Space.open(home) as space:
        space.store.save_peer(Peer(url=url, source="config"))


def garbage_envelope(space_id: str, device: DeviceKeys, seq: int) -> bytes:
    """Signed by the attacker's own key, so a relay's checks pass; the ciphertext is noise."""
    header = crypto._HEADER.pack(
        crypto.MAGIC, crypto.ENVELOPE_VERSION, 1, bytes.fromhex(space_id), 0, device.public_key, seq
    )
    body = header + os.urandom(12) + os.urandom(64)
    return body + device.sign(body)


async def attack(url: str, code: SpaceKeys, batches: list[list[bytes]]) -> tuple[int, int | None]:
    """Connect with the admission key of a relay code and a fresh key, then send ``batches`` of
    envelopes, at most four unacknowledged; returns (batches acknowledged, close code)."""
    device = DeviceKeys.from_seed(os.urandom(64))
    session = SyncSession(
        role=Role.INITIATOR,
        auth_keys=[(0, code.auth_key(0))],
        node=device,
        name="attacker",
        challenge=os.urandom(32),
    )
    queue, acked = list(batches), 0
    async with connect(url, max_size=MAX_FRAME_SIZE * 2, compression=None) as ws:
        try:
            while True:
                for frame in session.data_to_send():
                    await ws.send(frame)
                if acked == len(batches):
                    return acked, None
                for event in session.receive(await asyncio.wait_for(ws.recv(), timeout=20)):
                    if isinstance(event, HaveReceived):
                        session.send_have({})
                    acked += isinstance(event, WindowOpen)
                    while queue and session.can_send:
                        batch = queue.pop(0)
                        session.send_envelopes([(b"\0" * 32, n + 1, data) for n, data in enumerate(batch)])
        except ConnectionClosed:
            return acked, ws.close_code


def failures(node) -> int:
    return len(node.find("peer-failed")) + len(node.find("peer-closed", code=4403))


def rejected(home: Path) -> dict[str, int]:
    with Space.open(home) as space:
        return dict(space.status().rejected)


def test_a_poisoned_relay_costs_members_a_counter_not_their_sync(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
        relay_code = first.keys.for_relay()
        Space.init_relay(tmp_path / "r", name="relay", keys=relay_code).close()
    relay = nodes(tmp_path / "r")
    stranger = DeviceKeys.from_seed(os.urandom(64))
    poison = garbage_envelope(relay_code.space_id, stranger, 1)
    assert asyncio.run(attack(relay.url, relay_code, [[poison]])) == (1, None)  # the relay kept it
    dial(a_home, relay.url)  # a and b know only the relay
    dial(b_home, relay.url)
    a, b = nodes(a_home), nodes(b_home)
    wait_until(
        lambda: rejected(a_home) == {"bad-tag": 1} and rejected(b_home) == {"bad-tag": 1},
        what="both to quarantine it",
    )
    with Space.open(a_home) as space:
        space.add("through the poisoned relay", model="nobody-serves-this")
    wait_until(lambda: inputs(b_home) == ["through the poisoned relay"], what="the prompt to reach b")
    later = garbage_envelope(relay_code.space_id, stranger, 2)  # more poison while they are connected
    assert asyncio.run(attack(relay.url, relay_code, [[poison, later]]))[0] == 1
    wait_until(
        lambda: rejected(a_home) == {"bad-tag": 2} and rejected(b_home) == {"bad-tag": 2},
        what="the second one",
    )
    with Space.open(b_home) as space:
        space.add("and back", model="nobody-serves-this")
    wait_until(lambda: len(inputs(a_home)) == 2, what="b's prompt to reach a")
    assert failures(a) == 0 and failures(b) == 0  # no reconnect storm: not one session failed
    assert a.alive and b.alive and relay.alive
    status = json.loads(syncq(b_home, "status", "--json"))
    assert status["rejected"] == {"bad-tag": 2} and status["quarantined"] == {"bad-tag": 2}
    assert "quarantined  bad-tag 2 (stored, never applied)" in syncq(b_home, "status")


def syncq(home: Path, *args: str) -> str:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    return subprocess.run(
        [SYNCQ, *args], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_a_result_forged_for_another_node_never_shows_as_its_run(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home, c_home = first.paths.root, member(tmp_path, first, "b"), member(tmp_path, first, "c")
        prompt = first.add("who ran me?", model="nobody-serves-this")
    with Space.open(b_home) as space:
        beta = space.device_id
    b, c = nodes(b_home), nodes(c_home)
    dial(a_home, b.url)
    dial(a_home, c.url)
    nodes(a_home)
    wait_until(lambda: inputs(b_home) == ["who ran me?"] == inputs(c_home), what="the prompt everywhere")
    with Space.open(a_home) as space:  # a member with the space secret and its own key forges
        space.put_result(
            Result(prompt_id=prompt.id, node=beta, node_name="b", attempt=1, status=RunStatus.DONE,
                   output="forged", started_at=1, finished_at=2)
        )  # fmt: skip
        space.add("after the forgery", model="nobody-serves-this")
    for home in (b_home, c_home):
        wait_until(lambda home=home: len(inputs(home)) == 2, what="a's later prompt")
        assert rejected(home) == {"forged": 1}
        shown = [json.loads(line) for line in syncq(home, "log", "--json").splitlines()]
        assert {e["status"] for e in shown} == {"queued"}
        detail = syncq(home, "show", prompt.id, "--json")
        assert "forged" not in detail and json.loads(detail)["status"] == "queued"
    assert b.alive and c.alive


def test_a_flood_of_garbage_adds_a_handful_of_rows(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
        code = first.keys.for_relay()
    a = nodes(a_home)
    flood = [os.urandom(300) for _ in range(5000)]
    sent = 0
    while sent < len(flood):  # cut off after MAX_DROPPED, the attacker comes back for more
        acked, closed = asyncio.run(attack(a.url, code, [flood[sent : sent + 1000]]))
        assert closed == 4403 or acked == 1
        sent += 1000
    conn = sqlite3.connect(a_home / "syncq.db")
    with contextlib.closing(conn):
        assert conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] <= 3
    assert rejected(a_home) == {"malformed": 5000}
    dial(b_home, a.url)
    nodes(b_home)
    with Space.open(a_home) as space:
        space.add("still serving", model="nobody-serves-this")
    wait_until(lambda: inputs(b_home) == ["still serving"], what="a to keep serving members")
