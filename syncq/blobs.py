"""Attachments: content ids, chunk sealing and the reference records carry (PROTOCOL.md, "Blobs").

A file is cut into 1 MiB chunks, each sealed on its own so that a transfer can resume chunk by
chunk and a bad chunk is refetched alone::

    id        = HMAC-SHA256(blob_id_key[e], plaintext)                      (32 bytes)
    key       = HMAC-SHA256(blob_key[e], id)                                (one key per blob)
    chunk i   = ChaCha20-Poly1305(key, nonce = i as 12 bytes, chunk, aad)   aad = "syncq-blob-v1" id size i
    tag i     = HMAC-SHA256(auth_key[e], aad || chunk i sealed)             (what a relay can check)

The id is keyed, so a relay cannot confirm a guess of a file's content, yet equal files get one
id and are stored once. The key and nonces follow from the id alone, so sealing is deterministic:
two devices that add the same file produce the same chunks, and a nonce never repeats under a key
with different plaintext (one key per content). Relays hold only ``auth_key``: the tag lets them
refuse a chunk damaged or forged on the way without being able to read it; a member checks the
AEAD as well, and the whole file's id once it has every chunk.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from syncq.crypto import TAG_SIZE, SpaceKeys, hkdf
from syncq.errors import BadTag, InvalidInput, MalformedRecord

CHUNK_SIZE = 1024 * 1024
MAX_BLOB_SIZE = 512 * 1024 * 1024  # default limit per file; a node may set its own
MAX_FILES = 16  # attachments per prompt or result
MAX_NAME_BYTES = 255
ID_SIZE = 32
RELAY_TAG_SIZE = 32
_AAD = struct.Struct(">13s32sQI")


def chunk_count(size: int) -> int:
    """How many chunks a blob of ``size`` bytes has (an empty file has one empty chunk)."""
    return max(1, -(-size // CHUNK_SIZE))


def chunk_length(size: int, index: int) -> int:
    """The plaintext length of chunk ``index`` of a blob of ``size`` bytes."""
    return min(CHUNK_SIZE, size - index * CHUNK_SIZE)


@dataclass(frozen=True, slots=True)
class BlobRef:
    """An attachment as a prompt or result names it: enough to fetch, check and save it."""

    id: str  # hex of the 32-byte content id
    name: str  # file name (no folders)
    size: int
    epoch: int = 0

    @classmethod
    def by_id(cls, raw_id: bytes, size: int, epoch: int) -> BlobRef:
        """A reference known only by its id (a want, a relay's copy): named by its id's start."""
        return cls(id=raw_id.hex(), name=raw_id.hex()[:12], size=size, epoch=epoch)

    @property
    def raw_id(self) -> bytes:
        """The id as bytes, as the wire carries it."""
        return bytes.fromhex(self.id)

    @property
    def chunks(self) -> int:
        """How many chunks it has."""
        return chunk_count(self.size)

    def to_wire(self) -> dict[str, object]:
        """The dict inside a record's ``files`` list."""
        return {"id": self.id, "name": self.name, "size": self.size, "epoch": self.epoch}

    @classmethod
    def from_wire(cls, wire: object) -> BlobRef:
        """Check and convert. Raises ``MalformedRecord``."""
        if not isinstance(wire, dict):
            raise MalformedRecord("a file reference is not an object")
        blob_id, name, size, epoch = (wire.get(k) for k in ("id", "name", "size", "epoch"))
        if not isinstance(blob_id, str) or len(blob_id) != 2 * ID_SIZE:
            raise MalformedRecord("a file reference has a bad id")
        try:
            bytes.fromhex(blob_id)
        except ValueError as exc:
            raise MalformedRecord("a file reference has a bad id") from exc
        if not isinstance(name, str) or not _safe_name(name):
            raise MalformedRecord(f"a file reference has a bad name {name!r}")
        if not (_count(size) and _count(epoch)):
            raise MalformedRecord("a file reference has a bad size or epoch")
        return cls(id=blob_id, name=name, size=size, epoch=epoch)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_name(name: str) -> str:
    """Refuse a file name that could escape the folder it is saved into. Raises ``InvalidInput``."""
    if not _safe_name(name):
        raise InvalidInput(f"{name!r} cannot be an attachment's name (no folders, at most 255 bytes)")
    return name


def _safe_name(name: str) -> bool:
    return (
        0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
    )


class Sealer:
    """Blob ids and chunk sealing under one epoch's keys of a space."""

    def __init__(self, keys: SpaceKeys, epoch: int | None = None) -> None:
        self.epoch = keys.epoch if epoch is None else epoch
        secret = keys.secrets.get(self.epoch)
        # A relay has no secret: it may only check relay tags.
        self._id_key = hkdf(secret, f"blob-id {self.epoch}") if secret else b""
        self._blob_key = hkdf(secret, f"blob {self.epoch}") if secret else b""
        self._auth_key = keys.auth_key(self.epoch)

    def hasher(self) -> hmac.HMAC:
        """A running HMAC: feed it the plaintext, ``digest()`` is the blob id."""
        return hmac.new(self._id_key, digestmod=hashlib.sha256)

    def seal(self, blob_id: bytes, size: int, index: int, chunk: bytes) -> tuple[bytes, bytes]:
        """Seal chunk ``index``: (ciphertext, relay tag)."""
        aad = _aad(blob_id, size, index)
        sealed = ChaCha20Poly1305(self._chunk_key(blob_id)).encrypt(_nonce(index), chunk, aad)
        return sealed, self.tag(blob_id, size, index, sealed)

    def tag(self, blob_id: bytes, size: int, index: int, sealed: bytes) -> bytes:
        """The relay tag of a sealed chunk."""
        mac = hmac.new(self._auth_key, _aad(blob_id, size, index), hashlib.sha256)
        mac.update(sealed)  # not aad + sealed: that would copy a MiB per chunk
        return mac.digest()

    def check_tag(self, blob_id: bytes, size: int, index: int, sealed: bytes, tag: bytes) -> bool:
        """Whether a sealed chunk is as its writer made it (constant time)."""
        return hmac.compare_digest(self.tag(blob_id, size, index, sealed), tag)

    def open(self, blob_id: bytes, size: int, index: int, sealed: bytes) -> bytes:
        """Decrypt chunk ``index`` and check its length. Raises ``BadTag``."""
        if len(sealed) != chunk_length(size, index) + TAG_SIZE:
            raise BadTag(f"chunk {index} of blob {blob_id.hex()[:12]} has the wrong length")
        try:
            return ChaCha20Poly1305(self._chunk_key(blob_id)).decrypt(
                _nonce(index), sealed, _aad(blob_id, size, index)
            )
        except InvalidTag as exc:
            raise BadTag(f"chunk {index} of blob {blob_id.hex()[:12]} fails authentication") from exc

    def _chunk_key(self, blob_id: bytes) -> bytes:
        return hmac.new(self._blob_key, blob_id, hashlib.sha256).digest()


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(blob_id: bytes, size: int, index: int) -> bytes:
    return _AAD.pack(b"syncq-blob-v1", blob_id, size, index)
