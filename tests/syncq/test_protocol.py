"""Sans-I/O tests of the sync session: two sessions exchange bytes in memory."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.protocol import (
    MAX_FRAME_SIZE,
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
        space_id=bytes.fromhex(space.space_id),
        auth_key=auth_key if auth_key is not None else space.auth_key(0),
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
    events = a.receive(auth_a)  # its own AUTH sent back: bound to the other role, so refused
    assert events == [SessionFailed(code=CloseCode.AUTH_FAILED, reason="wrong space key")]


def test_a_stolen_node_id_is_refused() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER)
    impostor = session(Role.RESPONDER)
    b.receive(a.data_to_send()[0])
    hello_b, _ = b.data_to_send()
    a.receive(hello_b)
    # The impostor knows the space key but not b's node key: its signature cannot match b's id.
    fields = msgpack.unpackb(hello_b)
    impostor._peer_hello, impostor._peer_key = a._my_hello, a.node.public_key
    impostor._my_hello = hello_b
    transcript = impostor._transcript(Role.RESPONDER)
    import hashlib
    import hmac

    mac = hmac.new(SPACE.auth_key(0), transcript, hashlib.sha256).digest()
    forged = msgpack.packb([Frame.AUTH, mac, impostor.node.sign(transcript)])
    assert fields[3] == b.node.public_key
    assert a.receive(forged) == [SessionFailed(code=CloseCode.AUTH_FAILED, reason="bad node signature")]


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
        (msgpack.packb([Frame.HELLO, 2, b"", b"", b"", "x", False]), CloseCode.VERSION),
        (msgpack.packb([Frame.HELLO, 1, b"short", b"", b"", "x", False]), CloseCode.MALFORMED),
        (msgpack.packb([Frame.HELLO, 1]), CloseCode.MALFORMED),
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
        [Frame.HAVE, {b"short": 1}],
        [Frame.HAVE, {b"a" * 32: -1}],
        [Frame.HAVE, {b"a" * 32: "1"}],
        [Frame.HAVE, [1, 2]],
        [Frame.ENVELOPES, 1, []],
        [Frame.ENVELOPES, "1", [b"x"]],
        [Frame.ENVELOPES, 1, ["text"]],
        [Frame.ACK, 1],
    ],
)
def test_bad_frames_after_the_handshake(body: list) -> None:
    _, b = connected()
    events = b.receive(msgpack.packb(body))
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
