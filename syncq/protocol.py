"""The sync protocol as a pure state machine (PROTOCOL.md, "Sync").

``SyncSession`` never touches a socket (python-websockets' shape): the driver in ``syncq.node``
feeds it each received websocket message with ``receive(frame)``, gets back a list of events,
and sends whatever ``data_to_send()`` returns. The session never raises for the peer's fault:
it records why, queues an ERROR frame, moves to CLOSED and emits ``SessionFailed`` with the
websocket close code to use.

Every state transition lives in ``TRANSITIONS`` (h11's habit)::

    state           frame received          next state      and then
    AWAIT_HELLO     HELLO (valid tag)       AWAIT_AUTH      send AUTH
    AWAIT_AUTH      AUTH (opens, signed)    AWAIT_HAVE      emit Authenticated; driver sends HAVE
    AWAIT_HAVE      HAVE (more to come)     AWAIT_HAVE      keep the part
    AWAIT_HAVE      HAVE (the last part)    SYNCING         emit HaveReceived
    SYNCING         ENVELOPES               SYNCING         emit EnvelopesReceived; driver ACKs
    SYNCING         ACK                     SYNCING         emit WindowOpen
    SYNCING         WANT_BLOB               SYNCING         emit BlobWanted; driver sends BLOB/NO_BLOB
    SYNCING         BLOB                    SYNCING         emit BlobReceived; driver checks the tag
    SYNCING         NO_BLOB                 SYNCING         emit BlobMissing
    SYNCING         KEEP_BLOB               SYNCING         emit BlobOffered; a relay fetches it
    SYNCING         KEPT_BLOB               SYNCING         emit BlobKept; the member stops asking
    SYNCING         SNAPSHOT (a part)       SYNCING         emit SnapshotPart; driver ACKs
    SYNCING         SNAPSHOT (the last)     SYNCING         emit SnapshotReceived; driver ACKs once held
    any open        ERROR                   CLOSED          emit PeerClosed
    any             anything else           CLOSED          emit SessionFailed (4409)

Admission (``syncq.handshake``, ``syncq.admission``): HELLO carries a fresh challenge, an
X25519 ephemeral key and four tags over both, keyed by the ``auth_key`` of this node's three
newest epochs and epoch 0 (fillers for the rest), nothing else, so a stranger learns neither
the space, nor the device, nor its name. The session speaks the newest epoch both tag lists
share. A refused HELLO (no tag in common: another space, epochs too far apart) is
answered like a good one, with a decoy AUTH, and refused at the peer's AUTH in the same words
as a wrong key (the detail is logged here only): nobody, not even one replaying a member's
HELLO, learns whether this node is of that space or how often its keys rotated. AUTH is sealed
(ChaCha20-Poly1305) under a key derived from the ephemeral secret, ``auth_key`` and both HELLOs,
one key per direction: opening it proves the peer knows ``auth_key`` and wrote it for this
direction (a reflected AUTH fails). Inside are the node id, its Ed25519 signature over the role
and transcript (so no member can claim another's id), the name and the relay flag. So
``auth_key`` alone (a relay's, a member's) neither opens a recorded session nor lets an insider
in the path swap the ephemerals: the transcripts then differ, so each signature fails. Once the
signature verifies, ``admit`` judges the peer's device key against the device list: a removed or
unlisted device is refused with 4410 and told which of the two it is.

After AUTH every frame is sealed (ChaCha20-Poly1305) under a per-direction key with an implicit
counter as its nonce: a man in the middle cannot read it, nor forge a HAVE or an ACK to withhold
data, nor drop, reorder or replay a frame, without the session closing with 4412.

Flow control: at most ``WINDOW`` ENVELOPES batches are unacknowledged at once, and a batch is
acknowledged only after the receiver has stored it, so a 100k backlog never sits in memory and
an ACK means "durable here".
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncq import admission as ad
from syncq import frames as fr
from syncq.admission import REFUSED
from syncq.blobs import ID_SIZE, RELAY_TAG_SIZE, chunk_length
from syncq.crypto import MAX_ENVELOPE_SIZE, TAG_SIZE, DeviceKeys, verify_signature
from syncq.frames import (
    MAX_AUTHORS,
    MAX_BATCH_ENVELOPES,
    MAX_BLOB_BYTES,
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME,
    MAX_HAVE_AUTHORS,
    MAX_HELD_SNAPSHOTS,
    MAX_HOPS,
    MAX_NAME,
    MAX_WANT,
    PROTOCOL_VERSION,
    SNAPSHOT_PART,
    CloseCode,
    Frame,
    Violation,
)
from syncq.handshake import (
    EPHEMERAL_SIZE,
    FrameSeal,
    Keys,
    decoy_key,
    ephemeral_private,
    ephemeral_public,
    open_auth,
    seal_auth,
    shared_secret,
    signed_text,
    transcript_hash,
)
from syncq.ids import DeviceId
from syncq.snapshots import MAX_SNAPSHOT_SIZE

__all__ = [
    "MAX_AUTHORS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ENVELOPES",
    "MAX_FRAME_SIZE",
    "MAX_HANDSHAKE_FRAME",
    "PROTOCOL_VERSION",
    "REFUSED",
    "CloseCode",
    "Frame",
]

MAX_BATCH_BYTES = 2 * 1024 * 1024  # what a sender puts in one batch
WINDOW = 4
CHALLENGE_SIZE = 32


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
    (State.AWAIT_HAVE, Frame.HAVE): State.SYNCING,  # its handler holds AWAIT_HAVE for a part
    (State.SYNCING, Frame.ENVELOPES): State.SYNCING,
    (State.SYNCING, Frame.ACK): State.SYNCING,
    (State.SYNCING, Frame.WANT_BLOB): State.SYNCING,
    (State.SYNCING, Frame.BLOB): State.SYNCING,
    (State.SYNCING, Frame.NO_BLOB): State.SYNCING,
    (State.SYNCING, Frame.KEEP_BLOB): State.SYNCING,
    (State.SYNCING, Frame.KEPT_BLOB): State.SYNCING,
    (State.SYNCING, Frame.SNAPSHOT): State.SYNCING,
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
    """The peer's version vector: it holds every envelope up to these seqs (or snapshots that
    cover them), and the snapshots it holds (digests)."""

    vv: Mapping[bytes, int]
    snapshots: Sequence[bytes] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotPart:
    """A part of a snapshot came and is kept in memory until the last: ``ack(batch)``."""

    batch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotReceived:
    """A whole snapshot came (its bytes, checked for size only): verify and hold it, then
    ``ack(batch)``."""

    batch: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopesReceived:
    """A batch to verify and store; then ``ack(batch)``, or ``fail`` if any is bad."""

    batch: int
    envelopes: Sequence[bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowOpen:
    """A batch was acknowledged: the driver may send more. ``taken`` is false when the batch
    was a snapshot's last part and the peer refused the snapshot."""

    batch: int = 0
    taken: bool = True


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
    | SnapshotPart
    | SnapshotReceived
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


@dataclass(slots=True)
class SyncSession:
    """One side of one connection. Feed it frames; send what it queues.

    ``auth_keys`` holds (epoch, admission key) of the epochs this node knows, newest first
    (``SpaceKeys.ordered``); the HELLO is tagged under the 3 newest and epoch 0, and ``epoch``
    becomes the session's (``syncq.admission.session_epoch``) once the peer's HELLO is read.
    ``admit`` judges the peer's device key once its AUTH verifies: None admits, a reason refuses
    it with 4410. Raises ``ValueError`` for a challenge that is not 32 bytes or no keys at all.
    """

    role: Role
    auth_keys: Sequence[tuple[int, bytes]]
    node: DeviceKeys
    name: str
    challenge: bytes
    relay: bool = False
    admit: Callable[[bytes], str | None] = field(default=lambda device: None)
    epoch: int | None = None
    state: State = State.AWAIT_HELLO
    peer_id: DeviceId | None = None
    peer_vv: dict[bytes, int] = field(default_factory=dict)
    close_code: int | None = None
    close_reason: str = ""
    _outgoing: list[bytes] = field(default_factory=list)
    _my_hello: bytes = b""
    _transcript: bytes = b""
    _peer_name: str = ""
    _peer_relay: bool = False
    _next_batch: int = 1
    _unacked: int = 0
    _have_part: dict[bytes, int] = field(default_factory=dict)
    _hold: bool = False
    _peer_keys: Keys | None = None  # the peer's direction, known once both HELLOs are
    _refusal: str = ""  # why the peer's HELLO is refused, said once its AUTH comes
    _seal_out: FrameSeal | None = None  # set once this side has sent its AUTH
    _seal_in: FrameSeal | None = None  # set once the peer's AUTH is verified
    _tagged: list[tuple[int, bytes]] = field(default_factory=list)  # the epochs of our tags
    _parts: list[bytes] = field(default_factory=list)  # of the snapshot coming in
    _parts_due: int = 0  # how many parts it has
    _snapshot_sent: int = 0  # bytes of the snapshot going out queued so far

    def __post_init__(self) -> None:
        if len(self.challenge) != CHALLENGE_SIZE:
            raise ValueError("a challenge is 32 random bytes")
        if not self.auth_keys:
            raise ValueError("no admission keys")
        self._tagged = ad.tagged_epochs(self.auth_keys)
        ephemeral = ephemeral_public(ephemeral_private(self.node.signing_seed, self.challenge))
        tags = ad.hello_tags(self._tagged, self.node.signing_seed, self.challenge, ephemeral)
        self._my_hello = fr.pack([Frame.HELLO, PROTOCOL_VERSION, self.challenge, ephemeral, tags])
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
        except Violation as v:
            return [self.fail(v.code, str(v), told=v.told)]

    def encode(self, message: list[Any]) -> bytes:
        """``message`` as this session would put it on the wire now (packed, and sealed after its
        AUTH): the session's own sends use it, and so do tests that speak the protocol by hand.
        The counter moves on: the frame must be sent."""
        body = fr.pack(message)
        return body if self._seal_out is None else self._seal_out.seal(body)

    @property
    def peer_relay(self) -> bool:
        """Whether the peer said it is a relay (it holds only ciphertext, and keeps blobs)."""
        return self._peer_relay

    @property
    def authenticated(self) -> bool:
        """Whether the peer's AUTH was verified: from now on it may send frames up to
        ``MAX_FRAME_SIZE`` (the driver raises its websocket's limit)."""
        return self._seal_in is not None

    @property
    def all_acked(self) -> bool:
        """Whether every batch sent has been acknowledged: the peer holds ``peer_vv`` now."""
        return self._unacked == 0

    @property
    def can_send(self) -> bool:
        """Whether the flow-control window allows another ENVELOPES batch."""
        return self.state is State.SYNCING and self._unacked < WINDOW

    def send_have(self, vv: Mapping[bytes, int], snapshots: Sequence[bytes] = ()) -> None:
        """Tell the peer what this side holds (after ``Authenticated``), in parts of at most
        ``MAX_HAVE_AUTHORS``: the peer may not have raised its size limit yet. ``snapshots``
        names the snapshots held (at most ``MAX_HELD_SNAPSHOTS`` digests, said in the last part)."""
        self._require(State.AWAIT_HAVE, State.SYNCING)
        items = sorted(vv.items())
        parts = [items[i : i + MAX_HAVE_AUTHORS] for i in range(0, len(items), MAX_HAVE_AUTHORS)] or [[]]
        held = list(snapshots[:MAX_HELD_SNAPSHOTS])
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            self._send([Frame.HAVE, dict(part), not last, held if last else []])

    def send_snapshot(self, data: bytes) -> int:
        """Queue the next part of snapshot ``data`` that the window allows, each part one batch;
        returns how many bytes of it are queued so far, all of them once the last part is.
        The caller keeps calling while ``can_send`` until it returns ``len(data)``. Raises
        ``ValueError`` if the window is closed or the snapshot is too large (the driver's bug)."""
        if not self.can_send:
            raise ValueError("the flow-control window is closed")
        if not 0 < len(data) <= MAX_SNAPSHOT_SIZE:
            raise ValueError("a snapshot is 1 to MAX_SNAPSHOT_SIZE bytes")
        count = -(-len(data) // SNAPSHOT_PART)
        index = self._snapshot_sent // SNAPSHOT_PART
        part = data[index * SNAPSHOT_PART : (index + 1) * SNAPSHOT_PART]
        self._send([Frame.SNAPSHOT, self._next_batch, index, count, part])
        self._next_batch += 1
        self._unacked += 1
        self._snapshot_sent += len(part)
        sent = self._snapshot_sent
        if sent == len(data):
            self._snapshot_sent = 0
        return sent

    def note_peer_covers(self, covers: Mapping[bytes, int]) -> None:
        """Record that the peer holds (once it takes the snapshot sent) what ``covers`` names."""
        for author, seq in covers.items():
            if seq > self.peer_vv.get(author, 0):
                self.peer_vv[author] = seq

    def send_envelopes(self, envelopes: Sequence[tuple[bytes, int, bytes]]) -> None:
        """Send (author, seq, data) envelopes the peer lacks, per author in seq order.

        Raises ``ValueError`` if the window is closed or the batch is over its limits (a bug in
        the driver, not the peer's fault).
        """
        if not self.can_send:
            raise ValueError("the flow-control window is closed")
        if not envelopes or len(envelopes) > MAX_BATCH_ENVELOPES:
            raise ValueError("a batch holds 1 to MAX_BATCH_ENVELOPES envelopes")
        self._send([Frame.ENVELOPES, self._next_batch, [data for _, _, data in envelopes]])
        self._next_batch += 1
        self._unacked += 1
        for author, seq, _ in envelopes:
            self.note_peer_has(author, seq)

    def ack(self, batch: int, *, taken: bool = True) -> None:
        """Acknowledge a received batch once it is stored; a snapshot's last part says whether
        the snapshot was taken (or refused: the sender then counts on the peer's HAVE again)."""
        if self.state is State.SYNCING:
            self._send([Frame.ACK, batch] if taken else [Frame.ACK, batch, False])

    @property
    def last_batch(self) -> int:
        """The number of the last batch (or snapshot part) queued."""
        return self._next_batch - 1

    def note_peer_has(self, author: bytes, seq: int) -> None:
        """Record that the peer holds (author, seq): only gapless runs count."""
        if seq == self.peer_vv.get(author, 0) + 1:
            self.peer_vv[author] = seq

    def want_blob(self, blob_id: bytes, size: int, epoch: int, indices: Sequence[int], hops: int) -> None:
        """Ask the peer for chunks of a blob (at most ``MAX_WANT`` indices)."""
        self._require(State.SYNCING)
        self._send([Frame.WANT_BLOB, blob_id, size, epoch, list(indices[:MAX_WANT]), hops])

    def send_chunk(
        self, blob_id: bytes, size: int, epoch: int, index: int, sealed: bytes, tag: bytes
    ) -> None:
        """Send one sealed chunk."""
        self._require(State.SYNCING)
        self._send([Frame.BLOB, blob_id, size, epoch, index, sealed, tag])

    def keep_blob(self, blob_id: bytes, size: int, epoch: int) -> None:
        """Ask the peer (a relay) to fetch this blob from us and keep it."""
        self._require(State.SYNCING)
        self._send([Frame.KEEP_BLOB, blob_id, size, epoch])

    def kept_blob(self, blob_id: bytes) -> None:
        """Tell the member that its KEEP_BLOB is recorded here, so it need not send it again."""
        self._require(State.SYNCING)
        self._send([Frame.KEPT_BLOB, blob_id])

    def no_blob(self, blob_id: bytes, indices: Sequence[int]) -> None:
        """Tell the peer these chunks are not to be had here."""
        self._require(State.SYNCING)
        self._send([Frame.NO_BLOB, blob_id, list(indices[:MAX_WANT])])

    def fail(self, code: CloseCode, reason: str, *, told: str | None = None) -> SessionFailed:
        """End the session from this side: queue an ERROR frame and close. The peer is told
        ``told`` where given (in the ERROR and the close frame), ``reason`` otherwise."""
        if self.state is not State.CLOSED:
            told = reason if told is None else told
            self._send([Frame.ERROR, int(code), told[:200]])
            self.state = State.CLOSED
            self.close_code, self.close_reason = code, told
        return SessionFailed(code=code, reason=reason)

    # -- frame handling --------------------------------------------------------------------

    def _send(self, message: list[Any]) -> None:
        self._outgoing.append(self.encode(message))

    def _receive(self, frame: bytes) -> list[Event]:
        kind, body = self._open(frame)
        following = TRANSITIONS.get((self.state, kind))
        if following is None:
            raise Violation(CloseCode.OUT_OF_ORDER, f"{kind.name} not allowed in {self.state.value}")
        self._hold = False
        handler = getattr(self, f"_on_{kind.name.lower()}")
        events: list[Event] = handler(body, frame)
        if self.state is not State.CLOSED and not self._hold:
            self.state = following
        return events

    def _open(self, frame: bytes) -> tuple[Frame, list[Any]]:
        """Open the frame (after the peer's AUTH: its tag and counter), then decode it."""
        if self._seal_in is None:
            return fr.unpack(frame, MAX_HANDSHAKE_FRAME)  # a stranger's frames stay small
        if not isinstance(frame, bytes):
            raise Violation(CloseCode.MALFORMED, "frames are binary")
        body = self._seal_in.open(frame)
        if body is None:
            raise Violation(CloseCode.BAD_TAG, "a frame failed its tag (forged, lost, reordered or replayed)")
        return fr.unpack(body, MAX_FRAME_SIZE)

    def _on_hello(self, body: list[Any], frame: bytes) -> list[Event]:
        if not body or body[0] != PROTOCOL_VERSION:
            version = body[0] if body and fr.whole(body[0]) else "?"
            raise Violation(CloseCode.VERSION, f"peer speaks protocol {version}, not {PROTOCOL_VERSION}")
        fr.shape(body, 4)
        _, challenge, ephemeral, tags = body
        fr.check_bytes(challenge, CHALLENGE_SIZE, "challenge")
        fr.check_bytes(ephemeral, EPHEMERAL_SIZE, "ephemeral key")
        found = ad.session_epoch(self._tagged, challenge, ephemeral, ad.check_tags(tags))
        if challenge == self.challenge:
            raise Violation(CloseCode.AUTH_FAILED, "peer sent this node's own HELLO back")
        if found is None:  # a decoy AUTH all the same, so a replayed HELLO tests nothing
            self._refusal = "peer belongs to another space"  # every member of this one shares epoch 0
            key = decoy_key(self.node.signing_seed, self.challenge)
        else:
            self.epoch, key = found
        shared = shared_secret(ephemeral_private(self.node.signing_seed, self.challenge), ephemeral)
        if shared is None and not self._refusal:  # a good tag: an insider's doing
            raise Violation(CloseCode.AUTH_FAILED, "peer's ephemeral key is a small-order point")
        shared = shared or bytes(32)
        first, second = (self._my_hello, frame) if self.role is Role.INITIATOR else (frame, self._my_hello)
        self._transcript = transcript_hash(first, second)
        mine = Keys.derive(key, shared, self._transcript, self.role.value)
        self._peer_keys = Keys.derive(key, shared, self._transcript, _other(self.role).value)
        proof = self.node.sign(signed_text(self.role.value, self._transcript))
        inner = fr.pack([self.node.public_key, proof, self.name[:MAX_NAME], self.relay])
        self._send([Frame.AUTH, seal_auth(mine, self._transcript, inner)])
        self._seal_out = FrameSeal(mine.frames)
        return []

    def _on_auth(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 1)
        (sealed,) = body
        if not isinstance(sealed, bytes):
            raise Violation(CloseCode.MALFORMED, "bad AUTH")
        assert self._peer_keys is not None  # AWAIT_AUTH comes only after our HELLO handler
        inner = open_auth(self._peer_keys, self._transcript, sealed)
        if inner is None or self._refusal:  # the detail is logged here, never told
            raise Violation(CloseCode.AUTH_FAILED, self._refusal or "wrong space key", told=REFUSED)
        node_id, signature, name, relay = ad.auth_fields(inner)
        if node_id == self.node.public_key:
            raise Violation(CloseCode.AUTH_FAILED, "peer claims this node's own id")
        if not verify_signature(node_id, signature, signed_text(_other(self.role).value, self._transcript)):
            raise Violation(CloseCode.AUTH_FAILED, "bad node signature")
        self.peer_id = DeviceId(node_id.hex())
        self._peer_name, self._peer_relay = name, relay
        refusal = self.admit(node_id)  # only now: the peer proved it holds this device key
        if refusal is not None:
            raise Violation(CloseCode.NOT_LISTED, f"device list: {refusal}", told=ad.told_refusal(refusal))
        self._seal_in = FrameSeal(self._peer_keys.frames)
        return [Authenticated(peer_id=self.peer_id, peer_name=name, peer_relay=relay)]

    def _on_have(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 3)
        vv, more, held = body
        if not isinstance(held, list) or len(held) > MAX_HELD_SNAPSHOTS:
            raise Violation(CloseCode.MALFORMED, "HAVE names at most MAX_HELD_SNAPSHOTS snapshots")
        for digest in held:
            fr.check_bytes(digest, 32, "snapshot digest")
        if len(frame) > MAX_HANDSHAKE_FRAME + 16 or not isinstance(more, bool):
            raise Violation(CloseCode.TOO_LARGE, "a HAVE part over 64 KiB")
        if not isinstance(vv, dict) or len(vv) > MAX_HAVE_AUTHORS:
            raise Violation(CloseCode.MALFORMED, "HAVE needs a map of at most MAX_HAVE_AUTHORS authors")
        for author, seq in vv.items():
            fr.check_bytes(author, 32, "author")
            if not fr.whole(seq) or seq >= 1 << 63:
                raise Violation(CloseCode.MALFORMED, "HAVE seqs must be whole numbers")
        self._have_part.update(vv)
        if len(self._have_part) > MAX_AUTHORS:
            raise Violation(CloseCode.TOO_LARGE, "HAVE of more than MAX_AUTHORS authors")
        if more:
            self._hold = True
            return []
        self.peer_vv, self._have_part = self._have_part, {}
        return [HaveReceived(vv=dict(self.peer_vv), snapshots=tuple(held))]

    def _on_envelopes(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 2)
        batch, envelopes = body
        if not isinstance(batch, int) or isinstance(batch, bool):
            raise Violation(CloseCode.MALFORMED, "bad batch number")
        if not isinstance(envelopes, list) or not 0 < len(envelopes) <= MAX_BATCH_ENVELOPES:
            raise Violation(CloseCode.MALFORMED, "a batch holds 1 to MAX_BATCH_ENVELOPES envelopes")
        for data in envelopes:
            if not isinstance(data, bytes) or len(data) > MAX_ENVELOPE_SIZE:
                raise Violation(CloseCode.TOO_LARGE, "an envelope is not bytes or is too large")
        return [EnvelopesReceived(batch=batch, envelopes=envelopes)]

    def _on_snapshot(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 4)
        batch, index, count, part = body
        if not fr.whole(batch) or not fr.whole(index) or not fr.whole(count):
            raise Violation(CloseCode.MALFORMED, "bad SNAPSHOT numbers")
        if not 0 < count <= -(-MAX_SNAPSHOT_SIZE // SNAPSHOT_PART) or not isinstance(part, bytes):
            raise Violation(CloseCode.TOO_LARGE, "a snapshot of too many parts")
        if index != len(self._parts) or (index and count != self._parts_due):
            raise Violation(CloseCode.MALFORMED, "SNAPSHOT parts out of order")
        if not 0 < len(part) <= SNAPSHOT_PART or (index < count - 1 and len(part) != SNAPSHOT_PART):
            raise Violation(CloseCode.TOO_LARGE, "a SNAPSHOT part of the wrong size")
        self._parts.append(part)
        self._parts_due = count
        if index < count - 1:
            return [SnapshotPart(batch=batch)]
        data, self._parts, self._parts_due = b"".join(self._parts), [], 0
        return [SnapshotReceived(batch=batch, data=data)]

    def _on_ack(self, body: list[Any], frame: bytes) -> list[Event]:
        if len(body) != 2:
            fr.shape(body, 1)
        batch, taken = (body[0], True) if len(body) == 1 else body
        if not fr.whole(batch) or not isinstance(taken, bool):
            raise Violation(CloseCode.MALFORMED, "bad ACK")
        if self._unacked == 0:
            raise Violation(CloseCode.OUT_OF_ORDER, "ACK with nothing outstanding")
        self._unacked -= 1
        return [WindowOpen(batch=batch, taken=taken)]

    def _on_want_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 5)
        blob_id, size, epoch, indices, hops = body
        fr.blob_header(blob_id, size, epoch)
        fr.indices(indices, size)
        if not fr.whole(hops) or hops > MAX_HOPS:
            raise Violation(CloseCode.MALFORMED, "bad hop count")
        return [BlobWanted(blob_id=blob_id, size=size, epoch=epoch, indices=indices, hops=hops)]

    def _on_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 6)
        blob_id, size, epoch, index, sealed, tag = body
        fr.blob_header(blob_id, size, epoch)
        fr.indices([index], size)
        if not isinstance(sealed, bytes) or len(sealed) != chunk_length(size, index) + TAG_SIZE:
            raise Violation(CloseCode.TOO_LARGE, "a chunk's length does not fit its blob")
        fr.check_bytes(tag, RELAY_TAG_SIZE, "chunk tag")
        return [BlobReceived(blob_id=blob_id, size=size, epoch=epoch, index=index, sealed=sealed, tag=tag)]

    def _on_no_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 2)
        blob_id, indices = body
        fr.check_bytes(blob_id, ID_SIZE, "blob id")
        fr.indices(indices, MAX_BLOB_BYTES)
        return [BlobMissing(blob_id=blob_id, indices=indices)]

    def _on_keep_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 3)
        blob_id, size, epoch = body
        fr.blob_header(blob_id, size, epoch)
        return [BlobOffered(blob_id=blob_id, size=size, epoch=epoch)]

    def _on_kept_blob(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 1)
        (blob_id,) = body
        fr.check_bytes(blob_id, ID_SIZE, "blob id")
        return [BlobKept(blob_id=blob_id)]

    def _on_error(self, body: list[Any], frame: bytes) -> list[Event]:
        fr.shape(body, 2)
        code, reason = body
        self.state = State.CLOSED
        self.close_code = code if fr.whole(code) else CloseCode.MALFORMED
        self.close_reason = reason[:200] if isinstance(reason, str) else ""
        return [PeerClosed(code=self.close_code, reason=self.close_reason)]

    # -- helpers ---------------------------------------------------------------------------

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise ValueError(f"not allowed in state {self.state.value}")


def _other(role: Role) -> Role:
    return Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR
