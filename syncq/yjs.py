"""A minimal Yjs (v1 update format) encoder for blind inserts of new keys into root maps.

Why this exists: importing pycrdt costs about 100 ms, two thirds of the 150 ms budget of a cold
`syncq add`. Adding a prompt writes a *new* key into the root map ``prompts``; such an item has
no left or right origin and depends on nothing else in the document, so its update can be written
without a Doc at all (and without loading a 100k-prompt state first). Every other mutation goes
through pycrdt in ``syncq.log``.

The format (yjs ``UpdateEncoderV1``, yrs ``encode_v1``)::

    update   = varuint(1 client) varuint(n items) varuint(client) varuint(first clock)
               item*  delete_set
    item     = 0x28 (content Any | has parentSub) varuint(1: parent is a root name)
               string(root name) string(key) varuint(1 value) any
    delete_set = varuint(0)

``any`` is lib0's ``writeAny``, with numbers as yrs writes them (float32 when exact, else
float64). Tests check that pycrdt decodes every update this module writes to the same values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import TypeAlias, Union

# A JSON-like value as it is stored in the CRDT.
Value: TypeAlias = Union[bool, int, float, str, Sequence["Value"], Mapping[str, "Value"], None]

_ITEM_INFO = 0x28  # content ref 8 (Any) | 0x20 (parentSub present); no origins
_PARENT_IS_ROOT_NAME = 1


def encode_map_inserts(client: int, clock: int, root: str, entries: Sequence[tuple[str, Value]]) -> bytes:
    """Encode one update that sets ``root[key] = value`` for each new key, in order.

    The items get clocks ``clock .. clock + len(entries) - 1`` of ``client``; the caller must
    never reuse a (client, clock) pair. Raises ``ValueError`` for values the CRDT cannot hold
    (non-finite floats, non-string keys, unsupported types).
    """
    if not entries:
        raise ValueError("an update needs at least one entry")
    out = bytearray()
    _varuint(out, 1)
    _varuint(out, len(entries))
    _varuint(out, client)
    _varuint(out, clock)
    for key, value in entries:
        out.append(_ITEM_INFO)
        _varuint(out, _PARENT_IS_ROOT_NAME)
        _string(out, root)
        _string(out, key)
        _varuint(out, 1)
        _any(out, value)
    _varuint(out, 0)  # empty delete set
    return bytes(out)


def _varuint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("varuint must not be negative")
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)


def _string(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    _varuint(out, len(data))
    out += data


def _any(out: bytearray, value: Value) -> None:
    if value is None:
        out.append(126)
    elif value is True:
        out.append(120)
    elif value is False:
        out.append(121)
    elif isinstance(value, int | float):
        _number(out, float(value))
    elif isinstance(value, str):
        out.append(119)
        _string(out, value)
    elif isinstance(value, Mapping):
        out.append(118)
        _varuint(out, len(value))
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"map keys must be strings, not {type(key).__name__}")
            _string(out, key)
            _any(out, item)
    elif isinstance(value, list | tuple):
        out.append(117)
        _varuint(out, len(value))
        for item in value:
            _any(out, item)
    else:
        raise ValueError(f"cannot store a {type(value).__name__} in the log")


def _number(out: bytearray, number: float) -> None:
    if not math.isfinite(number):
        raise ValueError("numbers in the log must be finite")
    try:
        as_f32 = struct.pack(">f", number)
    except OverflowError:
        as_f32 = b""
    if as_f32 and struct.unpack(">f", as_f32)[0] == number:
        out.append(124)
        out += as_f32
    else:
        out.append(123)
        out += struct.pack(">d", number)
