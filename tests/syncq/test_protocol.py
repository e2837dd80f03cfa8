"""Sans-I/O tests of the sync session: two sessions exchange bytes in memory."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.handshake import Keys, seal_auth, signed_text
from syncq.protocol import (
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME,
    PROTOCOL_VERSION,
    TRANSITIONS,
    WINDOW,
    Authenticated,
    CloseCode,
    EnvelopesReceived,
    Frame,
    HaveReceived,
    PeerClosed,
    Role,
    SessionFailed,
    State,
    SyncSession,
    WindowOpen,
)

SPACE = SpaceKeys.create(b"\x01" * 32)
OTHER_SPACE = SpaceKeys.create(b"\x02" * 32)


def session(
    role: Role, space: SpaceKeys = SPACE, *, auth_key: bytes | None = None, name: str = "n"
) -> SyncSession:
    return SyncSession(
        role=role,
        auth_keys={0: auth_key if auth_key is not None else space.auth_key(0)},
        epoch=0,
        node=DeviceKeys.from_seed(os.urandom(64)),
        name=name,
        challenge=os.urandom(32),
    )


def pump(a: SyncSession, b: SyncSession) -> tuple[list, list]:
    """Deliver frames both ways until neither side has anything to send."""
    events_a, events_b = [], []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return events_a, events_b
        for frame in to_b:
            events_b += b.receive(frame)
        for frame in to_a:
            events_a += a.receive(frame)


def connected() -> tuple[SyncSession, SyncSession]:
    a, b = session(Role.INITIATOR, name="laptop"), session(Role.RESPONDER, name="gpu")
    events_a, events_b = pump(a, b)
    assert events_a == [Authenticated(peer_id=b.node.device_id, peer_name="gpu", peer_relay=False)]
    assert events_b == [Authenticated(peer_id=a.node.device_id, peer_name="laptop", peer_relay=False)]
    a.send_have({b"x" * 32: 3})
    b.send_have({})
    events_a, events_b = pump(a, b)
    assert events_a == [HaveReceived(vv={})]
    assert events_b == [HaveReceived(vv={b"x" * 32: 3})]
    assert a.state is b.state is State.SYNCING
    return a, b


def test_handshake_authenticates_both_ways_and_exchanges_have() -> None:
    a, b = connected()
    assert a.peer_id == b.node.device_id
    assert b.peer_vv == {b"x" * 32: 3}


def test_envelopes_flow_with_a_window_and_acks() -> None:
    a, b = connected()
    author = b"A" * 32
    for i in range(WINDOW):
        assert a.can_send
        a.send_envelopes([(author, i + 1, b"env%d" % i)])
    assert not a.can_send
    with pytest.raises(ValueError, match="window"):
        a.send_envelopes([(author, 9, b"x")])
    events_a, events_b = [], []
    for frame in a.data_to_send():
        events_b += b.receive(frame)
    assert [e.envelopes for e in events_b] == [[b"env%d" % i] for i in range(WINDOW)]
    assert a.peer_vv[author] == WINDOW
    for event in events_b:
        assert isinstance(event, EnvelopesReceived)
        b.ack(event.batch)
    for frame in b.data_to_send():
        events_a += a.receive(frame)
    assert events_a == [WindowOpen()] * WINDOW
    assert a.can_send


def test_peer_vv_advances_only_on_gapless_runs() -> None:
    a, _ = connected()
    author = b"B" * 32
    a.note_peer_has(author, 2)
    assert author not in a.peer_vv
    a.note_peer_has(author, 1)
    a.note_peer_has(author, 2)
    assert a.peer_vv[author] == 2


def test_wrong_space_is_refused_with_4401() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER, OTHER_SPACE)
    events_a, events_b = pump(a, b)
    refused = SessionFailed(code=CloseCode.AUTH_FAILED, reason="peer belongs to another space")
    assert events_a == events_b == [refused]  # each side refuses the other's HELLO
    assert a.state is b.state is State.CLOSED


def test_the_peer_learns_why_it_was_refused() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER, OTHER_SPACE)
    b.receive(a.data_to_send()[0])
    _, error = b.data_to_send()  # its HELLO, then the ERROR saying why
    assert a.receive(error) == [PeerClosed(code=4401, reason="peer belongs to another space")]


def test_wrong_auth_key_is_refused_with_4401() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER, auth_key=b"k" * 32)
    events_a, events_b = pump(a, b)
    failures = [e for e in events_a + events_b if isinstance(e, SessionFailed)]
    assert failures and all(f.code is CloseCode.AUTH_FAILED for f in failures)
    assert not any(isinstance(e, Authenticated) for e in events_a + events_b)


def test_a_reflected_auth_is_refused() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER)
    b.receive(a.data_to_send()[0])
    hello_b, _ = b.data_to_send()
    a.receive(hello_b)
    (auth_a,) = a.data_to_send()
    events = a.receive(auth_a)  # its own AUTH sent back: sealed for the other direction
    assert events == [SessionFailed(code=CloseCode.AUTH_FAILED, reason="wrong space key")]


def test_a_reflected_hello_is_refused() -> None:
    a = session(Role.INITIATOR)
    (hello_a,) = a.data_to_send()
    assert a.receive(hello_a) == [
        SessionFailed(code=CloseCode.AUTH_FAILED, reason="peer sent this node's own HELLO back")
    ]


def test_a_stolen_node_id_is_refused() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER)
    impostor = session(Role.RESPONDER)
    b.receive(a.data_to_send()[0])
    hello_b, _ = b.data_to_send()
    a.receive(hello_b)
    # The impostor knows the space key but not b's node key: it seals an AUTH that claims b's
    # id with its own signature over the same transcript.
    impostor.receive(a._my_hello)  # type: ignore[attr-defined]
    impostor._transcript = a._transcript  # type: ignore[attr-defined]
    keys = Keys.derive(SPACE.auth_key(0), a._transcript, Role.RESPONDER.value)  # type: ignore[attr-defined]
    proof = impostor.node.sign(signed_text(Role.RESPONDER.value, a._transcript))  # type: ignore[attr-defined]
    inner = msgpack.packb([b.node.public_key, proof, "b", False])
    forged = msgpack.packb([Frame.AUTH, seal_auth(keys, a._transcript, inner)])  # type: ignore[attr-defined]
    assert a.receive(forged) == [SessionFailed(code=CloseCode.AUTH_FAILED, reason="bad node signature")]


def test_a_hello_says_nothing_a_stranger_can_link() -> None:
    a = session(Role.INITIATOR, name="alice-laptop")
    (hello,) = a.data_to_send()
    fields = msgpack.unpackb(hello)
    assert fields[:2] == [Frame.HELLO, PROTOCOL_VERSION] and len(fields) == 4
    for secret in (bytes.fromhex(SPACE.space_id), a.node.public_key, b"alice-laptop"):
        assert secret not in hello
    b = session(Role.RESPONDER, name="alice-laptop")
    b.receive(hello)
    (_, auth) = b.data_to_send()
    for secret in (b.node.public_key, b"alice-laptop"):
        assert secret not in auth  # sealed


def test_a_peer_at_another_epoch_is_told_so() -> None:
    both = {0: SPACE.auth_key(0), 1: b"e" * 32}
    a = SyncSession(
        role=Role.INITIATOR,
        auth_keys=both,
        epoch=1,
        node=DeviceKeys.from_seed(os.urandom(64)),
        name="new",
        challenge=os.urandom(32),
    )
    b = session(Role.RESPONDER)
    events_a, events_b = pump(a, b)
    assert events_a == [
        SessionFailed(code=CloseCode.AUTH_FAILED, reason="peer is at key epoch 0, this node at 1")
    ]
    assert events_b == [SessionFailed(code=CloseCode.AUTH_FAILED, reason="peer belongs to another space")]


def test_frames_after_auth_need_their_mac() -> None:
    a, b = connected()
    a.send_envelopes([(b"A" * 32, 1, b"one")])
    a.data_to_send()  # lost: the forger sends its own frame in its place
    forged = msgpack.packb([Frame.HAVE, {b"A" * 32: 10**6}, False]) + bytes(16)
    assert b.receive(forged)[0].code is CloseCode.BAD_TAG  # type: ignore[union-attr]
    assert b.state is State.CLOSED
    _, b = connected()
    assert b.receive(msgpack.packb([Frame.ACK, 1]))[0].code is CloseCode.BAD_TAG  # type: ignore[union-attr]


@pytest.mark.parametrize("fault", ["replay", "drop", "reorder", "flip"])
def test_a_replayed_dropped_reordered_or_altered_frame_closes(fault: str) -> None:
    a, b = connected()
    for i in range(3):
        a.send_envelopes([(b"A" * 32, i + 1, b"env%d" % i)])
    first, second, third = a.data_to_send()
    assert isinstance(b.receive(first)[0], EnvelopesReceived)
    sequence = {
        "replay": [first],
        "drop": [third],
        "reorder": [third, second],
        "flip": [second[:-1] + bytes([second[-1] ^ 1])],
    }[fault]
    events = [e for frame in sequence for e in b.receive(frame)]
    assert events == [
        SessionFailed(
            code=CloseCode.BAD_TAG, reason="a frame failed its tag (forged, lost, reordered or replayed)"
        )
    ]
    assert a.receive(b.data_to_send()[-1]) == [
        PeerClosed(code=4412, reason="a frame failed its tag (forged, lost, reordered or replayed)")
    ]


def test_a_long_version_vector_goes_in_small_parts() -> None:
    a, b = pump_to_auth()
    vv = {i.to_bytes(32, "big"): i + 1 for i in range(2500)}
    a.send_have(vv)
    parts = a.data_to_send()
    assert len(parts) == 3 and all(len(p) <= MAX_HANDSHAKE_FRAME for p in parts)
    events = [e for p in parts for e in b.receive(p)]
    assert events == [HaveReceived(vv=vv)]
    assert b.state is State.SYNCING


def test_a_stranger_cannot_send_more_than_64_kib() -> None:
    s = session(Role.RESPONDER)
    events = s.receive(b"\x91" + b"\x00" * MAX_HANDSHAKE_FRAME)
    assert events[0].code is CloseCode.TOO_LARGE  # type: ignore[union-attr]


def pump_to_auth() -> tuple[SyncSession, SyncSession]:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER)
    pump(a, b)
    assert a.state is b.state is State.AWAIT_HAVE
    return a, b


def test_every_transition_of_the_table() -> None:
    for (state, _), following in TRANSITIONS.items():
        assert following in (State.AWAIT_AUTH, State.AWAIT_HAVE, State.SYNCING, State.CLOSED)
        assert state is not State.CLOSED
    pairs = {(s, f) for s in State for f in Frame}
    refused = pairs - set(TRANSITIONS)
    for state, frame in refused:
        if state is State.CLOSED:
            continue
        s = session(Role.INITIATOR)
        s.state = state
        events = s.receive(msgpack.packb([frame]))
        assert events and isinstance(events[0], SessionFailed)
        assert events[0].code in (CloseCode.OUT_OF_ORDER, CloseCode.MALFORMED)
        assert s.state is State.CLOSED


def test_nothing_but_hello_before_auth() -> None:
    s = session(Role.RESPONDER)
    s.data_to_send()
    events = s.receive(msgpack.packb([Frame.ENVELOPES, 1, [b"x"]]))
    assert events == [
        SessionFailed(code=CloseCode.OUT_OF_ORDER, reason="ENVELOPES not allowed in await-hello")
    ]
    assert msgpack.unpackb(s.data_to_send()[0])[0] == Frame.ERROR
    assert s.receive(msgpack.packb([Frame.HELLO])) == []  # closed: ignores everything


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1garbage", CloseCode.MALFORMED),
        ("text", CloseCode.MALFORMED),
        (msgpack.packb({"type": 1}), CloseCode.MALFORMED),
        (msgpack.packb([99]), CloseCode.MALFORMED),
        (msgpack.packb([True]), CloseCode.MALFORMED),
        (msgpack.packb([Frame.HELLO, 1, b"", b"", b"", "x", False]), CloseCode.VERSION),
        (msgpack.packb([Frame.HELLO, 2, b"short", bytes(16)]), CloseCode.MALFORMED),
        (msgpack.packb([Frame.HELLO, 2, bytes(32), bytes(16)]), CloseCode.AUTH_FAILED),
        (msgpack.packb([Frame.HELLO, 2]), CloseCode.MALFORMED),
        (msgpack.packb([Frame.HELLO]), CloseCode.VERSION),
        (b"\x00" * (MAX_FRAME_SIZE + 1), CloseCode.TOO_LARGE),
    ],
)
def test_bad_frames_fail_the_session_with_a_specific_code(frame: bytes, code: CloseCode) -> None:
    s = session(Role.RESPONDER)
    events = s.receive(frame)  # type: ignore[arg-type]
    assert len(events) == 1
    assert isinstance(events[0], SessionFailed)
    assert events[0].code is code
    assert s.state is State.CLOSED


@pytest.mark.parametrize(
    "body",
    [
        [Frame.HAVE, {}, False],
        [Frame.ENVELOPES, 1, []],
        [Frame.ENVELOPES, "1", [b"x"]],
        [Frame.ENVELOPES, 1, ["text"]],
        [Frame.ACK, 1],
    ],
)
def test_bad_frames_after_the_handshake(body: list) -> None:
    a, b = connected()
    events = b.receive(a.encode(body))  # well MACed, badly shaped
    assert len(events) == 1
    assert isinstance(events[0], SessionFailed)
    assert b.state is State.CLOSED


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(frame: bytes) -> None:
    s = session(Role.RESPONDER)
    events = s.receive(frame)
    assert all(isinstance(e, SessionFailed) for e in events)


@given(st.lists(st.binary(max_size=80), max_size=6))
def test_arbitrary_frames_after_the_handshake_never_raise(frames: list[bytes]) -> None:
    _, b = connected()
    for frame in frames:
        b.receive(frame)
