"""The sync protocol as a pure state machine (PROTOCOL.md, "Sync").

``SyncSession`` never touches a socket (python-websockets' shape): the driver in ``syncq.node``
feeds it each received websocket message with ``receive(frame)``, gets back a list of events,
and sends whatever ``data_to_send()`` returns. The session never raises for the peer's fault:
it records why, queues an ERROR frame, moves to CLOSED and emits ``SessionFailed`` with the
websocket close code to use.

Every state transition lives in ``TRANSITIONS`` (h11's habit)::

    state           frame received          next state      and then
    AWAIT_HELLO     HELLO (valid)           AWAIT_AUTH      send AUTH
    AWAIT_AUTH      AUTH (valid)            AWAIT_HAVE      emit Authenticated; driver sends HAVE
    AWAIT_HAVE      HAVE                    SYNCING         emit HaveReceived
    SYNCING         ENVELOPES               SYNCING         emit EnvelopesReceived; driver ACKs
    SYNCING         ACK                     SYNCING         emit WindowOpen
    SYNCING         WANT_BLOB               SYNCING         emit BlobWanted; driver sends BLOB/NO_BLOB
    SYNCING         BLOB                    SYNCING         emit BlobReceived; driver checks the tag
    SYNCING         NO_BLOB                 SYNCING         emit BlobMissing
    SYNCING         KEEP_BLOB               SYNCING         emit BlobOffered; a relay fetches it
    SYNCING         KEPT_BLOB               SYNCING         emit BlobKept; the member stops asking
    any open        ERROR                   CLOSED          emit PeerClosed
    any             anything else           CLOSED          emit SessionFailed (4409)

Admission: both sides prove knowledge of the space's ``auth_key`` with an HMAC over the
transcript of both HELLOs (bound to their role, so a reply cannot be reflected) and sign the
same transcript with their node key, so a node id cannot be claimed by another member. Macs are
compared in constant time.

Flow control: at most ``WINDOW`` ENVELOPES batches are unacknowledged at once, and a batch is
acknowledged only after the receiver has stored it, so a 100k backlog never sits in memory and
an ACK means "durable here".
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from syncq.blobs import ID_SIZE, RELAY_TAG_SIZE, chunk_count, chunk_length
from syncq.crypto import MAX_ENVELOPE_SIZE, TAG_SIZE, DeviceKeys, verify_signature
from syncq.ids import DeviceId

PROTOCOL_VERSION = 1
MAX_FRAME_SIZE = 8 * 1024 * 1024  # websocket max_size; ENVELOPES batches stay below it
MAX_BATCH_ENVELOPES = 1000
MAX_BATCH_BYTES = 2 * 1024 * 1024  # what a sender puts in one batch
MAX_AUTHORS = 100_000
MAX_NAME = 64
WINDOW = 4
CHALLENGE_SIZE = 32
MAX_WANT = 16  # chunk indices per WANT_BLOB / NO_BLOB
MAX_HOPS = 3  # how far a WANT_BLOB may travel through nodes that lack the blob
MAX_BLOB_BYTES = 1 << 40  # what the wire admits; each node refuses more than its own blob_limit


class Frame(enum.IntEnum):
    """Frame types: the first element of every msgpack array on the wire."""

    HELLO = 1
    AUTH = 2
    HAVE = 3
    ENVELOPES = 4
    ACK = 5
    ERROR = 6
    WANT_BLOB = 7
    BLOB = 8
    NO_BLOB = 9
    KEEP_BLOB = 10
    KEPT_BLOB = 11


class CloseCode(enum.IntEnum):
    """Websocket close codes a session fails with."""

    NORMAL = 1000
    MALFORMED = 4400  # not msgpack, unknown type, wrong shape
    AUTH_FAILED = 4401  # wrong space, bad mac or signature: not one of us
    BAD_ENVELOPE = 4403  # an envelope failed verification
    TIMEOUT = 4408  # the handshake did not finish in time (driver)
    OUT_OF_ORDER = 4409  # a frame the current state does not accept
    TOO_LARGE = 4413  # a frame or a field over its limit
    VERSION = 4426  # another protocol version
    UNAVAILABLE = 4503  # local storage failed: nothing acknowledged (driver)


class Role(enum.Enum):
    """Who opened the connection: it is bound into the transcript."""

    INITIATOR = b"initiator"
    RESPONDER = b"responder"


class State(enum.Enum):
    """Session states, in order."""

    AWAIT_HELLO = "await-hello"
    AWAIT_AUTH = "await-auth"
    AWAIT_HAVE = "await-have"
    SYNCING = "syncing"
    CLOSED = "closed"


TRANSITIONS: Mapping[tuple[State, Frame], State] = {
    (State.AWAIT_HELLO, Frame.HELLO): State.AWAIT_AUTH,
    (State.AWAIT_AUTH, Frame.AUTH): State.AWAIT_HAVE,
    (State.AWAIT_HAVE, Frame.HAVE): State.SYNCING,
    (State.SYNCING, Frame.ENVELOPES): State.SYNCING,
    (State.SYNCING, Frame.ACK): State.SYNCING,
    (State.SYNCING, Frame.WANT_BLOB): State.SYNCING,
    (State.SYNCING, Frame.BLOB): State.SYNCING,
    (State.SYNCING, Frame.NO_BLOB): State.SYNCING,
    (State.SYNCING, Frame.KEEP_BLOB): State.SYNCING,
    (State.SYNCING, Frame.KEPT_BLOB): State.SYNCING,
    (State.AWAIT_HELLO, Frame.ERROR): State.CLOSED,
    (State.AWAIT_AUTH, Frame.ERROR): State.CLOSED,
    (State.AWAIT_HAVE, Frame.ERROR): State.CLOSED,
    (State.SYNCING, Frame.ERROR): State.CLOSED,
}


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    """The peer proved it belongs to the space; the driver should now ``send_have``."""

    peer_id: DeviceId
    peer_name: str
    peer_relay: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class HaveReceived:
    """The peer's version vector: it holds every envelope up to these seqs."""

    vv: Mapping[bytes, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopesReceived:
    """A batch to verify and store; then ``ack(batch)``, or ``fail`` if any is bad."""

    batch: int
    envelopes: Sequence[bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowOpen:
    """A batch was acknowledged: the driver may send more."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionFailed:
    """This side ended the session because of the peer (or a local failure)."""

    code: CloseCode
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed:
    """The peer ended the session and said why."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobWanted:
    """The peer asks for chunks of a blob; ``hops`` is how many more nodes it may be asked of."""

    blob_id: bytes
    size: int
    epoch: int
    indices: Sequence[int]
    hops: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobReceived:
    """A chunk arrived; its length fits the blob's size (its tag is the driver's to check)."""

    blob_id: bytes
    size: int
    epoch: int
    index: int
    sealed: bytes
    tag: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobMissing:
    """The peer has not got these chunks (and could not get them)."""

    blob_id: bytes
    indices: Sequence[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobOffered:
    """The peer holds this blob and asks this node (a relay) to keep a copy."""

    blob_id: bytes
    size: int
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobKept:
    """The relay recorded a KEEP_BLOB (it fetches the blob, or has it, or refused it for good)."""

    blob_id: bytes


Event = (
    Authenticated
    | HaveReceived
    | EnvelopesReceived
    | WindowOpen
    | SessionFailed
    | PeerClosed
    | BlobWanted
    | BlobReceived
    | BlobMissing
    | BlobOffered
    | BlobKept
)


class _Violation(Exception):
    """Internal: a peer's frame broke the protocol (never escapes the session)."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(slots=True)
class SyncSession:
    """One side of one connection. Feed it frames; send what it queues."""

    role: Role
    space_id: bytes
    auth_key: bytes
    node: DeviceKeys
    name: str
    challenge: bytes
    relay: bool = False
    state: State = State.AWAIT_HELLO
    peer_id: DeviceId | None = None
    peer_vv: dict[bytes, int] = field(default_factory=dict)
    close_code: int | None = None
    close_reason: str = ""
    _outgoing: list[bytes] = field(default_factory=list)
    _my_hello: bytes = b""
    _peer_hello: bytes = b""
    _peer_key: bytes = b""
    _peer_name: str = ""
    _peer_relay: bool = False
    _next_batch: int = 1
    _unacked: int = 0

    def __post_init__(self) -> None:
        if len(self.challenge) != CHALLENGE_SIZE:
            raise ValueError("a challenge is 32 random bytes")
        hello = [
            Frame.HELLO,
            PROTOCOL_VERSION,
            self.space_id,
            self.node.public_key,
            self.challenge,
            self.name[:MAX_NAME],
            self.relay,
        ]
        self._my_hello = _pack(hello)
        self._outgoing.append(self._my_hello)

    # -- driver API ------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Frames queued since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def receive(self, frame: bytes) -> list[Event]:
        """Process one received websocket message. Never raises for the peer's fault."""
        if self.state is State.CLOSED:
            return []
        try:
            return self._receive(frame)
        except _Violation as v:
            return [self.fail(v.code, str(v))]

    @property
    def peer_relay(self) -> bool:
        """Whether the peer said it is a relay (it holds only ciphertext, and keeps blobs)."""
        return self._peer_relay

    @property
    def can_send(self) -> bool:
        """Whether the flow-control window allows another ENVELOPES batch."""
        return self.state is State.SYNCING and self._unacked < WINDOW

    def send_have(self, vv: Mapping[bytes, int]) -> None:
        """Tell the peer what this side holds (after ``Authenticated``)."""
        self._require(State.AWAIT_HAVE, State.SYNCING)
        self._outgoing.append(_pack([Frame.HAVE, dict(vv)]))

    def send_envelopes(self, envelopes: Sequence[tuple[bytes, int, bytes]]) -> None:
        """Send (author, seq, data) envelopes the peer lacks, per author in seq order.

        Raises ``ValueError`` if the window is closed or the batch is over its limits (a bug in
        the driver, not the peer's fault).
        """
        if not self.can_send:
            raise ValueError("the flow-control window is closed")
        if not envelopes or len(envelopes) > MAX_BATCH_ENVELOPES:
            raise ValueError("a batch holds 1 to MAX_BATCH_ENVELOPES envelopes")
        self._outgoing.append(_pack([Frame.ENVELOPES, self._next_batch, [data for _, _, data in envelopes]]))
        self._next_batch += 1
        self._unacked += 1
        for author, seq, _ in envelopes:
            self.note_peer_has(author, seq)

    def ack(self, batch: int) -> None:
        """Acknowledge a received batch once it is stored."""
        if self.state is State.SYNCING:
            self._outgoing.append(_pack([Frame.ACK, batch]))

    def note_peer_has(self, author: bytes, seq: int) -> None:
        """Record that the peer holds (author, seq): only gapless runs count."""
        if seq == self.peer_vv.get(author, 0) + 1:
            self.peer_vv[author] = seq

    def want_blob(self, blob_id: bytes, size: int, epoch: int, indices: Sequence[int], hops: int) -> None:
        """Ask the peer for chunks of a blob (at most ``MAX_WANT`` indices)."""
        self._require(State.SYNCING)
        self._outgoing.append(_pack([Frame.WANT_BLOB, blob_id, size, epoch, list(indices[:MAX_WANT]), hops]))

    def send_chunk(
        self, blob_id: bytes, size: int, epoch: int, index: int, sealed: bytes, tag: bytes
    ) -> None:
        """Send one sealed chunk."""
        self._require(State.SYNCING)
        self._outgoing.append(_pack([Frame.BLOB, blob_id, size, epoch, index, sealed, tag]))

    def keep_blob(self, blob_id: bytes, size: int, epoch: int) -> None:
        """Ask the peer (a relay) to fetch this blob from us and keep it."""
        self._require(State.SYNCING)
        self._outgoing.append(_pack([Frame.KEEP_BLOB, blob_id, size, epoch]))

    def kept_blob(self, blob_id: bytes) -> None:
        """Tell the member that its KEEP_BLOB is recorded here, so it need not send it again."""
        self._require(State.SYNCING)
        self._outgoing.append(_pack([Frame.KEPT_BLOB, blob_id]))

    def no_blob(self, blob_id: bytes, indices: Sequence[int]) -> None:
        """Tell the peer these chunks are not to be had here."""
        self._require(State.SYNCING)
        self._outgoing.append(_pack([Frame.NO_BLOB, blob_id, list(indices[:MAX_WANT])]))

    def fail(self, code: CloseCode, reason: str) -> SessionFailed:
        """End the session from this side: queue an ERROR frame and close."""
        if self.state is not State.CLOSED:
            self._outgoing.append(_pack([Frame.ERROR, int(code), reason[:200]]))
            self.state = State.CLOSED
            self.close_code, self.close_reason = code, reason
        return SessionFailed(code=code, reason=reason)

    # -- frame handling --------------------------------------------------------------------

    def _receive(self, frame: bytes) -> list[Event]:
        kind, body = _unpack(frame)
        following = TRANSITIONS.get((self.state, kind))
        if following is None:
            raise _Violation(CloseCode.OUT_OF_ORDER, f"{kind.name} not allowed in {self.state.value}")
        handler = getattr(self, f"_on_{kind.name.lower()}")
        events: list[Event] = handler(body, frame)
        if self.state is not State.CLOSED:
            self.state = following
        return events

    def _on_hello(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 6)
        version, space_id, node_id, challenge, name, relay = body
        if version != PROTOCOL_VERSION:
            raise _Violation(CloseCode.VERSION, f"peer speaks protocol {version}, not {PROTOCOL_VERSION}")
        _bytes(space_id, 16, "space id")
        _bytes(node_id, 32, "node id")
        _bytes(challenge, CHALLENGE_SIZE, "challenge")
        if not isinstance(name, str) or len(name) > MAX_NAME or not isinstance(relay, bool):
            raise _Violation(CloseCode.MALFORMED, "bad name or relay flag")
        if not hmac.compare_digest(space_id, self.space_id):
            raise _Violation(CloseCode.AUTH_FAILED, "peer belongs to another space")
        if node_id == self.node.public_key:
            raise _Violation(CloseCode.AUTH_FAILED, "peer claims this node's own id")
        self._peer_hello, self._peer_key = frame, node_id
        self._peer_name, self._peer_relay = name, relay
        transcript = self._transcript(self.role)
        mac = hmac.new(self.auth_key, transcript, hashlib.sha256).digest()
        self._outgoing.append(_pack([Frame.AUTH, mac, self.node.sign(transcript)]))
        return []

    def _on_auth(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 2)
        mac, signature = body
        _bytes(mac, 32, "mac")
        _bytes(signature, 64, "signature")
        peer_role = Role.RESPONDER if self.role is Role.INITIATOR else Role.INITIATOR
        transcript = self._transcript(peer_role)
        expected = hmac.new(self.auth_key, transcript, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise _Violation(CloseCode.AUTH_FAILED, "wrong space key")
        if not verify_signature(self._peer_key, signature, transcript):
            raise _Violation(CloseCode.AUTH_FAILED, "bad node signature")
        self.peer_id = DeviceId(self._peer_key.hex())
        return [Authenticated(peer_id=self.peer_id, peer_name=self._peer_name, peer_relay=self._peer_relay)]

    def _on_have(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 1)
        (vv,) = body
        if not isinstance(vv, dict) or len(vv) > MAX_AUTHORS:
            raise _Violation(CloseCode.MALFORMED, "HAVE needs a map of at most MAX_AUTHORS authors")
        for author, seq in vv.items():
            _bytes(author, 32, "author")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 1 << 63:
                raise _Violation(CloseCode.MALFORMED, "HAVE seqs must be whole numbers")
        self.peer_vv = dict(vv)
        return [HaveReceived(vv=dict(vv))]

    def _on_envelopes(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 2)
        batch, envelopes = body
        if not isinstance(batch, int) or isinstance(batch, bool):
            raise _Violation(CloseCode.MALFORMED, "bad batch number")
        if not isinstance(envelopes, list) or not 0 < len(envelopes) <= MAX_BATCH_ENVELOPES:
            raise _Violation(CloseCode.MALFORMED, "a batch holds 1 to MAX_BATCH_ENVELOPES envelopes")
        for data in envelopes:
            if not isinstance(data, bytes) or len(data) > MAX_ENVELOPE_SIZE:
                raise _Violation(CloseCode.TOO_LARGE, "an envelope is not bytes or is too large")
        return [EnvelopesReceived(batch=batch, envelopes=envelopes)]

    def _on_ack(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 1)
        if self._unacked == 0:
            raise _Violation(CloseCode.OUT_OF_ORDER, "ACK with nothing outstanding")
        self._unacked -= 1
        return [WindowOpen()]

    def _on_want_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 5)
        blob_id, size, epoch, indices, hops = body
        _blob_header(blob_id, size, epoch)
        _indices(indices, size)
        if not _whole(hops) or hops > MAX_HOPS:
            raise _Violation(CloseCode.MALFORMED, "bad hop count")
        return [BlobWanted(blob_id=blob_id, size=size, epoch=epoch, indices=indices, hops=hops)]

    def _on_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 6)
        blob_id, size, epoch, index, sealed, tag = body
        _blob_header(blob_id, size, epoch)
        _indices([index], size)
        if not isinstance(sealed, bytes) or len(sealed) != chunk_length(size, index) + TAG_SIZE:
            raise _Violation(CloseCode.TOO_LARGE, "a chunk's length does not fit its blob")
        _bytes(tag, RELAY_TAG_SIZE, "chunk tag")
        return [BlobReceived(blob_id=blob_id, size=size, epoch=epoch, index=index, sealed=sealed, tag=tag)]

    def _on_no_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 2)
        blob_id, indices = body
        _bytes(blob_id, ID_SIZE, "blob id")
        _indices(indices, MAX_BLOB_BYTES)
        return [BlobMissing(blob_id=blob_id, indices=indices)]

    def _on_keep_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 3)
        blob_id, size, epoch = body
        _blob_header(blob_id, size, epoch)
        return [BlobOffered(blob_id=blob_id, size=size, epoch=epoch)]

    def _on_kept_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 1)
        (blob_id,) = body
        _bytes(blob_id, ID_SIZE, "blob id")
        return [BlobKept(blob_id=blob_id)]

    def _on_error(self, body: list[Any], frame: bytes) -> list[Event]:
        _shape(body, 2)
        code, reason = body
        self.state = State.CLOSED
        self.close_code = code if isinstance(code, int) else CloseCode.MALFORMED
        self.close_reason = reason[:200] if isinstance(reason, str) else ""
        return [PeerClosed(code=self.close_code, reason=self.close_reason)]

    # -- helpers ---------------------------------------------------------------------------

    def _transcript(self, role: Role) -> bytes:
        first, second = (
            (self._my_hello, self._peer_hello)
            if self.role is Role.INITIATOR
            else (self._peer_hello, self._my_hello)
        )
        return (
            b"syncq-auth-v1\x00"
            + role.value
            + hashlib.sha256(first).digest()
            + hashlib.sha256(second).digest()
        )

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise ValueError(f"not allowed in state {self.state.value}")


def _pack(message: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def _unpack(frame: bytes) -> tuple[Frame, list[Any]]:
    if not isinstance(frame, bytes):
        raise _Violation(CloseCode.MALFORMED, "frames are binary")
    if len(frame) > MAX_FRAME_SIZE:
        raise _Violation(CloseCode.TOO_LARGE, f"frame of {len(frame)} bytes")
    try:
        message = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_ENVELOPE_SIZE,
            max_str_len=1024,
            max_array_len=MAX_BATCH_ENVELOPES + 8,
            max_map_len=MAX_AUTHORS,
        )
    except Exception as exc:  # any decoder failure on untrusted bytes is the peer's fault
        raise _Violation(CloseCode.MALFORMED, f"not a msgpack frame: {exc}") from exc
    if not isinstance(message, list) or not message or message[0] not in Frame._value2member_map_:
        raise _Violation(CloseCode.MALFORMED, "unknown frame type")
    if isinstance(message[0], bool):
        raise _Violation(CloseCode.MALFORMED, "unknown frame type")
    return Frame(message[0]), message[1:]


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _blob_header(blob_id: object, size: object, epoch: object) -> None:
    _bytes(blob_id, ID_SIZE, "blob id")
    if not _whole(size) or size > MAX_BLOB_BYTES or not _whole(epoch) or epoch >= 1 << 32:  # type: ignore[operator]
        raise _Violation(CloseCode.TOO_LARGE, "bad blob size or epoch")


def _indices(indices: object, size: int) -> None:
    if not isinstance(indices, list) or not 0 < len(indices) <= MAX_WANT:
        raise _Violation(CloseCode.MALFORMED, f"1 to {MAX_WANT} chunk indices")
    count = chunk_count(size)
    if not all(_whole(i) and i < count for i in indices):
        raise _Violation(CloseCode.MALFORMED, "a chunk index out of range")


def _shape(body: list[Any], n: int) -> None:
    if len(body) != n:
        raise _Violation(CloseCode.MALFORMED, f"expected {n} fields, got {len(body)}")


def _bytes(value: object, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise _Violation(CloseCode.MALFORMED, f"bad {what}")
