"""The handshake's cryptography and the per-frame seal of a session (PROTOCOL.md, "Sync").

Pure functions of their inputs (no randomness: the challenge is given in), kept apart from the
state machine in ``syncq.protocol`` so each stays readable:

- ``hello_tag``: HELLO carries a fresh challenge, an X25519 ephemeral public key and tags
  ``HMAC(auth_key[e], "syncq-hello-v1" || challenge || ephemeral)[:16]`` instead of the space
  id, so a stranger who connects learns nothing that links two HELLOs (or a HELLO and an mDNS
  record) to one space, and nobody without ``auth_key`` can change the ephemeral; which epochs
  get a tag and which epoch a session speaks is ``syncq.admission``'s.
- ``ephemeral_private``: the session's X25519 key is ``HMAC-SHA256(signing_seed,
  "syncq-ephemeral-v1" || challenge)``, so the state machine needs no randomness of its own.
  That is sound because HMAC under a secret key is a PRF: the output is secret (only this
  device holds its seed) and fresh (the challenge is 32 fresh random bytes per session, never
  reused), and it is domain-separated from Ed25519's own use of the seed (SHA-512 of it).
- ``shared_secret``: X25519 of this side's ephemeral and the peer's; an all-zero result (a
  small-order point) is refused, so a peer cannot force a secret everyone knows.
- ``decoy_key``: a refused HELLO is answered with an AUTH sealed under this secret instead of
  ``auth_key``, as long and as costly as a real one, so a refusal at HELLO says nothing.
- ``Keys``: HKDF over ``shared || auth_key[e]``, salted with the hash of both HELLOs (and so of
  both ephemerals), gives, per direction, a ChaCha20-Poly1305 key for the AUTH payload (node
  id, signature, name, relay flag) and one for every later frame. Opening the peer's AUTH
  proves it knows ``auth_key`` *and* that it wrote this AUTH for the other direction, so a
  reflected AUTH fails. Without the ephemeral secret, ``auth_key`` alone (every member's, every
  relay's, a removed device's until the keys rotate) opens nothing: a recorded session stays
  sealed, and an insider in the path who swaps the ephemerals for its own makes the two sides'
  transcripts differ, so each side's signature fails at the other.
- ``FrameSeal``: after AUTH every frame is ``ChaCha20-Poly1305(k_dir, nonce = counter u64,
  msgpack)``, the counter implicit per direction from 0, so a forged, dropped, reordered or
  replayed frame fails its 16-byte tag. An AEAD rather than the HMAC-only ``msgpack ||
  HMAC(k, counter || msgpack)[:16]``: the same 16 bytes a frame and no slower (ChaCha20 runs at
  over 1 GB/s, faster than HMAC-SHA256), and it also hides the envelope headers (space id,
  authors, seqs) and blob ids from whoever watches the wire, which a MAC alone would leave in
  clear and so undo what the HELLO hides. 16 bytes (128 bits) suffice because a session dies at
  the first bad tag: a forger gets one guess per handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HELLO_TAG_SIZE = 16
FRAME_TAG_SIZE = 16
EPHEMERAL_SIZE = 32
AUTH_PLAINTEXT_SIZE = 512  # padded: the ciphertext's length says nothing about the name
_NONCE = b"\x00" * 12  # each AUTH key seals exactly one message


def hello_tag(auth_key: bytes, challenge: bytes, ephemeral: bytes) -> bytes:
    """The HELLO's proof of membership, bound to its fresh challenge and ephemeral key."""
    message = b"syncq-hello-v1" + challenge + ephemeral
    return hmac.new(auth_key, message, hashlib.sha256).digest()[:HELLO_TAG_SIZE]


def ephemeral_private(signing_seed: bytes, challenge: bytes) -> bytes:
    """This session's X25519 private key: secret as the seed, fresh as the challenge."""
    return hmac.new(signing_seed, b"syncq-ephemeral-v1" + challenge, hashlib.sha256).digest()


def decoy_key(signing_seed: bytes, challenge: bytes) -> bytes:
    """What stands for ``auth_key`` when the peer's HELLO is refused: the AUTH sealed with it
    looks like a real one, and nobody can open it."""
    return hmac.new(signing_seed, b"syncq-decoy-v1" + challenge, hashlib.sha256).digest()


def ephemeral_public(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of ``private``."""
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def shared_secret(private: bytes, peer_public: bytes) -> bytes | None:
    """The X25519 secret of this side's key and the peer's, or None for a small-order point (an
    all-zero secret, which anyone could compute)."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError:  # OpenSSL refuses a small-order point itself
        return None
    return None if hmac.compare_digest(shared, bytes(32)) else shared


def transcript_hash(initiator_hello: bytes, responder_hello: bytes) -> bytes:
    """What both sides' keys and signatures are bound to: both HELLOs, in role order."""
    return hashlib.sha256(
        b"syncq-auth-v2\x00"
        + hashlib.sha256(initiator_hello).digest()
        + hashlib.sha256(responder_hello).digest()
    ).digest()


def signed_text(role: bytes, transcript: bytes) -> bytes:
    """What a node signs with its Ed25519 key: its role and the transcript."""
    return b"syncq-auth-v2-sig\x00" + role + transcript


def _derive(secret: bytes, transcript: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=transcript, info=b"syncq-v2 " + label).derive(secret)


@dataclass(frozen=True, slots=True)
class Keys:
    """One direction's keys of one session (``role`` is the sender's): ``seal`` for its AUTH,
    ``frames`` for every frame after it."""

    seal: bytes
    frames: bytes

    @classmethod
    def derive(cls, auth_key: bytes, shared: bytes, transcript: bytes, role: bytes) -> Keys:
        """Keys for the frames that ``role`` sends: both the ephemeral secret ``shared`` and
        ``auth_key`` go in, so neither alone opens anything."""
        secret = shared + auth_key
        return cls(
            seal=_derive(secret, transcript, b"auth " + role),
            frames=_derive(secret, transcript, b"frames " + role),
        )


def seal_auth(keys: Keys, transcript: bytes, plaintext: bytes) -> bytes:
    """The AUTH payload, padded to a fixed size and sealed. Raises ``ValueError`` if too long."""
    if len(plaintext) > AUTH_PLAINTEXT_SIZE - 2:
        raise ValueError("AUTH payload too long")
    padded = struct.pack(">H", len(plaintext)) + plaintext
    padded += b"\x00" * (AUTH_PLAINTEXT_SIZE - len(padded))
    return ChaCha20Poly1305(keys.seal).encrypt(_NONCE, padded, transcript)


def open_auth(keys: Keys, transcript: bytes, sealed: bytes) -> bytes | None:
    """The AUTH payload, or None if it was not sealed with these keys for this transcript."""
    try:
        padded = ChaCha20Poly1305(keys.seal).decrypt(_NONCE, sealed, transcript)
    except InvalidTag:
        return None
    if len(padded) != AUTH_PLAINTEXT_SIZE:
        return None
    (length,) = struct.unpack(">H", padded[:2])
    return padded[2 : 2 + length] if length <= AUTH_PLAINTEXT_SIZE - 2 else None


class FrameSeal:
    """One direction's frames after AUTH: sealed with ChaCha20-Poly1305 under that direction's
    key, the nonce an implicit counter from 0. A forged, altered, dropped, reordered or replayed
    frame fails its tag (compared in constant time by the AEAD)."""

    __slots__ = ("_aead", "_counter")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def _nonce(self) -> bytes:
        return struct.pack(">4xQ", self._counter)

    def seal(self, body: bytes) -> bytes:
        """``body`` sealed; the counter moves on."""
        frame = self._aead.encrypt(self._nonce(), body, None)
        self._counter += 1
        return frame

    def open(self, frame: bytes) -> bytes | None:
        """The body of the next frame, or None if it is not the next one the peer sealed; the
        counter moves on only for a good frame."""
        if len(frame) < FRAME_TAG_SIZE:
            return None
        try:
            body = self._aead.decrypt(self._nonce(), frame, None)
        except InvalidTag:
            return None
        self._counter += 1
        return body
