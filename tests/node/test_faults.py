"""Partitions, cut frames, tampering, strangers, relays and garbage, against real nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import msgpack
import pytest
from harness import inputs as ordered_inputs
from harness import member, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from syncq.crypto import DeviceKeys
from syncq.protocol import MAX_FRAME_SIZE, Role, SyncSession
from syncq.space import Space
from syncq.store import Peer

pytestmark = pytest.mark.slow


def inputs(home: Path) -> list[str]:
    return sorted(ordered_inputs(home))


def add(home: Path, *texts: str) -> None:
    with Space.open(home) as space:
        for text in texts:
            space.add(text, model="echo")


def dial(home: Path, url: str) -> None:
    with Space.open(home) as space:
        space.store.save_peer(Peer(url=url, source="config"))


def test_partitions_heal_and_converge(tmp_path: Path, nodes, proxies) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    b = nodes(b_home)
    proxy = proxies(b.port)
    proxy.delay = 0.01
    dial(a_home, proxy.url)
    a = nodes(a_home)
    a.wait_event("peer-connected")
    add(a_home, "a1")
    add(b_home, "b1")
    wait_until(lambda: inputs(b_home) == ["a1", "b1"], what="first sync")
    proxy.partition()
    add(a_home, "a2", "a3")
    add(b_home, "b2")
    assert inputs(b_home) == ["a1", "b1", "b2"]
    proxy.heal()
    everything = ["a1", "a2", "a3", "b1", "b2"]
    wait_until(
        lambda: inputs(a_home) == everything and inputs(b_home) == everything, timeout=60, what="healing"
    )


def test_a_connection_cut_mid_frame_recovers(tmp_path: Path, nodes, proxies) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
        for i in range(300):
            first.add(f"p{i:03d}", model="echo")
    a = nodes(a_home)
    proxy = proxies(a.port)
    proxy.cut_next_big_chunk = True
    dial(b_home, proxy.url)
    nodes(b_home)
    wait_until(lambda: len(inputs(b_home)) == 300, timeout=60, what="b to get everything after the cut")
    assert proxy.cuts == 1


def test_a_tampered_envelope_is_dropped_counted_and_fetched_again(tmp_path: Path, nodes, proxies) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
        first.add("the real prompt", model="echo")
    a = nodes(a_home)
    proxy = proxies(a.port)
    proxy.tamper_next_big_chunk = "down"  # a's first batch to b gets one bit flipped
    dial(b_home, proxy.url)
    b = nodes(b_home)

    def noticed() -> object:
        # A flipped bit in the framing closes the session (4400); in an envelope, b drops that
        # envelope alone, counts it and keeps the session (PROTOCOL.md, "Envelope").
        with Space.open(b_home) as space:
            return b.find("peer-failed", code=4400) or sum(space.status().rejected.values())

    wait_until(noticed, what="b to notice the flipped bit")
    assert not b.find("peer-failed", code=4403)
    assert proxy.tampered == 1
    b.stop()
    nodes(b_home)  # the next session's HAVE asks again for what was dropped
    wait_until(lambda: inputs(b_home) == ["the real prompt"], what="the intact copy in the next session")
    assert a.alive


def test_a_node_of_another_space_cannot_connect_and_others_still_sync(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    Space.init(tmp_path / "x", name="stranger").close()
    a = nodes(a_home)
    dial(tmp_path / "x", a.url)
    x = nodes(tmp_path / "x")
    assert x.wait_event("peer-failed", code=4401)  # each side refuses the other's HELLO
    assert a.wait_event("peer-failed", code=4401)
    dial(b_home, a.url)
    nodes(b_home)
    add(a_home, "still serving")
    wait_until(lambda: inputs(b_home) == ["still serving"], what="a to keep serving members")


def test_a_relay_forwards_between_members_and_learns_nothing(tmp_path: Path, nodes, proxies) -> None:
    marker = "MARKER-relay-must-not-see-9c1f"
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, c_home = first.paths.root, member(tmp_path, first, "c")
        Space.init_relay(tmp_path / "r", name="relay", keys=first.keys.for_relay()).close()
    relay = nodes(tmp_path / "r")
    proxy = proxies(relay.port)
    dial(a_home, proxy.url)  # a and c know only the relay, never each other
    dial(c_home, relay.url)
    nodes(a_home)
    nodes(c_home)
    add(a_home, f"a secret: {marker}")
    wait_until(
        lambda: inputs(c_home) == [f"a secret: {marker}"], what="c to get a's prompt through the relay"
    )
    add(c_home, "answer from c")
    wait_until(lambda: len(inputs(a_home)) == 2, what="a to get c's prompt back")
    relay.stop()
    for path in (tmp_path / "r").rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path
    relay_keys = json.loads((tmp_path / "r" / "space.key").read_text())
    assert relay_keys["secrets"] == {} and relay_keys["relay_auth"]  # no enc key can be derived
    with Space.open(tmp_path / "r") as r:
        assert r.is_relay and not r.keys.secrets
        assert r.store.count() >= 4
    assert len(proxy.captured) > 0
    assert marker.encode() not in bytes(proxy.captured)


async def raw_session(url: str, frames: list[bytes]) -> tuple[int | None, str]:
    ws = await connect(url, max_size=MAX_FRAME_SIZE * 2, compression=None)
    # The node may close while a large frame is still on its way: that is the point.
    with contextlib.suppress(Exception):
        for frame in frames:
            await ws.send(frame)
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            await asyncio.wait_for(ws.recv(), timeout=10)
    with contextlib.suppress(Exception):
        await ws.close()
    return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"\xc1\xc1 not msgpack"], 4400),
        ([msgpack.packb([42, "unknown type"])], 4400),
        ([msgpack.packb([4, 1, [b"envelopes before hello"]])], 4409),
        ([b"\x00" * (MAX_FRAME_SIZE + 10)], 1009),
    ],
)
def test_garbage_frames_close_the_session_and_the_node_keeps_serving(
    tmp_path: Path, nodes, frames: list[bytes], code: int
) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    a = nodes(a_home)
    got, _ = asyncio.run(raw_session(a.url, frames))
    assert got == code
    dial(b_home, a.url)
    nodes(b_home)
    add(a_home, "after the garbage")
    wait_until(lambda: inputs(b_home) == ["after the garbage"], what="a to keep serving")


def test_wrong_auth_key_is_closed_with_4401(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a = nodes(first.paths.root)
        impostor = SyncSession(
            role=Role.INITIATOR,
            space_id=bytes.fromhex(first.keys.space_id),  # knows the public id, not the key
            auth_key=os.urandom(32),
            node=DeviceKeys.from_seed(os.urandom(64)),
            name="impostor",
            challenge=os.urandom(32),
        )

    async def attempt() -> int | None:
        async with connect(a.url, compression=None) as ws:
            for frame in impostor.data_to_send():
                await ws.send(frame)
            try:
                while True:
                    impostor.receive(await asyncio.wait_for(ws.recv(), timeout=10))
                    for frame in impostor.data_to_send():
                        await ws.send(frame)
            except ConnectionClosed:
                return ws.close_code

    assert asyncio.run(attempt()) == 4401
    assert a.wait_event("peer-failed", code=4401)


def test_a_stalled_peer_does_not_block_others(tmp_path: Path, nodes) -> None:
    import socket

    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    a = nodes(a_home)
    stalled = socket.create_connection(("127.0.0.1", a.port))  # opens TCP, never speaks
    try:
        dial(b_home, a.url)
        nodes(b_home)
        add(a_home, "not blocked")
        wait_until(lambda: inputs(b_home) == ["not blocked"], what="sync beside a stalled peer")
    finally:
        stalled.close()
