"""Partitions, cut frames, tampering, strangers, relays and garbage, against real nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from harness import SYNCQ, member, wait_until
from harness import inputs as ordered_inputs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from syncq.crypto import DeviceKeys
from syncq.protocol import MAX_FRAME_SIZE, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION, Frame, Role, SyncSession
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


def syncq_json(home: Path, *args: str) -> list[dict]:
    """A CLI command's JSON lines, run as a user would run it."""
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    out = subprocess.run([SYNCQ, *args], env=env, capture_output=True, text=True, check=True, timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def rss(pid: int) -> int:
    """A process's resident memory in bytes (/proc/PID/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


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


def test_a_tampered_envelope_is_rejected_and_reported_not_applied(tmp_path: Path, nodes, proxies) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
        first.add("the real prompt", model="echo")
    a = nodes(a_home)
    proxy = proxies(a.port)
    proxy.tamper_next_big_chunk = "down"  # a's first batch to b gets one bit flipped
    dial(b_home, proxy.url)
    b = nodes(b_home)
    failed = b.wait_event("peer-failed")
    # Every frame after HELLO is sealed: the flipped bit fails the AUTH (4401) or the frame's
    # tag (4412) before any envelope is looked at, so nothing of it is applied.
    assert failed["code"] in (4401, 4412)
    wait_until(lambda: inputs(b_home) == ["the real prompt"], what="the intact copy after reconnecting")
    assert proxy.tampered == 1
    assert a.alive and b.alive


def test_a_node_of_another_space_cannot_connect_and_others_still_sync(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    Space.init(tmp_path / "x", name="stranger").close()
    a = nodes(a_home)
    dial(tmp_path / "x", a.url)
    x = nodes(tmp_path / "x")
    assert x.wait_event("peer-failed", code=4401)  # each side refuses the other (at its AUTH)
    refused = a.wait_event("peer-failed", code=4401)
    assert refused["address"].startswith("127.0.0.1:") and refused["peer"].endswith(f"({refused['address']})")
    assert refused["reason"] == "peer belongs to another space"

    def x_says_why() -> bool:
        rows = syncq_json(tmp_path / "x", "peers", "--json")
        return any(r["url"] == a.url and "4401" in (r["error"] or "") for r in rows)

    wait_until(x_says_why, what="the refused side's `syncq peers` to show the error")
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
        ([b"\x00" * (MAX_HANDSHAKE_FRAME + 10)], 1009),  # a stranger's limit: 64 KiB
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
            auth_keys=[(0, os.urandom(32))],  # not the space's key
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


# -- a man in the middle after AUTH, strangers, and what the wire says ------------------------


class Once:
    """A proxy rewrite that acts on one message of the first connection only."""

    def __init__(self, direction: str, index: int, act) -> None:
        self.direction, self.index, self.act = direction, index, act
        self.fired = 0

    def __call__(self, direction: str, index: int, payload: bytes) -> tuple[list[bytes], list[bytes]]:
        if self.fired or direction != self.direction or index != self.index:
            return [payload], []
        self.fired += 1
        return self.act(payload)


@pytest.mark.parametrize("attack", ["forge-have", "forge-ack", "replay", "drop-have"])
def test_a_man_in_the_middle_after_auth_is_caught_and_the_nodes_converge(
    tmp_path: Path, nodes, proxies, attack: str
) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
        for i in range(20):
            first.add(f"p{i:02d}", model="echo")
        author = bytes.fromhex(first.device_id)
    a = nodes(a_home)
    proxy = proxies(a.port)
    # Messages each way: HELLO (0), AUTH (1), HAVE (2), then the rest. The forgeries are
    # what withheld data from a version-1 node while both ends said "connected, 0 behind".
    have_all = msgpack.packb([Frame.HAVE, {author: 10**6}])  # "b has every one of a's"
    rewrite, victim = {
        "forge-have": (Once("up", 2, lambda _: ([have_all], [])), a),
        # a's first batch never reaches b, and a hears an ACK for it
        "forge-ack": (Once("down", 3, lambda _: ([], [msgpack.packb([Frame.ACK, 1])])), a),
        "replay": (Once("down", 3, lambda frame: ([frame, frame], [])), b_home),
        # b's HAVE lost: its next frame fails its tag, or, with none, the 10 s timer fires
        "drop-have": (Once("up", 2, lambda _: ([], [])), a),
    }[attack]
    proxy.rewrite = rewrite
    dial(b_home, proxy.url)
    b = nodes(b_home)
    victim_node = a if victim is a else b
    codes = (4408, 4412) if attack == "drop-have" else (4412,)

    def caught() -> list[dict]:
        return [e for e in victim_node.find("peer-failed") if e["code"] in codes]

    (first_caught, *_) = wait_until(caught, what=f"the session to fail with {codes}")
    assert first_caught["address"].startswith("127.0.0.1:")
    everything = [f"p{i:02d}" for i in range(20)]
    wait_until(lambda: inputs(b_home) == everything, what="b to resync after reconnecting")
    assert rewrite.fired == 1


def test_a_hello_and_the_whole_wire_say_nothing_of_the_space_the_devices_or_their_names(
    tmp_path: Path, nodes, proxies
) -> None:
    with Space.init(tmp_path / "a", name="alice-laptop") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "bob-desktop")
        space_id, a_id = bytes.fromhex(first.keys.space_id), bytes.fromhex(first.device_id)
    with Space.open(b_home) as second:
        b_id = bytes.fromhex(second.device_id)
    a = nodes(a_home)

    async def stranger() -> bytes:
        async with connect(a.url, compression=None) as ws:
            hello = await asyncio.wait_for(ws.recv(), timeout=10)
            assert isinstance(hello, bytes)
            return hello

    hello = asyncio.run(stranger())
    assert msgpack.unpackb(hello)[:2] == [Frame.HELLO, PROTOCOL_VERSION]
    secrets = {"space id": space_id, "a's id": a_id, "b's id": b_id, "a's name": b"alice-laptop"}
    secrets |= {"b's name": b"bob-desktop", "a's id, hex": a_id.hex().encode()}
    for what, secret in secrets.items():
        assert secret not in hello, what
    proxy = proxies(a.port)  # and someone who watches two members sync
    dial(b_home, proxy.url)
    nodes(b_home)
    add(a_home, "a prompt")
    wait_until(lambda: inputs(b_home) == ["a prompt"], what="sync through the watched wire")
    wire = bytes(proxy.captured)
    assert len(wire) > 1000
    for what, secret in secrets.items():
        assert secret not in wire, what


def test_a_flood_of_strangers_with_8_mib_frames_costs_the_node_little(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    a = nodes(a_home)
    assert a.proc is not None
    before = rss(a.proc.pid)
    big = b"\x00" * (8 * 1024 * 1024 - 64)

    async def one() -> object:
        with contextlib.suppress(Exception):
            ws = await connect(a.url, max_size=None, compression=None, open_timeout=30)
            with contextlib.suppress(Exception):
                await ws.send(big)
            return ws
        return None

    async def flood() -> int:
        conns = await asyncio.gather(*(one() for _ in range(40)))
        peak = before
        deadline = time.monotonic() + 2.0  # the node's memory, sampled while all are open
        while time.monotonic() < deadline:
            peak = max(peak, rss(a.proc.pid))
            await asyncio.sleep(0.05)
        for ws in conns:
            with contextlib.suppress(Exception):
                await ws.close()  # type: ignore[attr-defined]
        return peak

    peak = asyncio.run(flood())
    after = rss(a.proc.pid)
    assert peak - before < 100 * 2**20, f"{(peak - before) / 2**20:.0f} MiB more while flooded"
    assert after - before < 100 * 2**20, f"{(after - before) / 2**20:.0f} MiB kept"
    dial(b_home, a.url)
    nodes(b_home)
    add(a_home, "after the flood")
    wait_until(lambda: inputs(b_home) == ["after the flood"], what="a to sync after the flood")


def test_strangers_in_their_handshake_are_capped_and_cannot_lock_members_out(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    add(a_home, "while strangers wait")
    a = nodes(a_home)

    async def strangers() -> int | None:
        held = []
        try:
            for _ in range(32):  # each gets the node's HELLO, then says nothing: the cap is full
                ws = await connect(a.url, compression=None)
                held.append(ws)
                await asyncio.wait_for(ws.recv(), timeout=10)
            # A member dials in now: the oldest stranger makes room, not the member.
            await asyncio.to_thread(lambda: (dial(b_home, a.url), nodes(b_home)))
            await asyncio.to_thread(
                wait_until, lambda: inputs(b_home) == ["while strangers wait"], what="b to sync past the cap"
            )
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(held[0].recv(), timeout=10)
            return held[0].close_code
        finally:
            for ws in held:
                await ws.close()

    assert asyncio.run(strangers()) == 4429


def test_a_strangers_error_text_reaches_the_human_log_escaped(tmp_path: Path) -> None:
    Space.init(tmp_path / "a", name="a").close()
    env = {**os.environ, "SYNCQ_HOME": str(tmp_path / "a")}
    args = [SYNCQ, "node", "--listen", "127.0.0.1:0", "--no-api", "--no-discovery", "--no-executors"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        while "listening on" not in (line := proc.stdout.readline()):
            assert line, lines
            lines.append(line)
        url = line.split("listening on ", 1)[1].split()[0]
        reason = "boom\n12:00:00 connected to laptop\x1b[2J\r12:00:01 error: disk full"
        asyncio.run(raw_session(url, [msgpack.packb([Frame.ERROR, 4400, reason])]))
        while "closed the session" not in (line := proc.stdout.readline()):
            assert line, lines
            lines.append(line)
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    log = "".join([*lines, line, rest])
    assert "boom\\n12:00:00 connected to laptop\\x1b[2J\\r12:00:01 error: disk full" in line
    assert "127.0.0.1:" in line  # who said it
    assert not any(x.startswith(("12:00:00", "12:00:01")) for x in log.splitlines())
    assert "\x1b" not in log and "\r" not in log
