"""Fuzz targets of the sync session: the frame decoder, each frame's shape checks, and the state
machine fed random mixes of genuine, malformed, forged, replayed and lost frames in any state.

7,500 cases together, derandomized so CI sees the same ones every run (a failure found
once is found again); they take well under a minute on one core.
"""

from __future__ import annotations

import os
import random
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncq.crypto import DeviceKeys, SpaceKeys
from syncq.frames import MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION, Frame, Violation, unpack
from syncq.handshake import ephemeral_public, hello_tag
from syncq.protocol import (
    TRANSITIONS,
    Authenticated,
    BlobKept,
    BlobMissing,
    BlobOffered,
    BlobReceived,
    BlobWanted,
    CloseCode,
    EnvelopesReceived,
    HaveReceived,
    PeerClosed,
    Role,
    SessionFailed,
    State,
    SyncSession,
    WindowOpen,
)

SPACE = SpaceKeys.create(b"\x07" * 32)


def fuzz(examples: int) -> settings:
    """Settings of a fuzz target: a fixed number of cases, the same ones every run."""
    return settings(
        max_examples=examples, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# Which frame each event answers: an event is allowed only where its frame is.
ANSWERS = {
    Authenticated: Frame.AUTH,
    HaveReceived: Frame.HAVE,
    EnvelopesReceived: Frame.ENVELOPES,
    WindowOpen: Frame.ACK,
    PeerClosed: Frame.ERROR,
    BlobWanted: Frame.WANT_BLOB,
    BlobReceived: Frame.BLOB,
    BlobMissing: Frame.NO_BLOB,
    BlobOffered: Frame.KEEP_BLOB,
    BlobKept: Frame.KEPT_BLOB,
}

# Field values near the limits the shape checks draw: right and wrong sizes, signs and types.
# Drawn from a list (cheap for hypothesis to make), with some random bytes and ints besides.
VALUES = [
    *(0, 1, 2, 15, 16, 17, 2**32, 2**40, 2**40 + 1, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63)),
    *(True, False, None, 1.5),
    *(b"", bytes(16), bytes(31), bytes(32), bytes(33), bytes(64), b"\x01" * 32, bytes(16 * 1024 + 16)),
    *("", "x", "n" * 65, "\n\x1b[2J"),
    *([], [0], [0, 1, 2], list(range(17)), [-1], [2**40], [b"x"], [b"x"] * 3, ["x"]),
    *({}, {bytes(32): 1}, {b"short": 1}, {bytes(32): -1}, {"s": 1}, {bytes(32): "1"}),
]
fields = st.one_of(
    st.sampled_from(VALUES), st.binary(max_size=40), st.integers(min_value=-(2**63), max_value=2**64 - 1)
)
messages = st.builds(
    lambda kind, body: [kind, *body],
    st.sampled_from([*Frame, 0, 12, 99, -1, True, "x"]),
    st.lists(fields, max_size=7),
)


def session(role: Role, seed: bytes) -> SyncSession:
    return SyncSession(
        role=role,
        auth_keys=[(0, SPACE.auth_key(0))],
        node=DeviceKeys.from_seed(seed * 64),
        name=role.name.lower(),
        challenge=os.urandom(32),
    )


@fuzz(2500)
@given(st.one_of(st.binary(max_size=200), messages.map(lambda m: msgpack.packb(m, use_bin_type=True))))
def test_the_decoder_returns_a_frame_or_a_violation(frame: bytes) -> None:
    try:
        kind, body = unpack(frame, MAX_HANDSHAKE_FRAME)
    except Violation as v:
        code = v.code
        assert code in (CloseCode.MALFORMED, CloseCode.TOO_LARGE)
        return
    assert isinstance(kind, Frame) and isinstance(body, list)


def connected_pair() -> tuple[SyncSession, SyncSession]:
    a, b = session(Role.INITIATOR, b"a"), session(Role.RESPONDER, b"b")
    for _ in range(3):
        for frame in a.data_to_send():
            b.receive(frame)
        for frame in b.data_to_send():
            a.receive(frame)
    a.send_have({})
    b.send_have({})
    for frame in a.data_to_send():
        b.receive(frame)
    for frame in b.data_to_send():
        a.receive(frame)
    assert a.state is b.state is State.SYNCING
    return a, b


@fuzz(2000)
@given(messages)
def test_each_frame_shape_check_fails_cleanly_or_emits_its_own_event(message: list[Any]) -> None:
    a, b = connected_pair()
    a.send_envelopes([(b"A" * 32, 1, b"x")])  # so that an ACK may be accepted
    a.data_to_send()
    frame = a.encode(message)  # MACed: the body's shape is what is tested
    try:
        body = msgpack.packb(message, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    before = b.state
    events = b.receive(frame)
    check(before, events, body, b)


def check(before: State, events: list[Any], body: bytes, b: SyncSession) -> None:
    """The invariants of one ``receive``: a defined state, and no event the state disallows."""
    assert isinstance(b.state, State)
    if before is State.CLOSED:
        assert events == []
        return
    for event in events:
        if isinstance(event, SessionFailed):
            assert b.state is State.CLOSED and event == events[-1]
            continue
        kind = ANSWERS[type(event)]
        assert (before, kind) in TRANSITIONS, (before, event)
        assert msgpack.unpackb(body, strict_map_key=False)[0] == kind


OPS = ["deliver"] * 4 + ["act"] * 3 + ["junk", "raw", "mac", "mac", "flip", "replay", "drop", "hello"]
# What an insider (or a stranger) may put in a HELLO's ephemeral: a good key, or a small-order point.
EPHEMERALS = [None, bytes(32), (1).to_bytes(32, "little"), b"\xff" * 32]


def made_hello(rng: random.Random) -> bytes:
    """A HELLO of the new shape made by hand: a good or bad tag over any ephemeral."""
    challenge = rng.randbytes(32)
    ephemeral = rng.choice(EPHEMERALS) or ephemeral_public(rng.randbytes(32))
    key = rng.choice([SPACE.auth_key(0), rng.randbytes(32)])
    tags = sorted([hello_tag(key, challenge, ephemeral)] + [rng.randbytes(16) for _ in range(3)])
    return msgpack.packb([Frame.HELLO, PROTOCOL_VERSION, challenge, ephemeral, tags])


ACTS = ["have", "envelopes", "want", "keep", "kept", "error"]


def random_steps(rng: random.Random) -> list[tuple[str, Any]]:
    """Up to 14 steps: genuine frames (some lost, altered or replayed), and made-up ones.

    Drawn from one seed (hypothesis draws the seed): making each step with hypothesis cost
    five times the run of the session itself."""
    steps: list[tuple[str, Any]] = []
    for _ in range(rng.randint(0, 14)):
        op = rng.choice(OPS)
        if op == "deliver":
            steps.append((op, rng.randint(1, 3)))
        elif op == "act":
            steps.append((op, rng.choice(ACTS)))
        elif op == "junk":
            steps.append((op, rng.randbytes(rng.randint(0, 60))))
        elif op == "hello":
            steps.append((op, made_hello(rng)))
        elif op in ("raw", "mac"):
            kind = rng.choice([*Frame, 0, 12, True])
            steps.append((op, [kind, *(rng.choice(VALUES) for _ in range(rng.randint(0, 7)))]))
        else:
            steps.append((op, 0))
    return steps


@fuzz(3000)
@given(st.integers(min_value=0, max_value=2**64))
def test_the_state_machine_never_raises_and_never_accepts_a_bad_mac(seed: int) -> None:
    rng = random.Random(seed)
    a, b = session(Role.INITIATOR, b"a"), session(Role.RESPONDER, b"b")
    queue = start(a, b, rng.choice([0, 1, 2, 3, 3, 3]))  # a's genuine frames to b, in order
    last: bytes | None = None
    for op, arg in random_steps(rng):
        queue += a.data_to_send()
        for frame in b.data_to_send():  # b's side is delivered faithfully
            a.receive(frame)
        if op == "act":
            _act(a, arg)
            continue
        if op == "deliver":
            frames, queue = queue[:arg], queue[arg:]
        elif op == "drop":
            queue = queue[1:]
            continue
        elif op == "flip" and queue:
            frames, queue = [queue[0][:-1] + bytes([queue[0][-1] ^ 1])], queue[1:]
        elif op == "replay" and last is not None:
            frames = [last]
        elif op in ("junk", "hello"):
            frames = [arg]
        elif op in ("raw", "mac"):
            frames = [a.encode(arg) if op == "mac" else msgpack.packb(arg, use_bin_type=True)]
        else:
            continue
        for frame in frames:
            forged = op in ("flip", "replay", "junk", "raw", "hello") and b.authenticated
            before = b.state
            events = b.receive(frame)
            if forged and before is not State.CLOSED:
                assert events == [SessionFailed(code=CloseCode.BAD_TAG, reason=events[0].reason)]
            if not forged and not b.authenticated and events:
                _decoded_check(before, events, frame, b)
            assert isinstance(b.state, State)
            if before is State.CLOSED:
                assert events == []
            last = frame
            _answer(b, events)


def start(a: SyncSession, b: SyncSession, depth: int) -> list[bytes]:
    """Drive the pair faithfully for ``depth`` rounds (3: both SYNCING), so the random steps
    begin in every state; returns a's frames not yet delivered."""
    for _ in range(depth):
        for frame in a.data_to_send():
            _answer(b, b.receive(frame))
        for frame in b.data_to_send():
            events = a.receive(frame)
            if any(isinstance(e, Authenticated) for e in events):
                a.send_have({b"H" * 32: 1})
    return a.data_to_send()


def _decoded_check(before: State, events: list[Any], frame: bytes, b: SyncSession) -> None:
    try:
        msgpack.unpackb(frame, strict_map_key=False)
    except Exception:
        assert all(isinstance(e, SessionFailed) for e in events)
        return
    check(before, events, frame, b)


def _act(a: SyncSession, what: str) -> None:
    """A genuine send by the peer, when its state allows it (a misuse raises ValueError)."""
    try:
        if what == "have":
            a.send_have({b"H" * 32: 2})
        elif what == "envelopes":
            a.send_envelopes([(b"E" * 32, 1, b"sealed")])
        elif what == "want":
            a.want_blob(bytes(32), 100, 0, [0], 1)
        elif what == "keep":
            a.keep_blob(bytes(32), 100, 0)
        elif what == "kept":
            a.kept_blob(bytes(32))
        else:
            a.fail(CloseCode.NORMAL, "bye")
    except ValueError:
        pass


def _answer(b: SyncSession, events: list[Any]) -> None:
    """What the driver does: HAVE after Authenticated, ACK after a batch."""
    for event in events:
        if isinstance(event, Authenticated):
            b.send_have({})
        elif isinstance(event, EnvelopesReceived):
            b.ack(event.batch)
