"""Padding of sealed envelope payloads (PROTOCOL.md, "Envelope", "Padding").

Whoever stores or carries an envelope (a relay, a disk, a watcher of the wire, who sees the
size of each ENVELOPES frame) learns its length, and without padding that is the length of its
Yjs update: a prompt's or a result's size, to the byte. So before the AEAD seals a payload it
becomes::

    padded = length u32 big-endian || payload || zero bytes        (padded_size(length) bytes)

``padded_size`` is at least a floor, which the writer picks by what the envelope carries
(``Floor``), never by its size:

- ``Floor.CONTENT`` (2 KiB) for anything that may carry a prompt or a result (adds, results, a
  run at once's prompt, claim and result together) and for anything not marked otherwise: a
  10-byte and a 900-byte prompt (whose update is about 1150 bytes: a prompt record carries a
  model, an author and a time besides its text) look alike;
- ``Floor.SMALL`` (512 bytes) only for records that the writer marks content-free or that are a
  stream's next words (``syncq.log``: claims and their heartbeats, presence, cancels, retries,
  stream chunks, device, name and invite records): at 10 chunks a second, a streamed answer
  costs 6.7 KB/s, not 22. Their updates measure 14 to 470 bytes (``benchmarks/local.py``), so
  the floor hides which of them an envelope is, and the length of each chunk of tokens.

A watcher learns the class (an envelope of the small floor carries no prompt and no result),
not the size within the floor. Above the floor it is PADMÉ (Nikitin et al., "Reducing Metadata
Leakage from Encrypted Files and Communication with PURBs", PETS 2019): the length rounded up so
that only its top ``floor(log2 E) + 1`` bits below the leading one may be set, E =
``floor(log2 L)``. A watcher then reads E and those few bits, O(log log L) bits of the length,
for at most 6.25% more bytes and 3.1% above 64 KiB; powers of two would leave E alone to read
but cost up to 100%. PADMÉ alone would not hide short prompts: with no floor, the 10-byte and
900-byte prompts' updates (259 and 1149 bytes with the length field) fall in buckets 272 and
1152.

``PAD_LIMIT`` caps padding so that an envelope never leaves a frame because of it: a payload
that fits below the limit is padded to at most the limit, and one above it gets its 4-byte
length and nothing more (such an envelope is within 4 bytes of what it was unpadded).
"""

from __future__ import annotations

import struct
from enum import IntEnum

from syncq.errors import BadUpdate

__all__ = ["LENGTH_SIZE", "PAD_LIMIT", "Floor", "pad", "padded_size", "padme", "unpad"]

_LENGTH = struct.Struct(">I")
LENGTH_SIZE = _LENGTH.size  # 4


class Floor(IntEnum):
    """The smallest padded payload of an envelope, by what it carries (the writer says)."""

    SMALL = 512  # content-free records and stream chunks only (syncq.log marks them)
    CONTENT = 2048  # prompts, results, and every write not marked small: the default


# The largest padded payload: an envelope of it (crypto.OVERHEAD more) in an ENVELOPES frame
# (about 40 bytes more) stays under frames.MAX_FRAME_SIZE, 8 MiB (tests/syncq/test_padding.py).
PAD_LIMIT = 8 * 1024 * 1024 - 4096


def padme(length: int) -> int:
    """``length`` rounded up by PADMÉ: its low ``E - S`` bits cleared, E = floor(log2 length),
    S = floor(log2 E) + 1. Raises ``ValueError`` for a negative length."""
    if length < 0:
        raise ValueError("a length is at least 0")
    if length < 2:
        return length
    exponent = length.bit_length() - 1
    mask = (1 << (exponent - exponent.bit_length())) - 1
    return (length + mask) & ~mask


def padded_size(length: int, floor: Floor = Floor.CONTENT) -> int:
    """How many bytes a payload of ``length`` bytes is padded to, its length field included,
    at ``floor``. Raises ``ValueError`` for a negative length, one that a u32 cannot hold, or a
    floor that is not a ``Floor``."""
    if not 0 <= length < 1 << 32:
        raise ValueError(f"a payload of {length} bytes cannot be padded")
    inner = LENGTH_SIZE + length
    if inner > PAD_LIMIT:
        return inner
    return min(max(Floor(floor), padme(inner)), PAD_LIMIT)


def pad(payload: bytes, floor: Floor = Floor.CONTENT) -> bytes:
    """``payload`` with its length in front and zero bytes behind, ``padded_size`` at ``floor``
    in all. Raises ``ValueError`` as ``padded_size`` does."""
    size = padded_size(len(payload), floor)
    return _LENGTH.pack(len(payload)) + payload + bytes(size - LENGTH_SIZE - len(payload))


def unpad(padded: bytes) -> bytes:
    """The payload ``pad`` wrapped. Any total length is read, whatever floor its writer chose
    (floors and buckets may change without a new envelope version), but the length field must
    fit and every byte after the payload must be zero. Raises ``BadUpdate``."""
    if len(padded) < LENGTH_SIZE:
        raise BadUpdate(f"a padded payload of {len(padded)} bytes has no length field")
    (length,) = _LENGTH.unpack_from(padded)
    end = LENGTH_SIZE + length
    if end > len(padded):
        raise BadUpdate(f"padding names a {length}-byte payload in {len(padded) - LENGTH_SIZE} bytes")
    if padded.count(0, end) != len(padded) - end:
        raise BadUpdate("padding holds bytes other than zero")
    return padded[LENGTH_SIZE:end]
