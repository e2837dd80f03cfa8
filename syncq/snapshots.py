"""Snapshots: the whole Doc state, sealed and signed once, covering a version vector
(PROTOCOL.md, "Snapshots").

A new device, or one far behind, takes a snapshot instead of thousands of envelopes: one
signature to verify and one state to apply instead of one of each per envelope. What a
snapshot covers (``covers``: per author, the highest seq whose update it holds) travels in the
clear, under the signature, so that a relay, which cannot decrypt, can still tell which
snapshots make which others redundant and what a peer lacks.

The rules here are pure (no store, no clock):

- A node holds an **antichain** of snapshots: one that another held one dominates (covers at
  least as much of every author) is dropped (``kept``). A member never holds two for long: its
  own next snapshot covers everything it applied, so it dominates every one it took.
- A snapshot is **poisoned** where it covers what a removed device wrote after its cutoff (or
  anything of a device nobody lists as a member any more): its author wrote it before it knew
  of the removal, and the state cannot be taken apart again. A node neither takes nor keeps one
  (``poisoned``); a writer clips its own vector to the bounds it knows (``clipped``).
- A sender offers a snapshot to a peer that is far behind it, or that lacks something of it
  the sender cannot send as envelopes (``to_send``).

Trust: a snapshot is its author's word for what every author wrote. Each envelope's records are
checked against its author (``syncq.authorship``); a snapshot's cannot be, so a member could
put records in one that name another device. Only a listed member's snapshot is taken, and a
node takes one only when it lacks what it covers.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from syncq.crypto import (
    ENVELOPE_VERSION,
    MAGIC,
    NONCE_SIZE,
    SIGNATURE_SIZE,
    TAG_SIZE,
    DeviceKeys,
    Kind,
    SpaceKeys,
    verify_signature,
)
from syncq.errors import BadSignature, BadTag, BadUpdate, MalformedEnvelope, WrongSpace
from syncq.padding import Floor, pad, unpad

MAX_SNAPSHOT_SIZE = 256 * 1024 * 1024  # checked before anything else is done with the bytes
MAX_COVERED_AUTHORS = 100_000  # as a HAVE's version vector
MAX_SEQ = (1 << 63) - 1
_HEAD = struct.Struct(">2sBB16sI32sQI")  # magic, version, kind, space, epoch, author, count, authors
_ENTRY = struct.Struct(">32sQ")  # author, seq
HEAD_SIZE = _HEAD.size  # 72

Vector = Mapping[bytes, int]


@dataclass(frozen=True, slots=True)
class Head:
    """What a snapshot says in the clear: its author, epoch and vector, and its digest (the
    SHA-256 of its bytes: its name). A store lists these without reading the states."""

    author: bytes
    epoch: int
    covers: dict[bytes, int]
    digest: bytes

    @property
    def count(self) -> int:
        """How many envelopes it covers."""
        return sum(self.covers.values())


@dataclass(frozen=True, slots=True)
class Snapshot(Head):
    """A decoded snapshot; ``data`` is its exact bytes."""

    data: bytes

    @property
    def head(self) -> bytes:
        """The bytes before the nonce: what ``decode_head`` reads."""
        return self.data[: HEAD_SIZE + len(self.covers) * _ENTRY.size]


def seal_snapshot(
    *, device: DeviceKeys, space: SpaceKeys, covers: Vector, state: bytes, nonce: bytes
) -> bytes:
    """Seal the Doc ``state`` that holds exactly what ``covers`` names, under the newest epoch,
    signed by ``device``. ``nonce`` must be 12 fresh random bytes. Raises ``ValueError`` on bad
    arguments."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a nonce is 12 bytes")
    vector = sorted((a, s) for a, s in covers.items() if s > 0)
    if len(vector) > MAX_COVERED_AUTHORS or any(len(a) != 32 or s > MAX_SEQ for a, s in vector):
        raise ValueError("a snapshot covers at most MAX_COVERED_AUTHORS authors, 32-byte keys")
    epoch = space.epoch
    count = min(sum(s for _, s in vector), MAX_SEQ)
    head = _HEAD.pack(
        MAGIC,
        ENVELOPE_VERSION,
        Kind.SNAPSHOT,
        bytes.fromhex(space.space_id),
        epoch,
        device.public_key,
        count,
        len(vector),
    )
    clear = head + b"".join(_ENTRY.pack(a, s) for a, s in vector)
    # The whole history's size is not hidden above PAD_LIMIT (8 MiB): only how many prompts,
    # roughly, which the vector says anyway.
    sealed = ChaCha20Poly1305(space.enc_key(epoch)).encrypt(nonce, pad(state, Floor.CONTENT), clear)
    body = clear + nonce + sealed
    return body + device.sign(body)


def decode_snapshot(data: bytes) -> Snapshot:
    """Split snapshot bytes into their fields, checking sizes first (not the signature).
    Raises ``MalformedEnvelope``."""
    if not isinstance(data, bytes):
        raise MalformedEnvelope("a snapshot must be bytes")
    if len(data) > MAX_SNAPSHOT_SIZE:
        raise MalformedEnvelope(f"snapshot of {len(data)} bytes exceeds {MAX_SNAPSHOT_SIZE}")
    head = decode_head(data, b"", whole=len(data))
    digest = hashlib.sha256(data).digest()
    return Snapshot(author=head.author, epoch=head.epoch, covers=head.covers, digest=digest, data=data)


def decode_head(data: bytes, digest: bytes, whole: int | None = None) -> Head:
    """What a snapshot says in the clear, from its first bytes (``Snapshot.head``, or all of
    it); ``whole`` is its whole length, if known. Raises ``MalformedEnvelope``."""
    tail = 0 if whole is None else NONCE_SIZE + TAG_SIZE + SIGNATURE_SIZE
    size = len(data) if whole is None else whole
    if len(data) < HEAD_SIZE or size < HEAD_SIZE + tail:
        raise MalformedEnvelope("snapshot too short")
    magic, version, kind, _space, epoch, author, count, authors = _HEAD.unpack_from(data)
    if magic != MAGIC or version != ENVELOPE_VERSION or kind != Kind.SNAPSHOT:
        raise MalformedEnvelope("not a syncq snapshot (magic, version or kind)")
    if authors > MAX_COVERED_AUTHORS or HEAD_SIZE + authors * _ENTRY.size + tail > size:
        raise MalformedEnvelope("a snapshot's vector does not fit it")
    covers: dict[bytes, int] = {}
    last = b""
    for i in range(authors):
        who, seq = _ENTRY.unpack_from(data, HEAD_SIZE + i * _ENTRY.size)
        if who <= last or not 1 <= seq <= MAX_SEQ:
            raise MalformedEnvelope("a snapshot's vector is not sorted, or a seq is out of range")
        covers[who] = seq
        last = who
    if count != min(sum(covers.values()), MAX_SEQ):
        raise MalformedEnvelope("a snapshot's count does not match its vector")
    return Head(author=author, epoch=epoch, covers=covers, digest=digest)


def verify_snapshot(data: bytes, space_id: str) -> Snapshot:
    """Decode, check the space and verify the signature: all a relay can check. Raises a
    subclass of ``EnvelopeRejected``."""
    snapshot = decode_snapshot(data)
    if snapshot.data[4:20] != bytes.fromhex(space_id):
        raise WrongSpace("snapshot of another space")
    if not verify_signature(snapshot.author, data[-SIGNATURE_SIZE:], data[:-SIGNATURE_SIZE]):
        raise BadSignature(f"bad signature on a snapshot of {snapshot.author.hex()[:12]}")
    return snapshot


def open_state(snapshot: Snapshot, space: SpaceKeys) -> bytes:
    """The Doc state a snapshot holds. Raises ``UnknownEpoch``, ``BadTag`` or ``BadUpdate``."""
    key = space.enc_key(snapshot.epoch)
    clear_end = HEAD_SIZE + len(snapshot.covers) * _ENTRY.size
    data = snapshot.data
    nonce = data[clear_end : clear_end + NONCE_SIZE]
    try:
        plain = ChaCha20Poly1305(key).decrypt(
            nonce, data[clear_end + NONCE_SIZE : -SIGNATURE_SIZE], data[:clear_end]
        )
    except InvalidTag as exc:
        raise BadTag(f"a snapshot of {snapshot.author.hex()[:12]} fails authentication") from exc
    try:
        return unpad(plain)
    except BadUpdate as exc:
        raise BadUpdate(f"a snapshot of {snapshot.author.hex()[:12]}: {exc}") from None


# -- the rules ----------------------------------------------------------------------------------


def dominates(a: Vector, b: Vector) -> bool:
    """Whether ``a`` covers at least what ``b`` does, for every author."""
    return all(a.get(author, 0) >= seq for author, seq in b.items())


def beyond(covers: Vector, have: Vector) -> int:
    """How many envelopes ``covers`` names that ``have`` lacks."""
    return sum(max(0, seq - have.get(author, 0)) for author, seq in covers.items())


def merged(vectors: Iterable[Vector]) -> dict[bytes, int]:
    """Per author, the highest seq any of ``vectors`` names."""
    out: dict[bytes, int] = {}
    for vector in vectors:
        for author, seq in vector.items():
            if seq > out.get(author, 0):
                out[author] = seq
    return out


def kept(held: Sequence[Head], new: Head) -> tuple[bool, list[bytes]]:
    """Whether ``new`` joins the held antichain, and the digests it makes redundant (held ones it
    dominates). One that a held one dominates (or equals) is not kept: it adds nothing."""
    if any(s.digest == new.digest or dominates(s.covers, new.covers) for s in held):
        return False, []
    return True, [s.digest for s in held if dominates(new.covers, s.covers)]


def poisoned(covers: Vector, bounds: Mapping[bytes, int]) -> bytes | None:
    """The first device whose writes past its bound (a removed device's cutoff; 0 for a device
    no longer listed) ``covers`` names, or None."""
    for device, bound in sorted(bounds.items()):
        if covers.get(device, 0) > bound:
            return device
    return None


def clipped(covers: Vector, bounds: Mapping[bytes, int]) -> dict[bytes, int]:
    """``covers`` with each bounded device cut to its bound: what a writer claims of a removed
    device is only what counts of it (the Doc holds nothing past it: ``Replica.void_removed``)."""
    out = {a: min(s, bounds.get(a, s)) for a, s in covers.items()}
    return {a: s for a, s in out.items() if s > 0}


def to_send(
    held: Sequence[Head],
    have: Vector,
    holds: Iterable[bytes],
    can_send_after: Callable[[bytes, int], bool],
    far: int,
) -> list[Head]:
    """The held snapshots to send a peer whose HAVE is ``have`` and who holds the snapshots
    ``holds`` (digests): each that covers at least ``far`` envelopes the peer lacks, or covers
    one of an author whose envelopes after the peer's seq are not all stored here up to the
    floor (``can_send_after``: taken from a snapshot, or pruned), so that envelopes alone could
    not bring the peer up."""
    known = set(holds)
    out: list[Head] = []
    for snapshot in held:
        if snapshot.digest in known:
            continue
        lacking = [a for a, s in snapshot.covers.items() if s > have.get(a, 0)]
        if not lacking:
            continue
        if beyond(snapshot.covers, have) >= far or any(
            not can_send_after(a, have.get(a, 0)) for a in lacking
        ):
            out.append(snapshot)
    return out
