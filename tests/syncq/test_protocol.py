"""Sans-I/O tests of the sync session: two sessions exchange bytes in memory."""

from __future__ import annotations

import hashlib
import os

import msgpack
import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from syncq.admission import TAGS
from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.handshake import (
    FrameSeal,
    Keys,
    ephemeral_public,
    hello_tag,
    open_auth,
    seal_auth,
    shared_secret,
    signed_text,
    transcript_hash,
)
from syncq.protocol import (
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME,
    PROTOCOL_VERSION,
    REFUSED,
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
NO_COMMON = "peer belongs to another space"


def session(
    role: Role, space: SpaceKeys = SPACE, *, auth_key: bytes | None = None, name: str = "n"
) -> SyncSession:
    return SyncSession(
        role=role,
        auth_keys=[(0, auth_key if auth_key is not None else space.auth_key(0))],
        node=DeviceKeys.from_seed(os.urandom(64)),
        name=name,
        challenge=os.urandom(32),
    )


def tagged(
    auth_keys: list[tuple[int, bytes]], role: Role = Role.INITIATOR, *, admit: object = None
) -> SyncSession:
    """A session whose node knows these epochs (newest first)."""
    return SyncSession(
        role=role,
        auth_keys=auth_keys,
        node=DeviceKeys.from_seed(os.urandom(64)),
        name="n",
        challenge=os.urandom(32),
        **({"admit": admit} if admit is not None else {}),  # type: ignore[arg-type]
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
    assert events_a == [WindowOpen(batch=e.batch) for e in events_b]  # each batch, in order
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
    refused = SessionFailed(code=CloseCode.AUTH_FAILED, reason=NO_COMMON)
    assert events_a == events_b == [refused]  # each side answers with a decoy AUTH, then refuses
    assert a.state is b.state is State.CLOSED


def test_the_peer_learns_it_was_refused_and_no_more() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER, OTHER_SPACE)
    pump(a, b)
    assert (a.close_code, a.close_reason) == (b.close_code, b.close_reason) == (4401, REFUSED)


def stranger_sees(member: SyncSession, hello: bytes) -> tuple[object, ...]:
    """Everything a stranger who sends ``hello`` (then an AUTH of random bytes) sees of
    ``member``: the frames' types and lengths (the AUTH and ERROR are sealed), the close frame."""
    before = member.data_to_send()[0]
    assert member.receive(hello) == []
    answer = member.data_to_send()
    events = member.receive(msgpack.packb([Frame.AUTH, os.urandom(528)]))
    error = member.data_to_send()
    assert len(events) == 1 and isinstance(events[0], SessionFailed)
    seen = (len(before), [(f[:4], len(f)) for f in answer], [len(f) for f in error])
    return (*seen, member.close_code, member.close_reason, events[0].reason)


def test_a_stranger_cannot_tell_another_space_a_bad_tag_another_epoch_or_a_replayed_hello() -> None:
    keys = [(1, b"e" * 32), (0, SPACE.auth_key(0))]
    member = SyncSession(
        role=Role.INITIATOR,
        auth_keys=keys,
        node=DeviceKeys.from_seed(os.urandom(64)),
        name="m",
        challenge=os.urandom(32),
    )
    genuine = member.data_to_send()[0]  # recorded where it was sent, and replayed here
    fields = msgpack.unpackb(genuine)  # and with every tag flipped: a bad tag
    far = [(9, b"9" * 32), (8, b"8" * 32), (7, b"7" * 32), (0, b"z" * 32)]
    strangers = [
        (NO_COMMON, session(Role.INITIATOR, OTHER_SPACE).data_to_send()[0]),
        (NO_COMMON, msgpack.packb([*fields[:4], [t[:-1] + bytes([t[-1] ^ 1]) for t in fields[4]]])),
        (NO_COMMON, tagged(far).data_to_send()[0]),  # no epoch in common
        ("wrong space key", genuine),  # a member of this space: it answers, then cannot open
    ]
    seen = set()
    for detail, frame in strangers:
        b = SyncSession(
            role=Role.RESPONDER,
            auth_keys=keys,
            node=DeviceKeys.from_seed(os.urandom(64)),
            name="b",
            challenge=os.urandom(32),
        )
        *told, logged = stranger_sees(b, frame)
        assert logged == detail  # the detail stays here
        seen.add(tuple(map(repr, told)))
    assert len(seen) == 1  # no count of rotations, no "same space as that HELLO's sender"
    (told,) = seen
    assert told[-1] == repr(REFUSED)


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


# -- an insider: holds auth_key (a relay code, a member's secrets, a removed device's) -------

KEY = SPACE.auth_key(0)


def hello(challenge: bytes, ephemeral: bytes, key: bytes = KEY) -> bytes:
    """A HELLO as anyone holding ``key`` can make it."""
    tags = [hello_tag(key, challenge, ephemeral)] + [os.urandom(16) for _ in range(TAGS - 1)]
    return msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, challenge, ephemeral, tags])


def ephemeral_of(frame: bytes) -> bytes:
    return msgpack.unpackb(frame)[3]


class Insider:
    """In the path between a and b, with the space's auth_key and a node key of its own: it
    passes each HELLO on with its own ephemeral in place of the sender's (re-tagged)."""

    def __init__(self) -> None:
        self.private = os.urandom(32)
        self.node = DeviceKeys.from_seed(os.urandom(64))

    def swap(self, frame: bytes) -> bytes:
        return hello(msgpack.unpackb(frame)[2], ephemeral_public(self.private))

    def keys(
        self, initiator_hello: bytes, responder_hello: bytes, victim_hello: bytes
    ) -> tuple[bytes, Keys, Keys]:
        """The transcript of the side that sent ``victim_hello``, and the keys of both of that
        session's directions (initiator's, responder's), as the insider derives them."""
        transcript = transcript_hash(initiator_hello, responder_hello)
        shared = shared_secret(self.private, ephemeral_of(victim_hello))
        assert shared is not None
        return (
            transcript,
            Keys.derive(KEY, shared, transcript, Role.INITIATOR.value),
            Keys.derive(KEY, shared, transcript, Role.RESPONDER.value),
        )


@pytest.mark.parametrize("auth", ["unchanged", "resealed", "own-signature"])
def test_an_insider_who_swaps_the_ephemerals_is_refused_by_both(auth: str) -> None:
    a, b, m = session(Role.INITIATOR, name="a"), session(Role.RESPONDER, name="b"), Insider()
    (hello_a,), (hello_b,) = a.data_to_send(), b.data_to_send()
    to_b, to_a = m.swap(hello_a), m.swap(hello_b)
    assert a.receive(to_a) == b.receive(to_b) == []  # the tags are good: m holds auth_key
    (auth_a,), (auth_b,) = a.data_to_send(), b.data_to_send()
    t_a, a_sends, b_would_send_a = m.keys(hello_a, to_a, hello_a)  # a's session with "b"
    t_b, a_would_send_b, b_sends = m.keys(to_b, hello_b, hello_b)  # b's session with "a"
    inner_a = open_auth(a_sends, t_a, msgpack.unpackb(auth_a)[1])
    inner_b = open_auth(b_sends, t_b, msgpack.unpackb(auth_b)[1])
    assert inner_a is not None and inner_b is not None  # m reads both AUTHs...
    if auth == "unchanged":
        to_a_auth, to_b_auth = auth_b, auth_a
    elif auth == "resealed":  # ...and seals each for the other side, signatures and all
        to_a_auth = msgpack.packb([Frame.AUTH, seal_auth(b_would_send_a, t_a, inner_b)])
        to_b_auth = msgpack.packb([Frame.AUTH, seal_auth(a_would_send_b, t_b, inner_a)])
    else:  # claims the other's node id, signing each side's own transcript with its own key
        proof_to_a = m.node.sign(signed_text(Role.RESPONDER.value, t_a))
        proof_to_b = m.node.sign(signed_text(Role.INITIATOR.value, t_b))
        claim_b = msgpack.packb([b.node.public_key, proof_to_a, "b", False])
        claim_a = msgpack.packb([a.node.public_key, proof_to_b, "a", False])
        to_a_auth = msgpack.packb([Frame.AUTH, seal_auth(b_would_send_a, t_a, claim_b)])
        to_b_auth = msgpack.packb([Frame.AUTH, seal_auth(a_would_send_b, t_b, claim_a)])
    reason = "wrong space key" if auth == "unchanged" else "bad node signature"
    refused = [SessionFailed(code=CloseCode.AUTH_FAILED, reason=reason)]
    assert a.receive(to_a_auth) == refused  # b signed b's transcript, not a's
    assert b.receive(to_b_auth) == refused
    assert a.peer_id is b.peer_id is None and a.state is b.state is State.CLOSED


def old_key(transcript: bytes, label: bytes) -> bytes:
    """A key as protocol 2 derived it before the ephemerals: from auth_key and the HELLOs only."""
    return HKDF(algorithm=SHA256(), length=32, salt=transcript, info=b"syncq-v2 " + label).derive(KEY)


def test_an_insider_who_records_a_session_opens_nothing_and_forges_nothing() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER)
    wire: dict[Role, list[bytes]] = {Role.INITIATOR: [], Role.RESPONDER: []}
    author = b"A" * 32
    for step in range(4):
        if step == 2:
            a.send_have({author: 7})
            b.send_have({})
        if step == 3:
            a.send_envelopes([(author, 1, b"a sealed envelope")])
        to_b, to_a = a.data_to_send(), b.data_to_send()
        wire[Role.INITIATOR] += to_b
        wire[Role.RESPONDER] += to_a
        for frame in to_b:
            b.receive(frame)
        for frame in to_a:
            a.receive(frame)
    assert a.state is b.state is State.SYNCING
    hello_a, auth_a, *after_a = wire[Role.INITIATOR]
    hello_b, auth_b, *after_b = wire[Role.RESPONDER]
    assert [len(after_a), len(after_b)] == [2, 1]  # a's HAVE and batch; b's HAVE
    # The recorder holds auth_key and every byte; its transcript is the sessions' own.
    transcript = hashlib.sha256(
        b"syncq-auth-v2\x00" + hashlib.sha256(hello_a).digest() + hashlib.sha256(hello_b).digest()
    ).digest()
    for role, auth, after in ((Role.INITIATOR, auth_a, after_a), (Role.RESPONDER, auth_b, after_b)):
        seal = Keys(seal=old_key(transcript, b"auth " + role.value), frames=b"")
        assert open_auth(seal, transcript, msgpack.unpackb(auth)[1]) is None
        frames = FrameSeal(old_key(transcript, b"frames " + role.value))
        assert frames.open(after[0]) is None  # the HAVE stays sealed
    # Nor can it slip in a frame of its own: an ACK, in b's name, for the batch b has not stored.
    forger = FrameSeal(old_key(transcript, b"frames responder"))
    for _ in after_b:
        forger.seal(b"")  # the counter where b's next frame would be
    forged = forger.seal(msgpack.packb([Frame.ACK, 1]))
    assert a.receive(forged) == [
        SessionFailed(
            code=CloseCode.BAD_TAG, reason="a frame failed its tag (forged, lost, reordered or replayed)"
        )
    ]


def test_a_hello_with_another_ephemeral_fails_its_tag() -> None:
    a, b = session(Role.INITIATOR), session(Role.RESPONDER)
    _, version, challenge, _, tag = msgpack.unpackb(a.data_to_send()[0])
    changed = msgpack.packb([Frame.HELLO, version, challenge, ephemeral_public(os.urandom(32)), tag])
    b.receive(changed)
    a.receive(b.data_to_send()[0])
    assert b.receive(a.data_to_send()[0]) == [SessionFailed(code=CloseCode.AUTH_FAILED, reason=NO_COMMON)]


SMALL_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p - 1
]


@pytest.mark.parametrize("point", SMALL_ORDER, ids=lambda p: p[:4].hex())
def test_a_small_order_ephemeral_is_refused(point: bytes) -> None:
    b = session(Role.RESPONDER)
    b.data_to_send()
    events = b.receive(hello(os.urandom(32), point))  # well tagged: only an insider can send it
    assert events == [
        SessionFailed(code=CloseCode.AUTH_FAILED, reason="peer's ephemeral key is a small-order point")
    ]
    assert [msgpack.unpackb(f)[0] for f in b.data_to_send()] == [Frame.ERROR]  # no AUTH
    assert shared_secret(os.urandom(32), point) is None
    stranger = session(Role.RESPONDER)  # badly tagged: the decoy, as for any stranger
    assert stranger.receive(hello(os.urandom(32), point, b"k" * 32)) == []


def test_a_hello_says_nothing_a_stranger_can_link() -> None:
    a = session(Role.INITIATOR, name="alice-laptop")
    (hello,) = a.data_to_send()
    fields = msgpack.unpackb(hello)
    assert fields[:2] == [Frame.HELLO, PROTOCOL_VERSION] and len(fields) == 5
    for secret in (bytes.fromhex(SPACE.space_id), a.node.public_key, b"alice-laptop"):
        assert secret not in hello
    b = session(Role.RESPONDER, name="alice-laptop")
    b.receive(hello)
    (_, auth) = b.data_to_send()
    for secret in (b.node.public_key, b"alice-laptop"):
        assert secret not in auth  # sealed


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
        (msgpack.packb([Frame.HELLO, 2, bytes(32), bytes(32), bytes(16)]), CloseCode.VERSION),
        (
            msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, b"short", bytes(32), [bytes(16)] * 4]),
            CloseCode.MALFORMED,
        ),
        (
            msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, bytes(32), b"short", [bytes(16)] * 4]),
            CloseCode.MALFORMED,
        ),
        (
            msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, bytes(32), [bytes(16)] * 4]),
            CloseCode.MALFORMED,
        ),  # no ephemeral
        (
            msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, bytes(32), bytes(32), bytes(16)]),
            CloseCode.MALFORMED,
        ),  # one tag
        (
            msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, bytes(32), bytes(32), [bytes(16)] * 3]),
            CloseCode.MALFORMED,
        ),
        (
            msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, bytes(32), bytes(32), [bytes(15)] * 4]),
            CloseCode.MALFORMED,
        ),
        (msgpack.packb([Frame.HELLO, PROTOCOL_VERSION]), CloseCode.MALFORMED),
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


# -- the HELLO's tags and the session epoch (PROTOCOL.md, "Sync") ---------------------------


def epoch_key(epoch: int) -> bytes:
    """Every node of these tests derives one auth key per epoch id."""
    return SPACE.auth_key(0) if epoch == 0 else hashlib.sha256(b"epoch %d" % epoch).digest()


def known(*epochs: int) -> list[tuple[int, bytes]]:
    """(epoch, key), newest first, as ``SpaceKeys.ordered`` gives them (here: by id)."""
    return [(e, epoch_key(e)) for e in sorted(epochs, reverse=True)]


@pytest.mark.parametrize("epochs", [(0,), (0, 5), (0, 5, 6, 7, 8, 9)])
def test_every_hello_carries_four_sorted_tags_whatever_its_sender_knows(epochs: tuple[int, ...]) -> None:
    _, _, challenge, ephemeral, tags = msgpack.unpackb(tagged(known(*epochs)).data_to_send()[0])
    assert len(tags) == TAGS and all(len(t) == 16 for t in tags) and tags == sorted(tags)
    real = {hello_tag(epoch_key(e), challenge, ephemeral) for e in (0, 5, 6, 7, 8, 9)} & set(tags)
    assert len(real) == min(len(epochs), 4)  # the 3 newest and epoch 0; the rest are fillers
    newest = sorted(epochs, reverse=True)[:3]
    assert real == {hello_tag(epoch_key(e), challenge, ephemeral) for e in {*newest, 0}}


def meet(
    a_epochs: list[tuple[int, bytes]], b_epochs: list[tuple[int, bytes]]
) -> tuple[SyncSession, SyncSession, list, list]:
    a, b = tagged(a_epochs), tagged(b_epochs, Role.RESPONDER)
    events_a, events_b = pump(a, b)
    return a, b, events_a, events_b


def test_a_member_several_rotations_behind_meets_the_others_on_epoch_0() -> None:
    a, b, events_a, events_b = meet(known(0, 1), known(0, 1, 2, 3, 4))
    assert a.epoch == b.epoch == 0
    assert isinstance(events_a[0], Authenticated) and isinstance(events_b[0], Authenticated)


def test_two_concurrent_rotations_meet_on_the_last_epoch_they_share() -> None:
    a, b, events_a, events_b = meet(known(0, 1, 2, 77), known(0, 1, 2, 99))
    assert a.epoch == b.epoch == 2
    assert [type(e) for e in events_a + events_b] == [Authenticated, Authenticated]


def test_the_session_keys_are_those_of_the_chosen_epoch() -> None:
    # b holds another key under epoch 2's id than a: the tags match on epoch 0 only, and the
    # session speaks it; with epoch 2 agreed and b's key wrong, AUTH would not open.
    a = tagged(known(0, 2))
    b = tagged([(2, b"x" * 32), (0, epoch_key(0))], Role.RESPONDER)
    events_a, events_b = pump(a, b)
    assert a.epoch == b.epoch == 0
    assert [type(e) for e in events_a + events_b] == [Authenticated, Authenticated]


epoch_sets = st.sets(st.integers(1, 12), max_size=6).map(lambda s: known(0, *s))


@given(epoch_sets, epoch_sets)
def test_both_sides_pick_the_newest_epoch_both_tag_lists_share(
    a_epochs: list[tuple[int, bytes]], b_epochs: list[tuple[int, bytes]]
) -> None:
    a, b, events_a, events_b = meet(a_epochs, b_epochs)
    tags_of = lambda epochs: {e for e, _ in epochs[:3]} | {0}  # noqa: E731
    assert a.epoch == b.epoch == max(tags_of(a_epochs) & tags_of(b_epochs))
    assert [type(e) for e in events_a + events_b] == [Authenticated, Authenticated]


@st.composite
def partitioned_epochs(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], int]:
    """A space's epochs with random ids and generations (rotations on both sides of a
    partition make several of one generation), and what two members each know of them."""
    ids = draw(st.lists(st.integers(1, 2**32 - 1), unique=True, max_size=8))
    generation = {0: 0} | {e: draw(st.integers(1, 4)) for e in ids}
    order = sorted(generation, key=lambda e: (generation[e], e), reverse=True)  # newest first
    a = [e for e in order if e == 0 or draw(st.booleans())]
    b = [e for e in order if e == 0 or draw(st.booleans())]
    tags_a, tags_b = {*a[:3], 0}, {*b[:3], 0}
    expected = next(e for e in order if e in tags_a & tags_b)
    return [(e, epoch_key(e)) for e in a], [(e, epoch_key(e)) for e in b], expected


@given(partitioned_epochs())
def test_any_two_tag_sets_make_both_sides_pick_the_same_epoch(
    drawn: tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], int],
) -> None:
    a_epochs, b_epochs, expected = drawn
    a, b, events_a, events_b = meet(a_epochs, b_epochs)
    assert a.epoch == b.epoch == expected
    assert [type(e) for e in events_a + events_b] == [Authenticated, Authenticated]


# -- the device check at AUTH (4410) ----------------------------------------------------------


def test_a_removed_device_is_refused_with_4410_and_told_so() -> None:
    asked: list[bytes] = []

    def admit(device: bytes) -> str | None:
        asked.append(device)
        return "removed from the space by laptop"

    a, b = tagged(known(0), admit=admit), tagged(known(0), Role.RESPONDER)
    events_a, events_b = pump(a, b)
    assert asked == [b.node.public_key]  # judged on the device key the AUTH proved
    assert events_a == [
        SessionFailed(code=CloseCode.NOT_LISTED, reason="device list: removed from the space by laptop")
    ]
    assert events_b[-1] == PeerClosed(code=4410, reason="this device was removed from the space")
    assert (a.close_code, a.close_reason) == (4410, "this device was removed from the space")
    assert a.state is b.state is State.CLOSED


def test_an_unlisted_device_is_told_to_ask_for_an_invite() -> None:
    a = tagged(known(0), admit=lambda device: "not on the space's device list")
    b = tagged(known(0), Role.RESPONDER)
    _, events_b = pump(a, b)
    assert events_b[-1] == PeerClosed(
        code=4410, reason="this device is not on the space's device list yet: ask a member to invite it"
    )


def test_the_device_check_never_sees_a_peer_that_did_not_prove_its_key() -> None:
    asked: list[bytes] = []
    a = tagged(known(0), admit=lambda device: asked.append(device))  # type: ignore[func-returns-value]
    b = tagged([(0, b"k" * 32)], Role.RESPONDER)
    events_a, _ = pump(a, b)
    assert asked == [] and events_a[0].code is CloseCode.AUTH_FAILED  # type: ignore[union-attr]
