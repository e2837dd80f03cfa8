"""Key epochs: the keys envelope that starts one, and the box that seals a key to one device
(PROTOCOL.md, "Key epochs").

When a device is removed, a member draws a new secret and a new epoch id (a random u32; see
``SpaceKeys``) and writes a keys envelope (kind 3), in the clear so relays can read their part,
signed like every envelope::

    payload  = msgpack [generation, epoch, [excluded device 32B...], ephemeral 32B,
                        [[recipient 32B, box 48B]...]]
    box      = ChaCha20-Poly1305(k, nonce 0, value, aad = "syncq-keys-v1" || space_id || epoch
                                  || recipient)
    k        = HKDF(X25519(ephemeral, recipient's X25519 key), "syncq v1 box " ...)

A member's box holds the epoch's secret, a relay's its admission key only. ``excluded`` lists
every device removed in the author's device list when it rotated: an epoch is *tainted* (some
device removed now may hold it) when a removed device is missing there, and a member then
rotates again (``tainted``). The ephemeral key is one per envelope (its seed is an argument:
this module draws no randomness), so a box opens only with the recipient's X25519 key.

The same box carries a joining device's keys in its grant (``syncq.invite``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from syncq.crypto import NONCE_SIZE, DeviceKeys, Envelope, Kind, hkdf, sign_clear
from syncq.errors import BadKeys
from syncq.handshake import ephemeral_public, shared_secret
from syncq.ids import SpaceId

LABEL = b"syncq-keys-v1"
KEY_SIZE = 32
BOX_SIZE = KEY_SIZE + 16
MAX_RECIPIENTS = 256
MAX_EPOCH_ID = (1 << 32) - 1
MAX_GENERATION = 1 << 20
_NONCE = bytes(12)  # each box key seals exactly one message


@dataclass(frozen=True, slots=True, kw_only=True)
class Rotation:
    """What a keys envelope says."""

    generation: int
    epoch: int
    excluded: frozenset[bytes]
    ephemeral: bytes
    boxes: Mapping[bytes, bytes]  # recipient -> box


public_of = ephemeral_public  # the raw X25519 public key of a 32-byte private key


def usable(exchange: bytes) -> bool:
    """Whether ``exchange`` is an X25519 key a box can be sealed to: not a small-order point
    (whose shared secret everyone knows; OpenSSL refuses to compute it)."""
    return shared_secret(bytes([9]) * 32, exchange) is not None  # any private key tells


def _box_key(shared: bytes, space_id: SpaceId, epoch: int, recipient: bytes) -> bytes:
    return hkdf(shared + bytes.fromhex(space_id) + struct.pack(">I", epoch) + recipient, "box")


def _aad(space_id: SpaceId, epoch: int, recipient: bytes) -> bytes:
    return LABEL + bytes.fromhex(space_id) + struct.pack(">I", epoch) + recipient


def box(
    ephemeral_seed: bytes, exchange: bytes, *, space_id: SpaceId, epoch: int, recipient: bytes, value: bytes
) -> bytes:
    """``value`` sealed to the holder of the X25519 key ``exchange`` (device ``recipient``).
    Raises ``ValueError`` for a key that is not ``usable``."""
    shared = shared_secret(ephemeral_seed, exchange)
    if shared is None:
        raise ValueError("not a usable X25519 key")
    key = _box_key(shared, space_id, epoch, recipient)
    return ChaCha20Poly1305(key).encrypt(_NONCE, value, _aad(space_id, epoch, recipient))


def unbox(
    device: DeviceKeys, ephemeral: bytes, sealed: bytes, *, space_id: SpaceId, epoch: int
) -> bytes | None:
    """What ``box`` sealed to ``device``, or None if it was not sealed to it (or was altered)."""
    shared = shared_secret(device.exchange_seed, ephemeral)
    if shared is None:
        return None
    key = _box_key(shared, space_id, epoch, device.public_key)
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, sealed, _aad(space_id, epoch, device.public_key))
    except InvalidTag:
        return None


def seal_rotation(
    *,
    device: DeviceKeys,
    space_id: SpaceId,
    seq: int,
    generation: int,
    epoch: int,
    excluded: Iterable[bytes],
    recipients: Mapping[bytes, tuple[bytes, bytes]],
    ephemeral_seed: bytes,
) -> bytes:
    """Keys envelope ``seq`` of ``device`` starting ``epoch``: for each recipient (device ->
    (its X25519 key, the value for it: a member's secret, a relay's admission key)) a box."""
    if not 1 <= epoch <= MAX_EPOCH_ID or not 1 <= generation <= MAX_GENERATION:
        raise ValueError("epoch ids are u32 from 1, generations from 1")
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise ValueError(f"a rotation has 1 to {MAX_RECIPIENTS} recipients")
    boxes = [
        [
            recipient,
            box(ephemeral_seed, exchange, space_id=space_id, epoch=epoch, recipient=recipient, value=v),
        ]
        for recipient, (exchange, v) in sorted(recipients.items())
    ]
    payload = msgpack.packb(
        [generation, epoch, sorted(excluded), public_of(ephemeral_seed), boxes], use_bin_type=True
    )
    return sign_clear(device=device, space_id=space_id, epoch=epoch, seq=seq, kind=Kind.KEYS, payload=payload)


def open_rotation(envelope: Envelope) -> Rotation:
    """What a (verified) keys envelope says. Raises ``BadKeys``."""
    if envelope.kind is not Kind.KEYS or envelope.nonce != bytes(NONCE_SIZE):
        raise BadKeys("not a keys envelope")
    try:
        body = msgpack.unpackb(
            envelope.ciphertext,
            raw=False,
            max_bin_len=64,
            max_str_len=0,
            max_array_len=MAX_RECIPIENTS,
            max_map_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadKeys("a keys envelope is not msgpack") from exc
    if not isinstance(body, list) or len(body) != 5:
        raise BadKeys("a keys envelope is [generation, epoch, excluded, ephemeral, boxes]")
    generation, epoch, excluded, ephemeral, boxes = body
    if not _whole(generation, 1, MAX_GENERATION) or not _whole(epoch, 1, MAX_EPOCH_ID):
        raise BadKeys("bad generation or epoch")
    if epoch != envelope.epoch:
        raise BadKeys("a keys envelope's epoch differs from its header's")
    if not isinstance(excluded, list) or not all(_key(d) for d in excluded):
        raise BadKeys("bad excluded devices")
    if not _key(ephemeral) or not isinstance(boxes, list) or not boxes:
        raise BadKeys("bad ephemeral key or boxes")
    found: dict[bytes, bytes] = {}
    for item in boxes:
        if not (isinstance(item, list) and len(item) == 2 and _key(item[0])):
            raise BadKeys("a box is [recipient, sealed]")
        if not isinstance(item[1], bytes) or len(item[1]) != BOX_SIZE or item[0] in found:
            raise BadKeys("bad or repeated box")
        found[item[0]] = item[1]
    return Rotation(
        generation=generation, epoch=epoch, excluded=frozenset(excluded), ephemeral=ephemeral, boxes=found
    )


def my_key(rotation: Rotation, device: DeviceKeys, space_id: SpaceId) -> bytes | None:
    """The key a rotation holds for ``device``, or None if none was sealed to it."""
    sealed = rotation.boxes.get(device.public_key)
    if sealed is None:
        return None
    return unbox(device, rotation.ephemeral, sealed, space_id=space_id, epoch=rotation.epoch)


def tainted(excluded: frozenset[bytes] | None, removed: Iterable[bytes]) -> bool:
    """Whether a device removed now may hold the epoch whose rotation excluded ``excluded``
    (None: epoch 0, which every device that ever joined holds)."""
    gone = set(removed)
    return bool(gone) and (excluded is None or not gone <= excluded)


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _key(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == KEY_SIZE
