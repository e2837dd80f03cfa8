"""Snapshots (syncq.snapshots): the format, the rules, and bootstrapping over real sessions.

The property test runs a mesh of replicas that add, cancel, write snapshots, prune, connect,
lose frames and take in late joiners; once healed, every replica must hold what a full replay of
every envelope ever written holds.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from syncq import crypto, replica, snapshots
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.errors import BadSignature, BadTag, MalformedEnvelope, WrongSpace
from syncq.invite import decode_invite
from syncq.peering import Peering
from syncq.protocol import Role
from syncq.snapshots import Snapshot
from syncq.space import Space
from tests.helpers.spaces import join
from tests.syncq.test_peering import Link, seeded

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def keys() -> SpaceKeys:
    return SpaceKeys.create(os.urandom(32))


def sealed(space: SpaceKeys, covers: dict[bytes, int], state: bytes = b"state") -> tuple[DeviceKeys, bytes]:
    device = DeviceKeys.from_seed(os.urandom(64))
    data = snapshots.seal_snapshot(
        device=device, space=space, covers=covers, state=state, nonce=os.urandom(12)
    )
    return device, data


# -- the format -----------------------------------------------------------------------------------


def test_a_snapshot_opens_to_its_state_and_says_what_it_covers_in_the_clear() -> None:
    space = keys()
    device, data = sealed(space, {A: 3, B: 7}, b"the whole doc")
    found = snapshots.verify_snapshot(data, space.space_id)
    assert found.author == device.public_key
    assert found.covers == {A: 3, B: 7} and found.count == 10
    assert snapshots.open_state(found, space) == b"the whole doc"
    assert b"the whole doc" not in data


def test_a_short_and_a_long_state_seal_to_one_size() -> None:
    space = keys()
    assert len(sealed(space, {A: 1}, b"x" * 10)[1]) == len(sealed(space, {A: 1}, b"y" * 900)[1])


def test_what_it_covers_cannot_be_changed_by_whoever_carries_it() -> None:
    space = keys()
    _, data = sealed(space, {A: 3})
    forged = bytearray(data)
    forged[snapshots.HEAD_SIZE + 32 + 7] = 9  # A: 3 -> 9, and the count to match
    forged[56:64] = (9).to_bytes(8, "big")
    with pytest.raises(BadSignature):
        snapshots.verify_snapshot(bytes(forged), space.space_id)


def test_a_snapshot_of_another_space_or_under_another_key_is_refused() -> None:
    space, other = keys(), keys()
    _, data = sealed(space, {A: 1})
    with pytest.raises(WrongSpace):
        snapshots.verify_snapshot(data, other.space_id)
    found = snapshots.verify_snapshot(data, space.space_id)
    impostor = SpaceKeys(space_id=space.space_id, secrets={0: os.urandom(32)})
    with pytest.raises(BadTag):
        snapshots.open_state(found, impostor)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:50],  # too short
        lambda d: b"XX" + d[2:],  # magic
        lambda d: d[:3] + b"\x01" + d[4:],  # kind
        lambda d: d[:64] + (10**6).to_bytes(4, "big") + d[68:],  # more authors than bytes
        lambda d: d[:56] + (99).to_bytes(8, "big") + d[64:],  # a count its vector does not sum to
    ],
)
def test_damaged_snapshots_are_malformed(damage: object) -> None:
    space = keys()
    _, data = sealed(space, {A: 2, B: 1})
    with pytest.raises(MalformedEnvelope):
        snapshots.decode_snapshot(damage(data))  # type: ignore[operator]


def test_an_unsorted_vector_is_malformed() -> None:
    space = keys()
    _, data = sealed(space, {A: 2, B: 1})
    head, first, second = data[:68], data[68:108], data[108:148]
    with pytest.raises(MalformedEnvelope):
        snapshots.decode_snapshot(head + second + first + data[148:])


def test_a_snapshot_never_passes_as_an_envelope() -> None:
    space = keys()
    _, data = sealed(space, {A: 1})
    with pytest.raises(MalformedEnvelope):
        crypto.decode(data)


# -- the rules ------------------------------------------------------------------------------------

vectors = st.dictionaries(st.sampled_from([A, B, C]), st.integers(1, 6), max_size=3)


def held(covers: dict[bytes, int]) -> Snapshot:
    data = repr(sorted(covers.items())).encode()
    return Snapshot(author=A, epoch=0, covers=covers, data=data, digest=hashlib.sha256(data).digest())


@given(st.lists(vectors, max_size=8))
def test_the_snapshots_held_stay_an_antichain_that_covers_everything_taken(
    taken: list[dict[bytes, int]],
) -> None:
    chain: list[Snapshot] = []
    for covers in taken:
        new = held(covers)
        keep, drop = snapshots.kept(chain, new)
        if keep:
            chain = [s for s in chain if s.digest not in drop] + [new]
    assert snapshots.merged(s.covers for s in chain) == snapshots.merged(taken)
    for x, y in itertools.permutations(chain, 2):
        assert not snapshots.dominates(x.covers, y.covers)


@given(vectors, st.dictionaries(st.sampled_from([A, B, C]), st.integers(0, 6), max_size=3))
def test_clipping_to_the_bounds_leaves_nothing_poisoned(
    covers: dict[bytes, int], bounds: dict[bytes, int]
) -> None:
    cut = snapshots.clipped(covers, bounds)
    assert snapshots.poisoned(cut, bounds) is None
    assert snapshots.dominates(covers, cut)
    assert (snapshots.poisoned(covers, bounds) is None) == (cut == covers)


def test_a_peer_is_sent_a_snapshot_when_far_behind_or_when_envelopes_alone_cannot_reach_it() -> None:
    s = held({A: 10, B: 4})
    everything = lambda author, seq: True  # noqa: E731
    nothing_below = lambda author, seq: seq >= 10  # noqa: E731
    assert snapshots.to_send([s], {}, [], everything, far=14) == [s]
    assert snapshots.to_send([s], {}, [], everything, far=15) == []
    assert snapshots.to_send([s], {A: 9}, [], nothing_below, far=100) == [s]  # B's 1-4 are not here
    assert snapshots.to_send([s], {A: 10, B: 4}, [], nothing_below, far=1) == []  # it lacks nothing
    assert snapshots.to_send([s], {}, [s.digest], everything, far=1) == []  # it holds it


# -- bootstrapping over sessions ------------------------------------------------------------------


@pytest.fixture
def near() -> Iterator[None]:
    """Peers count as far behind after 5 envelopes, not 1000: small histories take snapshots."""
    before = replica.SNAPSHOT_FAR
    replica.SNAPSHOT_FAR = 5
    yield
    replica.SNAPSHOT_FAR = before


def connect(a: Space, b: Space) -> Link:
    link = Link(Peering(a, Role.INITIATOR), Peering(b, Role.RESPONDER))
    link.settle()
    return link


def ids(space: Space) -> list[tuple[str, str, str]]:
    return [(e.prompt.id, e.prompt.input, e.status.value) for e in space.entries(limit=None)]


@pytest.mark.usefixtures("near")
def test_a_new_device_takes_a_snapshot_and_only_the_envelopes_after_it(tmp_path: Path) -> None:
    a = Space.init(tmp_path / "a", name="a", device_list=True)
    early = join(tmp_path / "early", a, "early")  # offline from here on
    lost = join(tmp_path / "lost", a, "lost phone")
    a.remove_device(lost.device.public_key.hex())  # in a device-list envelope the snapshot covers
    for n in range(30):
        a.add(f"before the snapshot {n}", model="echo")
    snapshot = a.replica.write_snapshot(a.device)
    assert snapshot is not None and a.replica.write_snapshot(a.device) is None  # nothing new since
    for n in range(3):
        a.add(f"after it {n}", model="echo")
    b = join(tmp_path / "b", a, "b")
    link = connect(a, b)
    assert link.a.snapshots_sent == 1 and link.b.snapshots_taken == 1
    assert ids(b) == ids(a) and len(ids(b)) == 33
    # b stores the snapshot and what came after it, not the 30 prompts' envelopes.
    assert b.store.count() < 20  # device lists and keys, the 3 after it, its own
    assert b.version_vector() == a.version_vector() | b.version_vector()
    # A third device, admitted by b, that meets only b is brought up by the snapshot b holds.
    c = join(tmp_path / "c", b, "c")
    link = connect(b, c)
    assert link.a.snapshots_sent == 1
    assert ids(c) == ids(b)
    # No state holds the device list: the device-list envelopes a snapshot covers go before
    # it, so a device that was offline through a removal learns of it, and refuses that device.
    link = connect(a, early)
    assert link.a.snapshots_sent == 1 and ids(early) == ids(a)
    assert lost.device.public_key in early.replica.listing().removed
    assert early.peer_refusal(lost.device.public_key) == "this device was removed from the space"
    # What b writes from now on reaches a as envelopes, and b opens again from its store alone.
    b.add("from b", model="echo")
    b_home = b.paths.root
    b.close()
    b = Space.open(b_home)
    assert len(ids(b)) == 34 and set(ids(a)) < set(ids(b))
    connect(b, a)
    assert ids(a) == ids(b)
    for space in (a, b, c, lost, early):
        space.close()


@pytest.mark.usefixtures("near")
def test_a_snapshot_of_a_removed_device_or_covering_its_late_writes_is_refused(tmp_path: Path) -> None:
    a = Space.init(tmp_path / "a", name="a", device_list=True)
    thief = join(tmp_path / "t", a, "thief")
    b = join(tmp_path / "b", a, "b")
    connect(a, thief)
    connect(a, b)
    a.add("honest", model="echo")
    connect(a, b)
    for n in range(10):
        thief.add(f"stolen {n}", model="echo")
    connect(thief, b)  # b takes the thief's writes before it learns of the removal
    own = thief.replica.write_snapshot(thief.device)
    from_b = b.replica.write_snapshot(b.device)
    assert own is not None and from_b is not None
    a.remove_device(thief.device.public_key.hex())
    for late in (own, from_b):
        report = a.replica.receive_snapshot(late.data)
        assert report.rejected == "unlisted" and not report.kept
    assert a.store.snapshots() == []
    # b learns of the removal: its snapshot holds what the thief wrote late, and goes.
    connect(a, b)
    assert b.store.snapshots() == []
    assert [e.prompt.input for e in b.entries(limit=None)] == ["honest"]
    assert ids(b) == ids(a)
    for space in (a, thief, b):
        space.close()


# -- pruning --------------------------------------------------------------------------------------


def own_rows(space: Space) -> list[int]:
    return [row.seq for row in space.store.rows(space.device.public_key)]


def clocked(home: Path) -> tuple[Space, list[int]]:
    """A new space whose clock reads ``now[0]`` (ms)."""
    now = [0]
    return Space.init(home, name="a", device_list=True, clock=lambda: now[0]), now


@pytest.mark.usefixtures("near")
def test_pruning_drops_what_a_snapshot_covered_for_the_retention_and_a_newcomer_still_converges(
    tmp_path: Path,
) -> None:
    a, now = clocked(tmp_path / "a")
    for n in range(30):
        a.add(f"prompt {n}", model="echo")
    before = ids(a)
    assert a.replica.write_snapshot(a.device) is not None
    top = own_rows(a)[-1]
    assert a.replica.prune(1000) == 0  # covered, but not for 1 s yet
    now[0] = 1000
    assert a.replica.prune(1000) == 30  # the prompts' envelopes: not the device list, not the newest
    assert own_rows(a) == [1, top]
    a.add("after pruning", model="echo")  # a seq never reused
    assert own_rows(a) == [1, top, top + 1]
    home = a.paths.root
    a.close()
    a = Space.open(home)
    assert ids(a)[:30] == before and len(ids(a)) == 31
    b = join(tmp_path / "b", a, "b")
    link = connect(a, b)
    assert link.a.snapshots_sent == 1 and ids(b) == ids(a)
    for space in (a, b):
        space.close()


@pytest.mark.usefixtures("near")
def test_a_peer_seen_within_the_retention_holds_pruning_back_and_one_away_longer_does_not(
    tmp_path: Path,
) -> None:
    a, now = clocked(tmp_path / "a")
    b = join(tmp_path / "b", a, "b")
    for n in range(10):
        a.add(f"prompt {n}", model="echo")
    a.replica.write_snapshot(a.device)
    now[0] = 5
    connect(a, b)  # b says, at 5, that it holds a's device list only
    now[0] = 100
    assert a.replica.prune(96) == 0  # b was seen 95 ms ago and lacks them
    assert a.replica.prune(50) >= 10  # b was away longer than that: the snapshot is its way back
    control = [r.seq for r in a.store.rows(a.device.public_key) if r.data[3] in (3, 4)]
    assert own_rows(a) == sorted({*control, max(own_rows(a))})
    b.close()
    b = Space.open(tmp_path / "b")
    connect(a, b)
    assert ids(b) == ids(a) and len(ids(a)) == 10
    for space in (a, b):
        space.close()


def test_a_peer_whose_next_envelope_is_a_kept_device_list_still_gets_the_snapshot(tmp_path: Path) -> None:
    # Pruning keeps device lists: the envelope after the peer's seq may be stored while those
    # after it are gone. Envelopes alone would stop at that gap; the snapshot must go first.
    a, now = clocked(tmp_path / "a")
    b = join(tmp_path / "b", a, "b")
    for n in range(5):
        a.add(f"early {n}", model="echo")
    code, _ = a.create_invite(role="member")
    connect(a, b)
    held = b.version_vector()[a.device.public_key]
    b.close()
    device = DeviceKeys.from_seed(os.urandom(64))  # admitted: a device-list envelope of a comes next
    grant = a.admit(
        decode_invite(code).id, device=device.public_key, exchange=device.exchange_public_key, name="d"
    )
    d = Space.join_granted(tmp_path / "d", device=device, name="d", grant=grant)
    assert next(a.store.rows(a.device.public_key, held)).data[3] == 4  # the device list
    for n in range(5):
        a.add(f"late {n}", model="echo")
    a.replica.write_snapshot(a.device)
    now[0] = 10
    assert a.replica.prune(1) > 0
    b = Space.open(tmp_path / "b")
    link = connect(a, b)  # 8 behind: far from "far behind", yet only the snapshot can bring it up
    assert link.a.snapshots_sent == 1
    assert ids(b) == ids(a) and len(ids(a)) == 10
    for space in (a, b, d):
        space.close()


# -- found by review: removals, refusals and lies about seqs ----------------------------------------


@pytest.mark.usefixtures("near")
def test_a_removal_after_pruning_keeps_everyone_elses_history(tmp_path: Path) -> None:
    # The remover was offline longer than the retention: its cutoff of d is below what a's
    # snapshot covers, and a pruned the envelopes. Forgetting the snapshot would take every
    # author's history with it, on every node; it is kept, and a writes one to give instead.
    a, now = clocked(tmp_path / "a")
    d, r = join(tmp_path / "d", a, "d"), join(tmp_path / "r", a, "r")
    connect(a, r)
    for n in range(5):
        d.add(f"by d {n}", model="echo")
        a.add(f"by a {n}", model="echo")
    connect(a, d)
    a.replica.write_snapshot(a.device)
    now[0] = 10_000
    assert a.replica.prune(5_000) > 0
    r.remove_device(d.device.public_key.hex())  # r knows d's device list only
    connect(r, a)
    assert [e for e in ids(a) if e[1].startswith("by a")] == [e for e in ids(a) if e[1].startswith("by a")][
        :5
    ]
    assert len([e for e in ids(a) if e[1].startswith("by a")]) == 5  # nothing of a's lost
    assert a.store.rejections().get("unlisted", 0) >= 1  # said: d's late writes stay
    assert a.replica.snapshot_due(500)  # one of its own, to give instead
    assert a.replica.write_snapshot(a.device) is not None
    connect(a, r)
    assert {e[1] for e in ids(r)} >= {f"by a {n}" for n in range(5)}
    newcomer = join(tmp_path / "n", a, "n")
    connect(a, newcomer)
    assert ids(newcomer) == ids(a)
    for space in (a, d, r, newcomer):
        space.close()


@pytest.mark.usefixtures("near")
def test_a_removed_authors_snapshot_is_not_given_and_one_of_the_holder_takes_its_place(
    tmp_path: Path,
) -> None:
    a = Space.init(tmp_path / "a", name="a", device_list=True)
    t, b = join(tmp_path / "t", a, "t"), join(tmp_path / "b", a, "b")
    for n in range(10):
        t.add(f"by t {n}", model="echo")
    connect(a, t)
    snapshot = t.replica.write_snapshot(t.device)  # b has none of it: it takes the snapshot
    assert snapshot is not None and b.replica.receive_snapshot(snapshot.data).kept
    a.remove_device(t.device.public_key.hex())
    connect(a, b)  # b learns of it
    n = join(tmp_path / "n", b, "n")
    assert b.replica.snapshots_for({}, []) == []  # t's is not given any more
    assert b.replica.snapshot_due(500)
    b.replica.write_snapshot(b.device)
    link = connect(b, n)
    assert link.a.snapshots_sent == 1 and ids(n) == ids(b) and len(ids(n)) == 10
    for space in (a, t, b, n):
        space.close()


@pytest.mark.usefixtures("near")
def test_a_refused_snapshot_leaves_the_peer_counted_as_its_have_said(tmp_path: Path) -> None:
    a = Space.init(tmp_path / "a", name="a", device_list=True)
    t, b, n = (join(tmp_path / name, a, name) for name in ("t", "b", "n"))
    connect(a, b)  # b knows n
    for k in range(10):
        t.add(f"by t {k}", model="echo")
    snapshot = t.replica.write_snapshot(t.device)  # b takes it; nobody else has t's prompts
    assert snapshot is not None and b.replica.receive_snapshot(snapshot.data).kept
    a.remove_device(t.device.public_key.hex())
    connect(a, n)  # n hears of the removal; b has not
    link = connect(b, n)
    assert link.a.snapshots_sent == 1 and link.a.snapshots_refused == 1
    assert n.store.rejections().get("unlisted", 0) >= 1
    # b counts n as holding what its HAVE said, not the refused snapshot's vector.
    assert link.a.session.peer_vv.get(t.device.public_key, 0) < snapshot.covers[t.device.public_key]
    for space in (a, t, b, n):
        space.close()


def test_a_snapshot_claiming_seqs_this_device_never_wrote_is_refused(tmp_path: Path) -> None:
    a = Space.init(tmp_path / "a", name="a", device_list=True)
    mallory = join(tmp_path / "m", a, "mallory")
    connect(a, mallory)
    me = a.device.public_key
    covers = {**mallory.replica.version_vector(), me: a.store.tops()[me] + 1_000_000}
    lie = snapshots.seal_snapshot(
        device=mallory.device,
        space=mallory.keys,
        covers=covers,
        state=mallory.log.state(),
        nonce=os.urandom(12),
    )
    report = a.replica.receive_snapshot(lie, me=me)
    assert report.rejected == "forged" and not report.kept
    for space in (a, mallory):
        space.close()


# -- the property: snapshots from different authors never lose an update ---------------------------


class SnapshotMesh(RuleBasedStateMachine):
    """Replicas that add, snapshot, connect, lose frames, and late joiners that start empty."""

    def __init__(self) -> None:
        super().__init__()
        self.root, self.entropy, self.clock = seeded("syncq-snapshots-")
        self.replicas: list[Space] = []
        self.links: dict[tuple[int, int], Link] = {}
        self.added = 0
        self.written: dict[tuple[bytes, int], bytes] = {}
        self.before = replica.SNAPSHOT_FAR
        replica.SNAPSHOT_FAR = 4

    def space(self, i: int) -> Space:
        return Space.join(
            self.root / f"r{i}",
            name=f"r{i}",
            keys=self.replicas[0].keys,
            entropy=self.entropy,
            clock=self.clock,
        )

    @initialize(n=st.integers(2, 3))
    def make(self, n: int) -> None:
        self.replicas = [Space.init(self.root / "r0", name="r0", entropy=self.entropy, clock=self.clock)]
        self.replicas += [self.space(i) for i in range(1, n)]

    def pick(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.replicas) - 1), label="replica")

    @rule(data=st.data(), text=st.text(min_size=1, max_size=8).filter(str.strip))
    def add(self, data: st.DataObject, text: str) -> None:
        self.replicas[self.pick(data)].add(text, model="echo")
        self.added += 1

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        space = self.replicas[self.pick(data)]
        found = space.entries(limit=1)
        if found and found[0].status.value == "queued":
            space.cancel(found[0].prompt.id)

    @rule(data=st.data())
    def snapshot(self, data: st.DataObject) -> None:
        space = self.replicas[self.pick(data)]
        space.replica.write_snapshot(space.device)

    @rule(data=st.data())
    def prune(self, data: st.DataObject) -> None:
        self.collect()  # the replay must still see every envelope ever written
        self.replicas[self.pick(data)].replica.prune(0)

    def collect(self) -> None:
        for space in self.replicas:
            for author in space.store.tops():
                for row in space.store.rows(author):
                    self.written[(row.author, row.seq)] = row.data

    @precondition(lambda self: len(self.replicas) < 5)
    @rule()
    def late_joiner(self) -> None:
        self.replicas.append(self.space(len(self.replicas)))

    @rule(data=st.data(), limit=st.integers(0, 4))
    def connect(self, data: st.DataObject, limit: int) -> None:
        i, j = sorted(
            data.draw(st.lists(st.integers(0, len(self.replicas) - 1), min_size=2, max_size=2, unique=True))
        )
        link = Link(
            Peering(self.replicas[i], Role.INITIATOR, challenge=self.entropy(32)),
            Peering(self.replicas[j], Role.RESPONDER, challenge=self.entropy(32)),
        )
        for _ in range(limit):  # a partition may cut it at any frame
            link.step(limit)
        self.links[(i, j)] = link

    def teardown(self) -> None:
        try:
            if self.replicas:
                self.heal_and_check()
        finally:
            replica.SNAPSHOT_FAR = self.before
            for space in self.replicas:
                space.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def heal_and_check(self) -> None:
        # A full replay: every author's own envelopes (an author keeps all of its own) applied
        # into a fresh replica that never saw a snapshot.
        self.collect()
        replay = self.space(99)
        replay.receive([self.written[key] for key in sorted(self.written)])
        for _ in range(len(self.replicas)):  # along a line: what one end wrote reaches the other
            for i in range(len(self.replicas) - 1):
                link = Link(
                    Peering(self.replicas[i], Role.INITIATOR, challenge=self.entropy(32)),
                    Peering(self.replicas[i + 1], Role.RESPONDER, challenge=self.entropy(32)),
                )
                link.settle()
                assert link.a.open and link.b.open
        expected = ids(replay)
        assert len(expected) == self.added
        for space in self.replicas:
            assert ids(space) == expected
        replay.close()


SnapshotMesh.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestSnapshotsNeverLoseAnUpdate = SnapshotMesh.TestCase
