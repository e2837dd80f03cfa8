"""A relay stores only what members wrote and is no free disk; invite codes are range-checked.
Real `syncq` commands and node processes on 127.0.0.1 (issue 13). The one who attacks holds a
relay's keys (a relay's home, or a relay removed from the space) and makes keys of its own:
since device removal (issue 14) every node refuses it at AUTH (4410), before it sends a frame."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from harness import wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from syncq import crypto
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.frames import CloseCode
from syncq.invite import PREFIX
from syncq.protocol import Authenticated, PeerClosed, Role, State, SyncSession
from syncq.space import Space
from syncq.store import Row
from tests.helpers.spaces import join

pytestmark = pytest.mark.slow

SYNCQ = [sys.executable, "-m", "syncq.cli"]
KiB = 1024


def syncq(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    done = subprocess.run([*SYNCQ, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def relay_and_founder(tmp_path: Path, nodes, config: str = ""):
    """A founder (`syncq init`) and a relay it admitted (as the join handshake does), the relay's
    node started; and the relay's keys (what the attacker holds)."""
    founder, relay = tmp_path / "founder", tmp_path / "relay"
    syncq(founder, "init", "--name", "founder")
    with Space.open(founder) as space, join(relay, space, "relay", role="relay") as r:
        keys = r.keys
    if config:
        (relay / "config.toml").write_text(config)
    return founder, keys, nodes(relay, "--no-executors")


def forge(author: DeviceKeys, space_id: str) -> bytes:
    """An envelope signed by ``author`` (a fresh key) whose ciphertext is garbage: all a holder
    of a relay code can make (it has no key to seal with)."""
    header = struct.pack(">2sBB16sI32sQ", b"SQ", 1, 1, bytes.fromhex(space_id), 0, author.public_key, 1)
    body = header + os.urandom(12) + os.urandom(400)
    return body + author.sign(body)


def tops(home: Path) -> dict[bytes, int]:
    with Space.open(home) as space:
        return space.store.tops()


def rejections(home: Path) -> dict[str, int]:
    with Space.open(home) as space:
        return space.store.rejections()


def inputs(home: Path) -> set[str]:
    with Space.open(home) as space:
        return {e.prompt.input for e in space.entries(limit=None)}


def test_a_relay_refuses_a_relay_key_holder_and_carries_members(tmp_path: Path, nodes) -> None:
    founder, keys, relay = relay_and_founder(tmp_path, nodes)
    gpu = tmp_path / "gpu"
    with Space.open(founder) as space:
        join(gpu, space, "gpu").close()
    syncq(gpu, "peers", "add", relay.url)  # its only peer: the relay

    # The attacker holds the relay's keys, makes its own key and one envelope of garbage.
    attacker_home = tmp_path / "attacker"
    attacker = DeviceKeys.from_seed(os.urandom(64))
    poison = forge(attacker, keys.space_id)
    with Space.init_relay(attacker_home, name="attacker", keys=keys) as home:
        home.store.put([Row(attacker.public_key, 1, poison)])
    attacker_node = nodes(attacker_home, "--no-executors", "--peer", relay.url)
    closed = attacker_node.wait_event("peer-closed", code=int(CloseCode.NOT_LISTED))
    assert "device list" in closed["reason"]  # told why, in one fixed line
    assert attacker.public_key not in tops(tmp_path / "relay")  # nothing stored

    nodes(founder, "--no-executors", "--peer", relay.url)
    nodes(gpu, "--no-executors")
    syncq(founder, "add", "from the founder", "-m", "echo")
    wait_until(
        lambda: "from the founder" in inputs(gpu), what="the founder's prompt at the gpu, via the relay"
    )
    syncq(gpu, "add", "the gpu's first prompt", "-m", "echo")
    wait_until(lambda: "the gpu's first prompt" in inputs(founder), what="the gpu's prompt at the founder")
    stored = tops(tmp_path / "relay")
    with Space.open(gpu) as space:
        assert stored[space.device.public_key] == space.store.tops()[space.device.public_key]
    assert attacker.public_key not in stored
    assert not attacker_node.find("peer-connected")


def test_a_relay_keeps_files_for_a_member_within_its_quota(tmp_path: Path, nodes) -> None:
    founder, _, relay = relay_and_founder(tmp_path, nodes, '[node]\nrelay_quota = "1M"\n')
    nodes(founder, "--no-executors", "--peer", relay.url)
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(os.urandom(600 * KiB))
    second.write_bytes(os.urandom(600 * KiB))
    with Space.open(founder) as space:
        kept = space.add("one", model="nobody", files=[first]).files[0]

    def stored(ref) -> bool:
        with Space.open(tmp_path / "relay") as r:
            return r.blobs.complete(ref)

    wait_until(lambda: stored(kept), what="the relay to keep the first file")
    with Space.open(founder) as space:
        over = space.add("two", model="nobody", files=[second]).files[0]
    refused = relay.wait_event("blob-refused", blob=over.id[:12])
    assert "relay_quota" in refused["reason"] and "older files stay" in refused["reason"]
    with Space.open(tmp_path / "relay") as r:
        assert r.blobs.stored_bytes(over.raw_id) == 0 and over.raw_id not in {
            w.raw_id for w in r.blobs.wants()
        }
        assert r.blobs.complete(kept)  # the older file stays


def test_a_relay_from_an_old_code_warns_that_it_stores_from_anyone(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:  # a space from before device lists
        Space.init_relay(tmp_path / "r", name="relay", keys=first.keys.for_relay()).close()
    warned = nodes(tmp_path / "r").wait_event("relay-unrooted")
    assert warned["level"] == "warning" and "predates device lists" in warned["reason"]


def bad_code(body: list[object]) -> str:
    import base64

    return PREFIX + base64.urlsafe_b64encode(msgpack.packb(body, use_bin_type=True)).decode().rstrip("=")


SPACE_ID = bytes.fromhex(crypto.space_id_for(bytes(32)))


@pytest.mark.parametrize(
    "body",
    [
        [1, SPACE_ID, {}, {2**40: bytes(32)}, []],  # the probe: an epoch past u32
        [1, SPACE_ID, {}, {-1: bytes(32)}, []],
        [1, SPACE_ID, {}, {0: bytes(32)}, ["ws://h:1"] * 60],
        [1, SPACE_ID, {}, {0: bytes(20)}, []],
        [1, SPACE_ID, {0: bytes(32) + b"x"}, {}, []],
    ],
)
def test_join_of_a_bad_code_explains_and_leaves_no_home(tmp_path: Path, body: list[object]) -> None:
    home = tmp_path / "new"
    done = syncq(home, "join", bad_code(body), check=False)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr and "invite code" in done.stderr
    assert not home.exists()


class RawPeer:
    """A relay-code holder's own client: the real protocol state machine over a real websocket,
    with a fresh node key, saying whatever it likes."""

    def __init__(self, url: str, keys: SpaceKeys) -> None:
        self.url = url
        self.session = SyncSession(
            role=Role.INITIATOR,
            auth_keys=[(0, keys.auth_key(0))],
            node=DeviceKeys.from_seed(os.urandom(64)),
            name="stranger",
            challenge=os.urandom(32),
        )
        self.events: list[object] = []

    async def open(self) -> None:
        """Run the handshake until the session syncs or is closed (its events kept)."""
        self.ws = await connect(self.url, compression=None)
        await self.flush()
        while self.session.state not in (State.SYNCING, State.CLOSED):
            for event in self.session.receive(await asyncio.wait_for(self.ws.recv(), timeout=10)):
                self.events.append(event)
                if isinstance(event, Authenticated):
                    self.session.send_have({})
            await self.flush()

    async def flush(self) -> None:
        for frame in self.session.data_to_send():
            # A peer that refuses closes at once: its CLOSE frame may come while this is still
            # sending. It is read next (recv gives what came before the close).
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(frame)

    async def until(self, kind: type) -> object:
        """Read until an event of ``kind`` comes (10 s at most), keeping all that came."""
        while True:
            for event in self.session.receive(await asyncio.wait_for(self.ws.recv(), timeout=10)):
                self.events.append(event)
                if isinstance(event, kind):
                    return event


def test_a_relay_key_holder_gets_no_disk_through_keep_or_want(tmp_path: Path, nodes) -> None:
    _, keys, relay = relay_and_founder(tmp_path, nodes)
    asker = RawPeer(relay.url, keys)

    async def attack() -> list[object]:
        await asker.open()
        await asker.ws.close()
        return asker.events

    events = asyncio.run(attack())
    # Refused at AUTH: not a frame after it (KEEP_BLOB, WANT_BLOB) is ever read.
    assert asker.session.state is State.CLOSED
    assert [e.code for e in events if isinstance(e, PeerClosed)] == [CloseCode.NOT_LISTED]  # type: ignore[attr-defined]
    with Space.open(tmp_path / "relay") as r:
        assert r.blobs.wants() == [] and r.blobs.kept_bytes(asker.session.node.public_key) == 0
    assert not relay.find("blob-refused")  # never answered, never fetched


def test_join_that_fails_midway_removes_what_it_wrote(tmp_path: Path, nodes) -> None:
    founder = tmp_path / "founder"
    syncq(founder, "init", "--name", "founder")
    node = nodes(founder, "--no-executors")
    home = tmp_path / "new"
    (home / "identity.key").mkdir(parents=True)  # its identity cannot be written
    (home / "config.toml").write_text("[node]\n")
    code = syncq(founder, "invite", "--address", node.url).stdout.strip()
    done = syncq(home, "join", code, "--discovery-interface", "127.0.0.1", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "identity.key" in done.stderr
    assert sorted(p.name for p in home.iterdir()) == ["config.toml", "identity.key"]
    (home / "identity.key").rmdir()
    again = syncq(founder, "invite", "--address", node.url).stdout.strip()
    syncq(home, "join", again, "--discovery-interface", "127.0.0.1")  # nothing left refuses it
