"""The sync protocol's frames: types, close codes, limits, and the checks of their shapes.

Pure: ``unpack`` turns untrusted bytes into a frame type and its fields, or raises
``Violation`` with the close code to use; the shape helpers do the same for each field. Only
``syncq.protocol`` catches ``Violation``: it never reaches a caller (PROTOCOL.md, "Sync").
"""

from __future__ import annotations

import enum
from typing import Any

import msgpack

from syncq.blobs import ID_SIZE, chunk_count
from syncq.crypto import MAX_ENVELOPE_SIZE

PROTOCOL_VERSION = 4  # 4: snapshots (SNAPSHOT, and HAVE names those held); 3: four HELLO tags
MAX_FRAME_SIZE = 8 * 1024 * 1024  # websocket max_size after AUTH; ENVELOPES batches stay below it
MAX_HANDSHAKE_FRAME = 64 * 1024  # before AUTH (and every HAVE): a stranger's frames stay small
MAX_BATCH_ENVELOPES = 1000
MAX_AUTHORS = 100_000
MAX_HAVE_AUTHORS = 1000  # per HAVE frame (about 43 KiB): a longer vector takes several
MAX_NAME = 64
MAX_HOPS = 3  # how far a WANT_BLOB may travel through nodes that lack the blob
MAX_BLOB_BYTES = 1 << 40  # what the wire admits; each node refuses more than its own blob_limit
MAX_WANT = 16  # chunk indices per WANT_BLOB / NO_BLOB
MAX_HELD_SNAPSHOTS = 8  # digests a HAVE names: the snapshots its sender holds
SNAPSHOT_PART = 4 * 1024 * 1024  # bytes of a snapshot per SNAPSHOT frame


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
    JOIN_HELLO = 12  # the join handshake (syncq.joining), never in a sync session
    JOIN_REQUEST = 13
    JOIN_GRANT = 14
    JOIN_REFUSED = 15
    SNAPSHOT = 16  # one part of a snapshot (syncq.snapshots)


class CloseCode(enum.IntEnum):
    """Websocket close codes a session fails with."""

    NORMAL = 1000
    MALFORMED = 4400  # not msgpack, unknown type, wrong shape
    AUTH_FAILED = 4401  # wrong space, bad key or signature: not one of us
    BAD_ENVELOPE = 4403  # an envelope failed verification
    TIMEOUT = 4408  # the handshake did not finish in time (driver)
    OUT_OF_ORDER = 4409  # a frame the current state does not accept
    NOT_LISTED = 4410  # the peer's device is removed or not on the device list
    BAD_TAG = 4412  # a frame after AUTH failed its tag: forged, dropped, reordered or replayed
    TOO_LARGE = 4413  # a frame or a field over its limit
    VERSION = 4426  # another protocol version
    BUSY = 4429  # too many connections are still in their handshake (driver)
    UNAVAILABLE = 4503  # local storage failed: nothing acknowledged (driver)


class Violation(Exception):
    """A peer's frame broke the protocol (caught by the session; never escapes it). ``told`` is
    what the peer is told, where that must say less than ``reason`` (logged here)."""

    def __init__(self, code: CloseCode, reason: str, told: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.told = told


def pack(message: list[Any]) -> bytes:
    """One frame's msgpack bytes."""
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def unpack(frame: bytes, limit: int = MAX_FRAME_SIZE) -> tuple[Frame, list[Any]]:
    """The type and fields of an untrusted frame. Raises ``Violation``."""
    if not isinstance(frame, bytes):
        raise Violation(CloseCode.MALFORMED, "frames are binary")
    if len(frame) > limit:
        raise Violation(CloseCode.TOO_LARGE, f"frame of {len(frame)} bytes")
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
        raise Violation(CloseCode.MALFORMED, f"not a msgpack frame: {type(exc).__name__}") from exc
    if not isinstance(message, list) or not message or isinstance(message[0], bool):
        raise Violation(CloseCode.MALFORMED, "unknown frame type")
    if message[0] not in Frame._value2member_map_:
        raise Violation(CloseCode.MALFORMED, "unknown frame type")
    return Frame(message[0]), message[1:]


def whole(value: object) -> bool:
    """Whether ``value`` is a non-negative int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def blob_header(blob_id: object, size: object, epoch: object) -> None:
    """Check a blob frame's id, size and epoch. Raises ``Violation``."""
    check_bytes(blob_id, ID_SIZE, "blob id")
    if not whole(size) or size > MAX_BLOB_BYTES or not whole(epoch) or epoch >= 1 << 32:  # type: ignore[operator]
        raise Violation(CloseCode.TOO_LARGE, "bad blob size or epoch")


def indices(values: object, size: int) -> None:
    """Check 1 to ``MAX_WANT`` chunk indices of a blob of ``size`` bytes. Raises ``Violation``."""
    if not isinstance(values, list) or not 0 < len(values) <= MAX_WANT:
        raise Violation(CloseCode.MALFORMED, f"1 to {MAX_WANT} chunk indices")
    count = chunk_count(size)
    if not all(whole(i) and i < count for i in values):
        raise Violation(CloseCode.MALFORMED, "a chunk index out of range")


def shape(body: list[Any], n: int) -> None:
    """Check a frame's field count. Raises ``Violation``."""
    if len(body) != n:
        raise Violation(CloseCode.MALFORMED, f"expected {n} fields, got {len(body)}")


def check_bytes(value: object, size: int, what: str) -> None:
    """Check a fixed-size bytes field. Raises ``Violation``."""
    if not isinstance(value, bytes) or len(value) != size:
        raise Violation(CloseCode.MALFORMED, f"bad {what}")
