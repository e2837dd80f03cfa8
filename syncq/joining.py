"""The join handshake as two pure state machines: the ``Joiner`` (holds a one-time invite code)
and the ``Admitter`` (a member's node) (PROTOCOL.md, "Joining").

The shape of ``syncq.protocol``: feed each received websocket message to ``receive(frame)``, get
events back, send what ``data_to_send()`` returns; neither side raises for the peer's fault.
Transitions, one table each (h11's habit)::

    Joiner     AWAIT_HELLO    HELLO (a node greets every inbound connection with its sync HELLO
                                     before it knows this one is a join)     AWAIT_HELLO, ignored
    Joiner     AWAIT_HELLO    JOIN_HELLO (tag under the invite key)  AWAIT_ANSWER  send JOIN_REQUEST
    Joiner     AWAIT_ANSWER   JOIN_GRANT                             CLOSED        emit Granted
    Joiner     AWAIT_ANSWER   JOIN_REFUSED                           CLOSED        emit Refused
    Admitter   AWAIT_HELLO    JOIN_HELLO                             AWAIT_REQUEST send JOIN_HELLO
    Admitter   AWAIT_REQUEST  JOIN_REQUEST (opens, signed)           AWAIT_ANSWER  emit JoinRequested;
                                                                                   driver: grant/refuse
    either     any open       ERROR                                  CLOSED        emit JoinFailed
    either     any            anything else                          CLOSED        emit JoinFailed (4409)

It reuses the sync handshake's primitives (``syncq.handshake``) with the invite's **auth key**
in place of a space's: the JOIN_HELLO tag ``HMAC(invite_auth, "syncq-join-v1" || challenge ||
ephemeral)[:16]``, the transcript of both JOIN_HELLOs, X25519 of the two ephemerals, and keys
per direction from HKDF over both. So the code's holder proves it holds the code (its tag, and
a JOIN_REQUEST that opens), the member proves it knows the invite (its tag: only members hold
invite records, in the encrypted log), and the grant, the space's secrets sealed once more to
the joiner's X25519 key, travels sealed under a key nobody who recorded the wire can derive,
not even a later holder of the used code. A member that knows no such invite answers with a
JOIN_HELLO of the same size under a decoy tag: a forged code and a code of another space look
alike, to the joiner and to a scanner.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncq import frames as fr
from syncq.admission import REFUSED, sealed_fields
from syncq.crypto import DeviceKeys, verify_signature
from syncq.frames import MAX_HANDSHAKE_FRAME, MAX_NAME, PROTOCOL_VERSION, CloseCode, Frame, Violation
from syncq.handshake import (
    EPHEMERAL_SIZE,
    HELLO_TAG_SIZE,
    FrameSeal,
    Keys,
    decoy_key,
    ephemeral_private,
    ephemeral_public,
    open_auth,
    seal_auth,
    shared_secret,
    transcript_hash,
)

CHALLENGE_SIZE = 32
MAX_GRANT = 1024 * 1024  # a JOIN_GRANT's limit: epoch secrets, the device list's chain
MAX_REASON = 200
JOINER, ADMITTER = b"initiator", b"responder"  # the roles bound into the keys


class JoinState(enum.Enum):
    """Where one side of a join handshake is."""

    AWAIT_HELLO = "await-hello"
    AWAIT_REQUEST = "await-request"  # the admitter
    AWAIT_ANSWER = "await-answer"  # the joiner waits for the grant; the admitter for its driver
    CLOSED = "closed"


JOINER_TRANSITIONS: Mapping[tuple[JoinState, Frame], JoinState] = {
    (JoinState.AWAIT_HELLO, Frame.HELLO): JoinState.AWAIT_HELLO,
    (JoinState.AWAIT_HELLO, Frame.JOIN_HELLO): JoinState.AWAIT_ANSWER,
    (JoinState.AWAIT_ANSWER, Frame.JOIN_GRANT): JoinState.CLOSED,
    (JoinState.AWAIT_ANSWER, Frame.JOIN_REFUSED): JoinState.CLOSED,
    (JoinState.AWAIT_HELLO, Frame.ERROR): JoinState.CLOSED,
    (JoinState.AWAIT_ANSWER, Frame.ERROR): JoinState.CLOSED,
}
ADMITTER_TRANSITIONS: Mapping[tuple[JoinState, Frame], JoinState] = {
    (JoinState.AWAIT_HELLO, Frame.JOIN_HELLO): JoinState.AWAIT_REQUEST,
    (JoinState.AWAIT_REQUEST, Frame.JOIN_REQUEST): JoinState.AWAIT_ANSWER,
    (JoinState.AWAIT_HELLO, Frame.ERROR): JoinState.CLOSED,
    (JoinState.AWAIT_REQUEST, Frame.ERROR): JoinState.CLOSED,
    (JoinState.AWAIT_ANSWER, Frame.ERROR): JoinState.CLOSED,
}


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRequested:
    """(Admitter) the joiner proved it holds the code of ``invite_id`` and its device key: the
    driver calls ``Space.admit`` and answers ``grant`` or ``refuse``."""

    invite_id: str
    device: bytes
    exchange: bytes
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Granted:
    """(Joiner) the member admitted this device: ``grant`` is ``grant_to_wire``'s bytes."""

    grant: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """(Joiner) the member knows the code and refused it (used, expired, revoked): one line."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinFailed:
    """The handshake ended without an answer: the peer broke the protocol, refused, or (4401 at
    the joiner) knows no such invite, so the code is forged or of another space."""

    code: int
    reason: str


JoinEvent = JoinRequested | Granted | Refused | JoinFailed


# -- the cryptography ------------------------------------------------------------------------


def join_tag(invite_auth: bytes, challenge: bytes, ephemeral: bytes) -> bytes:
    """A JOIN_HELLO's proof that its sender knows the invite."""
    message = b"syncq-join-v1" + challenge + ephemeral
    return hmac.new(invite_auth, message, hashlib.sha256).digest()[:HELLO_TAG_SIZE]


def decoy_tag(signing_seed: bytes, challenge: bytes) -> bytes:
    """What an admitter that knows no such invite tags its JOIN_HELLO with."""
    return hmac.new(signing_seed, b"syncq-join-decoy" + challenge, hashlib.sha256).digest()[:HELLO_TAG_SIZE]


def find_invite(invites: Mapping[str, bytes], challenge: bytes, ephemeral: bytes, tag: bytes) -> str | None:
    """The id of the invite whose auth key made ``tag``, or None. Every key is checked, each in
    constant time, so the time taken says nothing of which matched, or whether one did."""
    found = None
    for invite_id, key in sorted(invites.items()):
        if hmac.compare_digest(join_tag(key, challenge, ephemeral), tag) and found is None:
            found = invite_id
    return found


def signed_request(transcript: bytes) -> bytes:
    """What the joiner signs with its new device key."""
    return b"syncq-join-v1-sig\x00" + transcript


def is_join_hello(frame: bytes) -> bool:
    """Whether an inbound connection's first message opens a join handshake (the node hands
    the connection to an ``Admitter``). Never raises."""
    try:
        kind, _ = fr.unpack(frame, MAX_HANDSHAKE_FRAME)
    except Violation:
        return False
    return kind is Frame.JOIN_HELLO


def _hello(challenge: bytes, ephemeral: bytes, tag: bytes) -> bytes:
    return fr.pack([Frame.JOIN_HELLO, PROTOCOL_VERSION, challenge, ephemeral, tag])


def _hello_fields(body: list[Any]) -> tuple[bytes, bytes, bytes]:
    if not body or body[0] != PROTOCOL_VERSION:
        version = body[0] if body and fr.whole(body[0]) else "?"
        raise Violation(CloseCode.VERSION, f"peer speaks protocol {version}, not {PROTOCOL_VERSION}")
    fr.shape(body, 4)
    _, challenge, ephemeral, tag = body
    fr.check_bytes(challenge, CHALLENGE_SIZE, "challenge")
    fr.check_bytes(ephemeral, EPHEMERAL_SIZE, "ephemeral key")
    fr.check_bytes(tag, HELLO_TAG_SIZE, "join tag")
    return challenge, ephemeral, tag


def _sealed(body: list[Any]) -> bytes:
    fr.shape(body, 1)
    (sealed,) = body
    if not isinstance(sealed, bytes):
        raise Violation(CloseCode.MALFORMED, "a sealed field must be bytes")
    return sealed


# -- the two sides ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Side:
    """What both sides share: the outgoing queue, the ERROR, the frame loop."""

    node: DeviceKeys
    challenge: bytes
    state: JoinState = JoinState.AWAIT_HELLO
    close_code: int | None = None
    close_reason: str = ""
    _outgoing: list[bytes] = field(default_factory=list)
    _my_hello: bytes = b""
    _transcript: bytes = b""
    _mine: Keys | None = None
    _theirs: Keys | None = None

    def data_to_send(self) -> list[bytes]:
        """Frames queued since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def fail(self, code: CloseCode, reason: str, *, told: str | None = None) -> JoinFailed:
        """End the handshake from this side: queue an ERROR (``told``, else ``reason``)."""
        if self.state is not JoinState.CLOSED:
            told = reason if told is None else told
            self._outgoing.append(fr.pack([Frame.ERROR, int(code), told[:MAX_REASON]]))
            self.state = JoinState.CLOSED
            self.close_code, self.close_reason = code, told
        return JoinFailed(code=code, reason=reason)

    def receive(self, frame: bytes) -> list[JoinEvent]:
        """Process one received websocket message. Never raises for the peer's fault."""
        if self.state is JoinState.CLOSED:
            return []
        try:
            kind, body = fr.unpack(frame, self._limit())
            following = self._table().get((self.state, kind))
            if following is None:
                raise Violation(CloseCode.OUT_OF_ORDER, f"{kind.name} not allowed in {self.state.value}")
            events = self._handle(kind, body, frame)
        except Violation as v:
            return [self.fail(v.code, str(v), told=v.told)]
        if not self.closed:  # a handler may have closed it (an ERROR, an answer)
            self.state = following
        return events

    @property
    def closed(self) -> bool:
        """Whether the handshake is over (answered, failed or closed by the peer)."""
        return self.state is JoinState.CLOSED

    def _limit(self) -> int:
        return MAX_HANDSHAKE_FRAME

    def _table(self) -> Mapping[tuple[JoinState, Frame], JoinState]:
        raise NotImplementedError

    def _handle(self, kind: Frame, body: list[Any], frame: bytes) -> list[JoinEvent]:
        raise NotImplementedError

    def _derive(
        self, key: bytes, peer_ephemeral: bytes, joiner_hello: bytes, admitter_hello: bytes, me: bytes
    ) -> bool:
        """Both directions' keys (``me``: this side's role); False for a small-order ephemeral."""
        shared = shared_secret(ephemeral_private(self.node.signing_seed, self.challenge), peer_ephemeral)
        self._transcript = transcript_hash(joiner_hello, admitter_hello)
        them = ADMITTER if me == JOINER else JOINER
        self._mine = Keys.derive(key, shared or bytes(32), self._transcript, me)
        self._theirs = Keys.derive(key, shared or bytes(32), self._transcript, them)
        return shared is not None

    def _closed_by_peer(self, body: list[Any]) -> list[JoinEvent]:
        fr.shape(body, 2)
        code, reason = body
        self.state = JoinState.CLOSED
        self.close_code = code if fr.whole(code) else CloseCode.MALFORMED
        self.close_reason = reason[:MAX_REASON] if isinstance(reason, str) else ""
        return [JoinFailed(code=self.close_code, reason=self.close_reason)]


@dataclass(slots=True)
class Joiner(_Side):
    """The device that holds an invite code: it proves it, sends its device key, X25519 key and
    name, and gets a ``Granted`` or a ``Refused``. Raises ``ValueError`` for a bad argument."""

    invite_auth: bytes = b""
    exchange: bytes = b""
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.challenge) != CHALLENGE_SIZE or len(self.invite_auth) != 32 or len(self.exchange) != 32:
            raise ValueError("a challenge, an invite auth key and an X25519 key are 32 bytes each")
        ephemeral = ephemeral_public(ephemeral_private(self.node.signing_seed, self.challenge))
        self._my_hello = _hello(
            self.challenge, ephemeral, join_tag(self.invite_auth, self.challenge, ephemeral)
        )
        self._outgoing.append(self._my_hello)

    def _limit(self) -> int:
        return MAX_GRANT if self.state is JoinState.AWAIT_ANSWER else MAX_HANDSHAKE_FRAME

    def _table(self) -> Mapping[tuple[JoinState, Frame], JoinState]:
        return JOINER_TRANSITIONS

    def _handle(self, kind: Frame, body: list[Any], frame: bytes) -> list[JoinEvent]:
        if kind is Frame.HELLO:
            return []  # the member's sync greeting, sent before it saw this JOIN_HELLO
        if kind is Frame.ERROR:
            return self._closed_by_peer(body)
        if kind is Frame.JOIN_HELLO:
            return self._on_hello(body, frame)
        return self._on_answer(kind, _sealed(body))

    def _on_hello(self, body: list[Any], frame: bytes) -> list[JoinEvent]:
        challenge, ephemeral, tag = _hello_fields(body)
        good = hmac.compare_digest(join_tag(self.invite_auth, challenge, ephemeral), tag)
        if not good or challenge == self.challenge:
            raise Violation(CloseCode.AUTH_FAILED, "the member knows no such invite", told=REFUSED)
        if not self._derive(self.invite_auth, ephemeral, self._my_hello, frame, JOINER):
            raise Violation(CloseCode.AUTH_FAILED, "the member's ephemeral key is a small-order point")
        assert self._mine is not None
        proof = self.node.sign(signed_request(self._transcript))
        inner = fr.pack([self.node.public_key, proof, self.name[:MAX_NAME], self.exchange])
        self._outgoing.append(fr.pack([Frame.JOIN_REQUEST, seal_auth(self._mine, self._transcript, inner)]))
        return []

    def _on_answer(self, kind: Frame, sealed: bytes) -> list[JoinEvent]:
        assert self._theirs is not None
        body = FrameSeal(self._theirs.frames).open(sealed)
        if body is None:
            raise Violation(CloseCode.BAD_TAG, "the member's answer failed its tag")
        if kind is Frame.JOIN_GRANT:
            return [Granted(grant=body)]
        reason = body.decode("utf-8", "replace")[:MAX_REASON]
        return [Refused(reason=reason)]


@dataclass(slots=True)
class Admitter(_Side):
    """A member's side: finds the invite among ``invites`` (invite id hex -> auth key, every
    invite ever made, so a used code gets a clear refusal), checks the joiner's proof and
    signature, emits ``JoinRequested``; its driver then calls ``grant`` or ``refuse``."""

    invites: Mapping[str, bytes] = field(default_factory=dict)
    invite_id: str | None = None
    _request: JoinRequested | None = None

    def __post_init__(self) -> None:
        if len(self.challenge) != CHALLENGE_SIZE:
            raise ValueError("a challenge is 32 random bytes")

    def _table(self) -> Mapping[tuple[JoinState, Frame], JoinState]:
        return ADMITTER_TRANSITIONS

    def grant(self, grant: bytes) -> None:
        """Send the grant (``grant_to_wire``'s bytes), sealed; the handshake ends."""
        self._answer(Frame.JOIN_GRANT, grant)

    def refuse(self, reason: str) -> None:
        """Tell the joiner why (one line, at most 200 characters), sealed; the handshake ends."""
        self._answer(Frame.JOIN_REFUSED, " ".join(reason.split())[:MAX_REASON].encode())

    def _answer(self, kind: Frame, body: bytes) -> None:
        if self.state is not JoinState.AWAIT_ANSWER or self._mine is None:
            raise ValueError(f"no request to answer in state {self.state.value}")
        self._outgoing.append(fr.pack([kind, FrameSeal(self._mine.frames).seal(body)]))
        self.state = JoinState.CLOSED

    def _handle(self, kind: Frame, body: list[Any], frame: bytes) -> list[JoinEvent]:
        if kind is Frame.ERROR:
            return self._closed_by_peer(body)
        if kind is Frame.JOIN_HELLO:
            return self._on_hello(body, frame)
        return self._on_request(_sealed(body))

    def _on_hello(self, body: list[Any], frame: bytes) -> list[JoinEvent]:
        challenge, ephemeral, tag = _hello_fields(body)
        self.invite_id = find_invite(self.invites, challenge, ephemeral, tag)
        if challenge == self.challenge:
            raise Violation(CloseCode.AUTH_FAILED, "peer sent this node's own JOIN_HELLO back")
        seed = self.node.signing_seed
        mine = ephemeral_public(ephemeral_private(seed, self.challenge))
        if self.invite_id is None:  # answered all the same: a scanner learns nothing
            key, tag_out = decoy_key(seed, self.challenge), decoy_tag(seed, self.challenge)
        else:
            key = self.invites[self.invite_id]
            tag_out = join_tag(key, self.challenge, mine)
        self._my_hello = _hello(self.challenge, mine, tag_out)
        self._outgoing.append(self._my_hello)
        if not self._derive(key, ephemeral, frame, self._my_hello, ADMITTER) and self.invite_id is not None:
            raise Violation(CloseCode.AUTH_FAILED, "the joiner's ephemeral key is a small-order point")
        return []

    def _on_request(self, sealed: bytes) -> list[JoinEvent]:
        assert self._theirs is not None
        inner = open_auth(self._theirs, self._transcript, sealed)
        if self.invite_id is None or inner is None:
            why = (
                "no such invite (forged, or of another space)"
                if self.invite_id is None
                else "bad JOIN_REQUEST"
            )
            raise Violation(CloseCode.AUTH_FAILED, why, told=REFUSED)
        device, signature, name, exchange = _request_fields(inner)
        if not verify_signature(device, signature, signed_request(self._transcript)):
            raise Violation(CloseCode.AUTH_FAILED, "bad device signature")
        self._request = JoinRequested(invite_id=self.invite_id, device=device, exchange=exchange, name=name)
        return [self._request]


def _request_fields(inner: bytes) -> tuple[bytes, bytes, str, bytes]:
    """The device key, signature, name and X25519 key sealed in a JOIN_REQUEST."""
    device, signature, name, exchange = sealed_fields(inner, "JOIN_REQUEST", 4)
    fr.check_bytes(device, 32, "device key")
    fr.check_bytes(signature, 64, "signature")
    fr.check_bytes(exchange, 32, "X25519 key")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise Violation(CloseCode.MALFORMED, "bad device name")
    return device, signature, name, exchange


__all__: Sequence[str] = [
    "ADMITTER_TRANSITIONS",
    "JOINER_TRANSITIONS",
    "Admitter",
    "Granted",
    "JoinEvent",
    "JoinFailed",
    "JoinRequested",
    "JoinState",
    "Joiner",
    "Refused",
    "find_invite",
    "is_join_hello",
]
