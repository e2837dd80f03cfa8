"""Sessions over an in-memory transport: replicas connected and cut at random converge."""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from syncq.peering import MAX_DROPPED, NoHooks, Peering
from syncq.protocol import PeerClosed, Role, WindowOpen
from syncq.space import Space


class Link:
    """Two peerings joined by in-memory queues."""

    def __init__(self, a: Peering, b: Peering) -> None:
        self.a, self.b = a, b

    def step(self, limit: int | None = None) -> int:
        """Move queued frames both ways (at most ``limit`` each way); returns how many moved."""
        moved = 0
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            while src.wants_to_send and src.send_batch():
                pass
            frames = src.data_to_send()
            for frame in frames[:limit]:
                dst.receive(frame)
            moved += len(frames[:limit])
            # Frames beyond the limit are lost, as when a connection drops mid-flight.
        return moved

    def settle(self) -> None:
        while self.step():
            pass


class Gossip(NoHooks):
    """Like the node: what one peer delivers is offered to the replica's other peers."""

    def __init__(self, mesh: Mesh, replica: int) -> None:
        self.mesh, self.replica = mesh, replica

    def stored(self, peering: Peering, added: int) -> None:
        self.mesh.nudge(self.replica)


def seeded(prefix: str) -> tuple[Path, Callable[[int], bytes], Callable[[], int]]:
    """A scratch folder, seeded randomness and a clock that ticks a millisecond a call: what a
    state machine's replicas share, so that a failing example replays."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    ticks = itertools.count(1_700_000_000_000)
    return root, random.Random(0).randbytes, lambda: next(ticks)


class Mesh(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root, self.entropy, self.clock = seeded("syncq-mesh-")
        self.replicas: list[Space] = []
        self.links: dict[tuple[int, int], Link] = {}
        self.added: set[str] = set()

    @initialize(n=st.integers(3, 4))
    def make(self, n: int) -> None:
        first = Space.init(self.root / "r0", name="r0", entropy=self.entropy, clock=self.clock)
        self.replicas = [first] + [
            Space.join(
                self.root / f"r{i}", name=f"r{i}", keys=first.keys, entropy=self.entropy, clock=self.clock
            )
            for i in range(1, n)
        ]

    def pair(self, data: st.DataObject) -> tuple[int, int]:
        i, j = data.draw(
            st.lists(st.integers(0, len(self.replicas) - 1), min_size=2, max_size=2, unique=True),
            label="pair",
        )
        return (min(i, j), max(i, j))

    def nudge(self, replica: int) -> None:
        for (i, j), link in self.links.items():
            if i == replica:
                link.a.wants_to_send = True
            if j == replica:
                link.b.wants_to_send = True

    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        i, j = self.pair(data)
        if (i, j) not in self.links or not self.links[(i, j)].a.open:
            challenge = self.entropy(32)
            self.links[(i, j)] = Link(
                Peering(self.replicas[i], Role.INITIATOR, hooks=Gossip(self, i), challenge=challenge),
                Peering(self.replicas[j], Role.RESPONDER, hooks=Gossip(self, j), challenge=self.entropy(32)),
            )

    @precondition(lambda self: self.links)
    @rule(data=st.data())
    def cut(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.links)), label="link")
        del self.links[key]

    @precondition(lambda self: self.links)
    @rule(data=st.data(), limit=st.integers(0, 3))
    def deliver_a_little(self, data: st.DataObject, limit: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.links)), label="link")
        self.links[key].step(limit)

    @rule(data=st.data(), text=st.text(min_size=1, max_size=10).filter(str.strip))
    def add(self, data: st.DataObject, text: str) -> None:
        i = data.draw(st.integers(0, len(self.replicas) - 1), label="replica")
        self.added.add(self.replicas[i].add(text, model="echo").id)
        self.nudge(i)

    def teardown(self) -> None:
        try:
            if self.replicas:
                self.heal_and_check()
        finally:
            for replica in self.replicas:
                replica.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def heal_and_check(self) -> None:
        # Fresh sessions along a line r0 - r1 - ... (gossip must carry everything end to end).
        self.links = {}
        for i in range(len(self.replicas) - 1):
            self.links[(i, i + 1)] = Link(
                Peering(self.replicas[i], Role.INITIATOR, hooks=Gossip(self, i), challenge=self.entropy(32)),
                Peering(
                    self.replicas[i + 1],
                    Role.RESPONDER,
                    hooks=Gossip(self, i + 1),
                    challenge=self.entropy(32),
                ),
            )
        for _ in range(3 * len(self.replicas)):
            for link in self.links.values():
                link.settle()
        views = [[e.prompt.id for e in r.entries(limit=None)] for r in self.replicas]
        assert set(views[0]) == self.added
        assert all(view == views[0] for view in views)
        assert all(link.a.open and link.b.open for link in self.links.values())


Mesh.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestMeshConverges = Mesh.TestCase


def connected_pair(tmp_path: Path) -> tuple[Space, Space, Link]:
    a = Space.init(tmp_path / "a", name="a")
    b = Space.join(tmp_path / "b", name="b", keys=a.keys)
    link = Link(Peering(a, Role.INITIATOR), Peering(b, Role.RESPONDER))
    link.settle()
    return a, b, link


def test_a_forged_envelope_is_dropped_and_the_rest_of_its_batch_stored(tmp_path: Path) -> None:
    a, b, link = connected_pair(tmp_path)
    a.add("good", model="echo")
    a.add("also good", model="echo")
    good = list(a.envelopes(b.version_vector()))
    forged = bytearray(good[-1])
    forged[-1] ^= 1
    before = b.store.count()
    link.a.session.send_envelopes([(bytes(32), 1, good[0]), (bytes(32), 2, bytes(forged))])
    for frame in link.a.data_to_send():
        link.b.receive(frame)
    assert b.store.count() == before + 1  # the good one; the forged one never stored
    assert link.b.open
    # Frames after AUTH are sealed: read b's reply as a would, one ACK and nothing else.
    acks = [type(e) for f in link.b.data_to_send() for e in link.a.session.receive(f)]
    assert acks == [WindowOpen]
    assert b.status().rejected == {"bad-signature": 1}
    a.close()
    b.close()


def test_a_peer_sending_only_invalid_envelopes_is_cut_off(tmp_path: Path) -> None:
    a, b, link = connected_pair(tmp_path)
    a.add("good", model="echo")
    forged = bytearray(next(iter(a.envelopes(b.version_vector()))))
    forged[-1] ^= 1
    link.a.session.send_envelopes([(bytes(32), n, bytes(forged)) for n in range(1, MAX_DROPPED + 2)])
    for frame in link.a.data_to_send():
        link.b.receive(frame)
    assert link.b.session.close_code == 4403
    assert b.status().rejected == {"bad-signature": MAX_DROPPED + 1}
    a.close()
    b.close()


def test_a_store_that_cannot_write_fails_the_session_without_acknowledging(tmp_path: Path) -> None:
    a, b, link = connected_pair(tmp_path)
    a.add("cannot land", model="echo")
    b.store._connection().execute("PRAGMA query_only=ON")  # as on a full disk: reads work, writes fail
    link.a.wants_to_send = True
    link.a.send_batch()
    for frame in link.a.data_to_send():
        link.b.receive(frame)
    replies = link.b.data_to_send()
    events = [e for f in replies for e in link.a.session.receive(f)]
    assert [type(e) for e in events] == [PeerClosed]  # the ERROR, and no ACK
    assert link.b.session.close_code == 4503
    b.store._connection().execute("PRAGMA query_only=OFF")
    assert [e.prompt.input for e in b.entries()] == []
    a.close()
    b.close()


def test_seq_conflicts_signed_by_their_author_do_not_cut_off_the_peer_that_passes_them_on(
    tmp_path: Path,
) -> None:
    # A member that signs two envelopes for one seq harms nobody: the stored one stays. The peer
    # that forwards the other in good faith must not lose its session over it.
    from syncq import crypto
    from syncq.crypto import Kind

    a, b, link = connected_pair(tmp_path)
    a.add("the stored one", model="echo")
    link.settle()
    seq = b.version_vector()[a.device.public_key]
    twins = [
        crypto.sign_clear(
            device=a.device,
            space_id=a.keys.space_id,
            epoch=0,
            seq=seq,
            kind=Kind.UPDATE,
            payload=bytes([n]) * 40,
        )
        for n in range(MAX_DROPPED + 2)
    ]
    link.a.session.send_envelopes([(bytes(32), n, twin) for n, twin in enumerate(twins, 1)])
    for frame in link.a.data_to_send():
        link.b.receive(frame)
    assert link.b.open
    assert b.status().rejected == {"seq-conflict": MAX_DROPPED + 2}
    a.close()
    b.close()
