"""The handshake's cryptography and the per-frame MAC of a session (PROTOCOL.md, "Sync").

Pure functions of their inputs (no randomness: the challenge is given in), kept apart from the
state machine in ``syncq.protocol`` so each stays readable:

- ``hello_tag``: HELLO carries ``HMAC(auth_key[e], "syncq-hello-v1" || challenge)[:16]``
  instead of the space id, so a stranger who connects learns nothing that links two HELLOs
  (or a HELLO and an mDNS record) to one space; a member checks it against every epoch it knows.
- ``Keys``: HKDF over ``auth_key[e]`` and the hash of both HELLOs gives, per direction, a
  ChaCha20-Poly1305 key for the AUTH payload (node id, signature, name, relay flag) and an
  HMAC key for every later frame. Opening the peer's AUTH proves it knows ``auth_key`` *and*
  that it wrote this AUTH for the other direction, so a reflected AUTH fails.
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
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HELLO_TAG_SIZE = 16
FRAME_TAG_SIZE = 16
AUTH_PLAINTEXT_SIZE = 512  # padded: the ciphertext's length says nothing about the name
_NONCE = b"\x00" * 12  # each AUTH key seals exactly one message


def hello_tag(auth_key: bytes, challenge: bytes) -> bytes:
    """The HELLO's proof of membership, bound to its fresh challenge."""
    return hmac.new(auth_key, b"syncq-hello-v1" + challenge, hashlib.sha256).digest()[:HELLO_TAG_SIZE]


def hello_epoch(auth_keys: Mapping[int, bytes], challenge: bytes, tag: bytes) -> int | None:
    """The epoch whose key made ``tag``, or None. Every epoch is checked, in constant time each,
    so the time taken does not say which one matched."""
    found = None
    for epoch, key in sorted(auth_keys.items()):
        if hmac.compare_digest(hello_tag(key, challenge), tag):
            found = epoch
    return found


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


def _derive(auth_key: bytes, transcript: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=transcript, info=b"syncq-v2 " + label).derive(auth_key)


@dataclass(frozen=True, slots=True)
class Keys:
    """One direction's keys of one session (``role`` is the sender's): ``seal`` for its AUTH,
    ``frames`` for every frame after it."""

    seal: bytes
    frames: bytes

    @classmethod
    def derive(cls, auth_key: bytes, transcript: bytes, role: bytes) -> Keys:
        """Keys for the frames that ``role`` sends."""
        return cls(
            seal=_derive(auth_key, transcript, b"auth " + role),
            frames=_derive(auth_key, transcript, b"frames " + role),
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
