"""Keys, key derivation and the sealed envelope (see PROTOCOL.md, "Envelope").

An envelope carries one Yjs update of one author::

    header     = magic "SQ" | v u8 | kind u8 | space_id 16B | epoch u32 | author 32B | seq u64
    nonce      = 12 random bytes
    ciphertext = ChaCha20-Poly1305(enc_key[epoch], nonce, pad(payload, floor), aad=header)  (16-byte tag)
    signature  = Ed25519(author, header || nonce || ciphertext)

The AEAD keeps relays and disks from reading the payload and binds it to its header; the
padding (``syncq.padding``, inside the AEAD) keeps them from reading its size (they learn
its class: a floor for content, a smaller one for content-free records); the signature
lets any holder of the public header (a relay included) check who wrote it without the space
key. Version 2 pads; version 1 (envelopes written before padding) is still read, unpadded. The
version byte is in the AEAD's associated data and under the signature, so only the author, by
sealing anew, can make one into the other. Random bytes (nonces, seeds) are arguments: this
module never draws them itself.
"""

from __future__ import annotations

import enum
import functools
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from syncq.errors import (
    BadSignature,
    BadTag,
    BadUpdate,
    MalformedEnvelope,
    UnknownEpoch,
    WrongSpace,
)
from syncq.ids import DeviceId, SpaceId
from syncq.padding import Floor, pad, unpad

ENVELOPE_VERSION = 2  # what this version writes: sealed payloads padded
UNPADDED_VERSION = 1  # still read: envelopes sealed before padding, payload as it is
MAGIC = b"SQ"
_HEADER = struct.Struct(">2sBB16sI32sQ")
HEADER_SIZE = _HEADER.size  # 64
NONCE_SIZE = 12
TAG_SIZE = 16
SIGNATURE_SIZE = 64
# 156 bytes per envelope, besides the payload: for a sealed one, its padding.padded_size
OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE + SIGNATURE_SIZE
MAX_ENVELOPE_SIZE = 16 * 1024 * 1024  # checked before anything else is done with the bytes
SECRET_SIZE = 32
_MAX_SEQ = (1 << 63) - 1


class Kind(enum.IntEnum):
    """What an envelope's payload is (PROTOCOL.md, "Kinds")."""

    UPDATE = 1  # one Yjs update: one local transaction
    SNAPSHOT = 2  # a whole Doc state covering a version vector (syncq.snapshots; never an envelope)
    KEYS = 3  # a new key epoch sealed to each device, in the clear (syncq.epochs)
    ROSTER = 4  # device-list entries in the clear, for relays to read (syncq.roster)


@functools.lru_cache(maxsize=256)
def hkdf(secret: bytes, label: str, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with no salt and ``b"syncq v1 " + label`` as info."""
    return HKDF(SHA256(), length, None, b"syncq v1 " + label.encode()).derive(secret)


def space_id_for(secret_epoch0: bytes) -> SpaceId:
    """The public id of the space whose epoch-0 secret is given."""
    return SpaceId(hkdf(secret_epoch0, "space-id", 16).hex())


@dataclass(frozen=True, slots=True)
class SpaceKeys:
    """The secrets of one space, by key epoch; derives the AEAD and admission keys.

    A relay holds no ``secrets``, only ``relay_auth`` (the admission keys): it can verify
    signatures and forward envelopes, and can never decrypt one.

    An epoch is a key id: 0 for the founding secret (the space id derives from it), a random
    u32 for each rotation (``syncq.epochs``), with a ``generation`` (0 for epoch 0, one more
    than the newest known for a rotation). Random ids let two members that rotate at once,
    apart, make two epochs rather than two secrets for one id; the newest epoch is the greatest
    (generation, id).
    """

    space_id: SpaceId
    secrets: Mapping[int, bytes]
    relay_auth: Mapping[int, bytes] = field(default_factory=dict)
    generations: Mapping[int, int] = field(default_factory=dict)  # missing: 0

    @classmethod
    def create(cls, secret: bytes) -> SpaceKeys:
        """A new space at epoch 0 from a fresh 32-byte secret."""
        if len(secret) != SECRET_SIZE:
            raise ValueError("a space secret is 32 bytes")
        return cls(space_id=space_id_for(secret), secrets={0: secret})

    @property
    def is_relay(self) -> bool:
        """Whether these keys only admit to the space (no decryption)."""
        return not self.secrets

    def known(self) -> set[int]:
        """Every epoch these keys hold a key of."""
        return {*self.secrets, *self.relay_auth}

    def generation(self, epoch: int) -> int:
        """The generation of ``epoch`` (0 for one with none recorded)."""
        return self.generations.get(epoch, 0)

    def ordered(self) -> list[int]:
        """The epochs held, newest first."""
        return sorted(self.known(), key=lambda e: (self.generation(e), e), reverse=True)

    @property
    def epoch(self) -> int:
        """The newest epoch: new envelopes are sealed under it."""
        return self.ordered()[0]

    def with_epoch(
        self, epoch: int, generation: int, *, secret: bytes | None = None, auth: bytes | None = None
    ) -> SpaceKeys:
        """These keys and one more epoch: a member's ``secret``, or a relay's ``auth`` key."""
        secrets, relay_auth = dict(self.secrets), dict(self.relay_auth)
        if secret is not None:
            secrets[epoch] = secret
        if auth is not None:
            relay_auth[epoch] = auth
        generations = {**self.generations, epoch: generation} if generation else dict(self.generations)
        return SpaceKeys(
            space_id=self.space_id, secrets=secrets, relay_auth=relay_auth, generations=generations
        )

    def for_relay(self) -> SpaceKeys:
        """The keys a relay gets: the admission keys and nothing that decrypts."""
        return SpaceKeys(
            space_id=self.space_id,
            secrets={},
            relay_auth={epoch: self.auth_key(epoch) for epoch in self.secrets},
            generations=dict(self.generations),
        )

    def enc_key(self, epoch: int) -> bytes:
        """The ChaCha20-Poly1305 key of ``epoch``. Raises ``UnknownEpoch``."""
        secret = self.secrets.get(epoch)
        if secret is None:
            raise UnknownEpoch(f"no key for epoch {epoch}")
        return hkdf(secret, f"enc {epoch}")

    def auth_key(self, epoch: int) -> bytes:
        """The key that peers prove knowledge of when they connect. Raises ``UnknownEpoch``."""
        secret = self.secrets.get(epoch)
        if secret is not None:
            return hkdf(secret, f"auth {epoch}")
        if epoch in self.relay_auth:
            return self.relay_auth[epoch]
        raise UnknownEpoch(f"no key for epoch {epoch}")

    def local_key(self, label: str) -> bytes:
        """A key for this device's own at-rest data (checkpoints), derived from epoch 0."""
        return hkdf(self.secrets[0 if 0 in self.secrets else min(self.secrets)], f"local {label}")


def discovery_tag(keys: SpaceKeys) -> str:
    """What a node advertises on the LAN: nodes of the space recognise it, nobody else can tie
    it to a space (it is derived from the admission key, not from the public space id)."""
    return hkdf(keys.auth_key(0), "mdns", 8).hex()


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """A device's identity: an Ed25519 signing key and an X25519 key for sealed key delivery."""

    signing_seed: bytes
    exchange_seed: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceKeys:
        """Keys from 64 random bytes (32 for each key). Raises ``ValueError`` on a bad length."""
        if len(seed) != 64:
            raise ValueError("a device seed is 64 bytes")
        return cls(signing_seed=seed[:32], exchange_seed=seed[32:])

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key (the envelope's ``author``)."""
        return _public_key(self.signing_seed)

    @property
    def device_id(self) -> DeviceId:
        """The device id: hex of the Ed25519 public key."""
        return DeviceId(self.public_key.hex())

    @property
    def exchange_public_key(self) -> bytes:
        """The raw 32-byte X25519 public key others seal new epoch secrets to."""
        return (
            X25519PrivateKey.from_private_bytes(self.exchange_seed)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of ``message``."""
        return _signing_key(self.signing_seed).sign(message)


@functools.lru_cache(maxsize=16)
def _signing_key(seed: bytes) -> Ed25519PrivateKey:
    # Cached: building the key object costs more than a signature.
    return Ed25519PrivateKey.from_private_bytes(seed)


@functools.lru_cache(maxsize=16)
def _public_key(seed: bytes) -> bytes:
    # Cached: every envelope sealed names its author, and deriving it costs half a signature.
    return _signing_key(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@functools.lru_cache(maxsize=1024)
def _verifying_key(public: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded (not yet verified) envelope; ``raw`` is its exact bytes."""

    version: int
    kind: Kind
    space_id: bytes
    epoch: int
    author: bytes
    seq: int
    nonce: bytes
    ciphertext: bytes
    signature: bytes
    raw: bytes

    @property
    def author_id(self) -> DeviceId:
        """The author's device id."""
        return DeviceId(self.author.hex())

    @property
    def header(self) -> bytes:
        """The header bytes: the AEAD's associated data."""
        return self.raw[:HEADER_SIZE]


def seal(
    *,
    device: DeviceKeys,
    space: SpaceKeys,
    seq: int,
    payload: bytes,
    nonce: bytes,
    kind: Kind = Kind.UPDATE,
    floor: Floor = Floor.CONTENT,
) -> bytes:
    """Seal ``payload``, padded (``syncq.padding``) to at least ``floor``, as envelope ``seq``
    of ``device`` under the space's current epoch. The floor is the writer's choice by what the
    payload carries (``Floor.SMALL`` only for what ``syncq.log`` marks content-free).

    ``nonce`` must be 12 fresh random bytes. Raises ``ValueError`` on bad arguments.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError("a nonce is 12 bytes")
    if not 1 <= seq <= _MAX_SEQ:
        raise ValueError(f"seq out of range: {seq}")
    epoch = space.epoch
    header = _HEADER.pack(
        MAGIC,
        ENVELOPE_VERSION,
        kind,
        bytes.fromhex(space.space_id),
        epoch,
        device.public_key,
        seq,
    )
    ciphertext = ChaCha20Poly1305(space.enc_key(epoch)).encrypt(nonce, pad(payload, floor), header)
    body = header + nonce + ciphertext
    return body + device.sign(body)


def sign_clear(
    *, device: DeviceKeys, space_id: SpaceId, epoch: int, seq: int, kind: Kind, payload: bytes
) -> bytes:
    """An envelope whose payload is in the clear (kind 4, roster: relays must read it). The
    nonce field is 12 zero bytes and the payload takes the ciphertext's place; the signature
    authenticates it as it does any envelope. Nothing is padded: the payload is public, and
    its size (the device list's, the recipients of a key epoch) with it. Raises ``ValueError``
    on bad arguments."""
    if not 1 <= seq <= _MAX_SEQ:
        raise ValueError(f"seq out of range: {seq}")
    header = _HEADER.pack(
        MAGIC, ENVELOPE_VERSION, kind, bytes.fromhex(space_id), epoch, device.public_key, seq
    )
    body = header + bytes(NONCE_SIZE) + payload
    return body + device.sign(body)


def decode(data: bytes) -> Envelope:
    """Split envelope bytes into their fields, checking sizes first. Raises ``MalformedEnvelope``."""
    if not isinstance(data, bytes):
        raise MalformedEnvelope("an envelope must be bytes")
    if len(data) > MAX_ENVELOPE_SIZE:
        raise MalformedEnvelope(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    if len(data) < OVERHEAD:
        raise MalformedEnvelope(f"envelope of {len(data)} bytes is shorter than {OVERHEAD}")
    magic, version, kind, space_id, epoch, author, seq = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedEnvelope("not a syncq envelope (bad magic)")
    if version not in (UNPADDED_VERSION, ENVELOPE_VERSION):
        raise MalformedEnvelope(f"unsupported envelope version {version}")
    if kind not in Kind._value2member_map_ or kind == Kind.SNAPSHOT:  # a snapshot has a layout of its own
        raise MalformedEnvelope(f"unknown envelope kind {kind}")
    if not 1 <= seq <= _MAX_SEQ:
        raise MalformedEnvelope(f"seq out of range: {seq}")
    body_end = len(data) - SIGNATURE_SIZE
    return Envelope(
        version=version,
        kind=Kind(kind),
        space_id=space_id,
        epoch=epoch,
        author=author,
        seq=seq,
        nonce=data[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
        ciphertext=data[HEADER_SIZE + NONCE_SIZE : body_end],
        signature=data[body_end:],
        raw=data,
    )


def verify(envelope: Envelope) -> None:
    """Check the author's signature. Raises ``BadSignature``."""
    try:
        key = _verifying_key(envelope.author)
        key.verify(envelope.signature, envelope.raw[:-SIGNATURE_SIZE])
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature(f"bad signature on envelope {envelope.seq} of {envelope.author_id[:12]}") from exc


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` by ``public_key``."""
    try:
        _verifying_key(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def check_space(envelope: Envelope, space_id: SpaceId) -> None:
    """Check that the envelope belongs to ``space_id``. Raises ``WrongSpace``."""
    if not hmac.compare_digest(envelope.space_id, bytes.fromhex(space_id)):
        raise WrongSpace(f"envelope belongs to space {envelope.space_id.hex()}, not {space_id}")


def open_payload(envelope: Envelope, space: SpaceKeys) -> bytes:
    """Decrypt and authenticate the payload, then (version 2) strip its padding.

    Raises ``WrongSpace``, ``UnknownEpoch``, ``BadTag``, or ``BadUpdate`` for padding that is
    not what ``padding.pad`` writes (authenticated, so its author wrote it: quarantined).
    """
    check_space(envelope, space.space_id)
    key = space.enc_key(envelope.epoch)
    try:
        plain = ChaCha20Poly1305(key).decrypt(envelope.nonce, envelope.ciphertext, envelope.header)
    except InvalidTag as exc:
        raise BadTag(f"envelope {envelope.seq} of {envelope.author_id[:12]} fails authentication") from exc
    if envelope.version == UNPADDED_VERSION:
        return plain
    try:
        return unpad(plain)
    except BadUpdate as exc:
        raise BadUpdate(f"envelope {envelope.seq} of {envelope.author_id[:12]}: {exc}") from None


def verify_envelope(data: bytes, space_id: SpaceId) -> Envelope:
    """Decode, check the space and verify the signature: all a relay can check.

    Raises a subclass of ``EnvelopeRejected``.
    """
    envelope = decode(data)
    check_space(envelope, space_id)
    verify(envelope)
    return envelope


def open_envelope(data: bytes, space: SpaceKeys) -> tuple[Envelope, bytes]:
    """``verify_envelope``, then decrypt. Raises a subclass of ``EnvelopeRejected``."""
    envelope = verify_envelope(data, space.space_id)
    return envelope, open_payload(envelope, space)


def seal_local(key: bytes, payload: bytes, nonce: bytes, aad: bytes) -> bytes:
    """AEAD for this device's own at-rest data: nonce || ChaCha20-Poly1305(payload)."""
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, payload, aad)


def open_local(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Open what ``seal_local`` sealed. Raises ``BadTag``."""
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise BadTag("local data fails authentication (wrong key or corrupted)") from exc
