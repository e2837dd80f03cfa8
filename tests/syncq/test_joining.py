"""Sans-I/O tests of the join handshake: a joiner and an admitter exchange bytes in memory."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.frames import PROTOCOL_VERSION, CloseCode, Frame
from syncq.handshake import FrameSeal, Keys, seal_auth, transcript_hash
from syncq.joining import (
    ADMITTER,
    ADMITTER_TRANSITIONS,
    JOINER_TRANSITIONS,
    Admitter,
    Granted,
    Joiner,
    JoinFailed,
    JoinRequested,
    JoinState,
    Refused,
    is_join_hello,
)
from syncq.protocol import Role, SyncSession

INVITE = b"i" * 32
OTHERS = {"01" * 8: b"a" * 32, "02" * 8: INVITE, "03" * 8: b"c" * 32}
EXCHANGE = os.urandom(32)


def joiner(invite: bytes = INVITE, name: str = "phone") -> Joiner:
    return Joiner(
        node=DeviceKeys.from_seed(os.urandom(64)),
        challenge=os.urandom(32),
        invite_auth=invite,
        exchange=EXCHANGE,
        name=name,
    )


def admitter(invites: dict[str, bytes] = OTHERS) -> Admitter:
    return Admitter(node=DeviceKeys.from_seed(os.urandom(64)), challenge=os.urandom(32), invites=invites)


def pump(j: Joiner, a: Admitter) -> tuple[list, list, list[bytes]]:
    """Deliver frames both ways until neither side has anything to send; returns the events
    and every frame that crossed the wire."""
    events_j, events_a, wire = [], [], []
    while True:
        to_a, to_j = j.data_to_send(), a.data_to_send()
        if not to_a and not to_j:
            return events_j, events_a, wire
        wire += to_a + to_j
        for frame in to_a:
            events_a += a.receive(frame)
        for frame in to_j:
            events_j += j.receive(frame)


def test_a_holder_of_the_code_is_asked_about_then_granted() -> None:
    j, a = joiner(), admitter()
    events_j, events_a, _ = pump(j, a)
    assert events_j == []
    assert events_a == [
        JoinRequested(invite_id="02" * 8, device=j.node.public_key, exchange=EXCHANGE, name="phone")
    ]
    assert a.state is JoinState.AWAIT_ANSWER
    a.grant(b"the grant's bytes")
    events_j, _, _ = pump(j, a)
    assert events_j == [Granted(grant=b"the grant's bytes")]
    assert j.closed and a.closed


def test_a_used_code_is_refused_with_the_members_reason() -> None:
    j, a = joiner(), admitter()
    pump(j, a)
    a.refuse("the invite code was already used\n(by phone)")
    events_j, _, _ = pump(j, a)
    assert events_j == [Refused(reason="the invite code was already used (by phone)")]  # one line


def test_a_forged_code_meets_a_decoy_and_learns_nothing() -> None:
    real_j, real_a = joiner(), admitter()
    pump(real_j, real_a)
    forged_j, forged_a = joiner(invite=os.urandom(32)), admitter()
    events_j, events_a, wire = pump(forged_j, forged_a)
    assert events_j == [JoinFailed(code=CloseCode.AUTH_FAILED, reason="the member knows no such invite")]
    assert forged_a.invite_id is None
    assert events_a == [JoinFailed(code=4401, reason="not admitted (another space, or another key epoch)")]
    assert len(wire[1]) == len(real_a._my_hello)  # the decoy JOIN_HELLO looks like a real one
    assert msgpack.unpackb(wire[1])[:2] == [Frame.JOIN_HELLO, PROTOCOL_VERSION]


def test_a_joiner_that_skips_its_proof_is_refused_by_the_admitter() -> None:
    # A JOIN_REQUEST sealed by someone who matched no invite (it skipped the joiner's check).
    a = admitter()
    stranger = joiner(invite=os.urandom(32))
    a.receive(stranger.data_to_send()[0])
    assert a.invite_id is None
    events = a.receive(msgpack.packb([Frame.JOIN_REQUEST, os.urandom(528)]))
    assert events == [
        JoinFailed(code=CloseCode.AUTH_FAILED, reason="no such invite (forged, or of another space)")
    ]


def test_the_joiner_ignores_the_members_sync_hello() -> None:
    j, a = joiner(), admitter()
    sync = SyncSession(
        role=Role.RESPONDER,
        auth_keys=[(0, SpaceKeys.create(os.urandom(32)).auth_key(0))],
        node=a.node,
        name="m",
        challenge=os.urandom(32),
    )
    assert j.receive(sync.data_to_send()[0]) == []  # greeted before the member saw JOIN_HELLO
    _, events_a, _ = pump(j, a)
    assert isinstance(events_a[0], JoinRequested)


def test_someone_who_later_holds_the_used_code_opens_nothing_recorded() -> None:
    j, a = joiner(), admitter()
    *_, wire = pump(j, a)
    a.grant(b"epoch secrets sealed to the joiner")
    grant_frame = a.data_to_send()[0]
    assert j.receive(grant_frame) == [Granted(grant=b"epoch secrets sealed to the joiner")]
    assert b"epoch secrets" not in grant_frame and b"phone" not in b"".join(wire)
    # The invite's auth key and every byte, but no ephemeral secret: the keys do not follow.
    transcript = transcript_hash(wire[0], wire[1])
    for guess in (bytes(32), INVITE):
        keys = Keys.derive(INVITE, guess, transcript, ADMITTER)
        assert FrameSeal(keys.frames).open(msgpack.unpackb(grant_frame)[1]) is None


def test_a_request_with_another_devices_key_fails_its_signature() -> None:
    j, a = joiner(), admitter()
    a.receive(j.data_to_send()[0])
    j.receive(a.data_to_send()[0])
    j.data_to_send()  # the genuine request is dropped; one claiming another device goes instead
    keys = j._mine
    assert keys is not None
    other = DeviceKeys.from_seed(os.urandom(64))
    inner = msgpack.packb([other.public_key, j.node.sign(b"x"), "phone", EXCHANGE])
    events = a.receive(msgpack.packb([Frame.JOIN_REQUEST, seal_auth(keys, j._transcript, inner)]))
    assert events == [JoinFailed(code=CloseCode.AUTH_FAILED, reason="bad device signature")]


def test_an_answer_to_nothing_is_the_drivers_bug() -> None:
    a = admitter()
    with pytest.raises(ValueError, match="no request"):
        a.grant(b"x")


def test_a_forged_answer_fails_its_tag() -> None:
    j, a = joiner(), admitter()
    pump(j, a)
    events = j.receive(msgpack.packb([Frame.JOIN_GRANT, os.urandom(64)]))
    assert events == [JoinFailed(code=CloseCode.BAD_TAG, reason="the member's answer failed its tag")]


def test_an_error_from_the_member_ends_the_join() -> None:
    j = joiner()
    assert j.receive(msgpack.packb([Frame.ERROR, 4429, "too many connections"])) == [
        JoinFailed(code=4429, reason="too many connections")
    ]


@pytest.mark.parametrize("side", ["joiner", "admitter"])
def test_every_frame_outside_the_table_closes(side: str) -> None:
    table = JOINER_TRANSITIONS if side == "joiner" else ADMITTER_TRANSITIONS
    for state in JoinState:
        for frame in Frame:
            if state is JoinState.CLOSED or (state, frame) in table:
                continue
            s = joiner() if side == "joiner" else admitter()
            s.state = state
            events = s.receive(msgpack.packb([frame]))
            assert events and isinstance(events[0], JoinFailed), (state, frame)
            assert events[0].code in (CloseCode.OUT_OF_ORDER, CloseCode.MALFORMED)
            assert s.closed


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (msgpack.packb([Frame.JOIN_HELLO, 2, bytes(32), bytes(32), bytes(16)]), CloseCode.VERSION),
        (
            msgpack.packb([Frame.JOIN_HELLO, PROTOCOL_VERSION, bytes(31), bytes(32), bytes(16)]),
            CloseCode.MALFORMED,
        ),
        (msgpack.packb([Frame.JOIN_HELLO, PROTOCOL_VERSION, bytes(32), bytes(32)]), CloseCode.MALFORMED),
        (
            msgpack.packb([Frame.JOIN_HELLO, PROTOCOL_VERSION, bytes(32), bytes(32), [bytes(16)]]),
            CloseCode.MALFORMED,
        ),
        (b"\x91" + b"\x00" * 70_000, CloseCode.TOO_LARGE),
    ],
)
def test_bad_join_hellos_fail_with_a_specific_code(frame: bytes, code: CloseCode) -> None:
    a = admitter()
    (event,) = a.receive(frame)
    assert isinstance(event, JoinFailed) and event.code is code


def test_only_a_join_hello_opens_a_join() -> None:
    assert is_join_hello(joiner().data_to_send()[0])
    sync = SyncSession(
        role=Role.INITIATOR,
        auth_keys=[(0, INVITE)],
        node=DeviceKeys.from_seed(os.urandom(64)),
        name="n",
        challenge=os.urandom(32),
    )
    assert not is_join_hello(sync.data_to_send()[0])
    assert not is_join_hello(b"\xc1 not msgpack")


@given(st.lists(st.binary(max_size=200), max_size=5))
def test_arbitrary_frames_never_raise(frames: list[bytes]) -> None:
    j, a = joiner(), admitter()
    a.receive(j.data_to_send()[0])
    j.receive(a.data_to_send()[0])
    for frame in frames:
        for side in (j, a):
            events = side.receive(frame)
            assert all(isinstance(e, JoinFailed) for e in events)


@given(
    st.dictionaries(
        st.binary(min_size=8, max_size=8).map(bytes.hex), st.binary(min_size=32, max_size=32), max_size=8
    ).filter(lambda d: len(set(d.values())) == len(d)),  # one key per invite, as fresh secrets give
    st.integers(0, 8),
)
def test_the_admitter_finds_exactly_the_invite_the_joiner_holds(invites: dict[str, bytes], pick: int) -> None:
    held = list(invites.items())
    expected, key = held[pick] if pick < len(held) else (None, os.urandom(32))
    j, a = joiner(invite=key), admitter(invites)
    events_j, events_a, _ = pump(j, a)
    assert a.invite_id == expected
    if expected is None:
        assert [type(e) for e in events_j + events_a] == [JoinFailed, JoinFailed]
    else:
        assert [e.invite_id for e in events_a] == [expected]  # type: ignore[union-attr]
