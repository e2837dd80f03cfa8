"""A minimal Yjs (v1 update format) reader: the values an update inserts, without a Doc.

Why this exists: a member checks what an envelope from elsewhere writes *before* it applies it
(PROTOCOL.md, "Envelope": a record naming another actor than the envelope's author is refused),
and an applied update cannot be taken back. Decoding the update with pycrdt would need a second
Doc; this reader walks the bytes once and yields every value of ``ContentAny`` and
``ContentJSON``, with the root map and key when the update names them (a new key: an item with
no origins), and skips every other content. It is strict: anything it cannot read (an unknown
content or type, a truncated field, bytes after the delete set) raises ``BadUpdate``, so
whatever passes here is something it has fully read.

The format (yjs ``UpdateEncoderV1``, yrs ``encode_v1``)::

    update    = varuint(clients) { varuint(structs) varuint(client) varuint(clock) struct* }*
                delete_set
    struct    = info u8, then: 0 GC varuint(len) | 10 Skip varuint(len) | an item:
    item      = [ID left origin if info & 0x80] [ID right origin if info & 0x40]
                (if neither origin: parent = varuint(1) string(root name) | varuint(0) ID,
                 then string(parentSub) if info & 0x20)
                content by ref = info & 0x1f
    content   = 1 Deleted varuint(len) | 2 JSON varuint(n) string* | 3 Binary buf | 4 String
                string | 5 Embed string | 6 Format string string | 7 Type varuint(ref)
                [string if ref is XmlElement 3 or XmlHook 5] | 8 Any varuint(n) any* |
                9 Doc string any
    delete_set = varuint(clients) { varuint(client) varuint(n) { varuint(clock) varuint(len) }* }*

An overwrite of an existing key carries its left origin and so names neither its map nor its
key: callers must judge a value by its own fields.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from syncq.errors import BadUpdate

_BIT_ORIGIN = 0x80
_BIT_RIGHT_ORIGIN = 0x40
_BIT_PARENT_SUB = 0x20
_GC, _SKIP = 0, 10
_TYPES_WITH_NAME = (3, 5)  # XmlElement, XmlHook
_TYPE_REFS = range(0, 7)  # Array, Map, Text, XmlElement, XmlFragment, XmlHook, XmlText
_MAX_DEPTH = 64  # nested Any values: deep enough for any record, shallow enough for the stack


@dataclass(frozen=True, slots=True)
class Inserted:
    """One value an update inserts: ``root`` and ``key`` are set only for a new key of a root
    map (the item names its parent), else ``None``."""

    value: object
    root: str | None
    key: str | None


def inserted_values(update: bytes) -> Iterator[Inserted]:
    """Every value of ``ContentAny``/``ContentJSON`` in ``update``, in order.

    Raises ``BadUpdate`` if ``update`` is not a Yjs v1 update this reader can read whole.
    """
    reader = _Reader(update)
    for _ in range(reader.varuint()):
        count = reader.varuint()
        reader.varuint()  # client
        reader.varuint()  # first clock
        for _ in range(count):
            yield from reader.struct()
    reader.delete_set()
    if reader.pos != len(update):
        raise BadUpdate(f"{len(update) - reader.pos} bytes after the update")


def inserted_strings(update: bytes) -> list[str]:
    """The string values ``update`` inserts (what our records are). Raises ``BadUpdate``."""
    return [v.value for v in inserted_values(update) if isinstance(v.value, str)]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def struct(self) -> Iterator[Inserted]:
        info = self.byte()
        ref = info & 0x1F
        if ref in (_GC, _SKIP):
            self.varuint()
            return
        has_origin = info & (_BIT_ORIGIN | _BIT_RIGHT_ORIGIN)
        if info & _BIT_ORIGIN:
            self.id()
        if info & _BIT_RIGHT_ORIGIN:
            self.id()
        root = key = None
        if not has_origin:
            if self.varuint() == 1:
                root = self.string()
            else:
                self.id()
            if info & _BIT_PARENT_SUB:
                key = self.string()
        for value in self.content(ref):
            yield Inserted(value, root, key)

    def content(self, ref: int) -> list[object]:
        if ref == 1:  # Deleted
            self.varuint()
        elif ref == 2:  # JSON: each value as JSON text ("undefined" for undefined)
            return [_json(self.string()) for _ in range(self.count())]
        elif ref == 3:  # Binary
            self.take(self.varuint())
        elif ref in (4, 5):  # String, Embed
            self.string()
        elif ref == 6:  # Format
            self.string()
            self.string()
        elif ref == 7:  # Type
            type_ref = self.varuint()
            if type_ref not in _TYPE_REFS:
                raise BadUpdate(f"unknown type ref {type_ref}")
            if type_ref in _TYPES_WITH_NAME:
                self.string()
        elif ref == 8:  # Any
            return [self.any(0) for _ in range(self.count())]
        elif ref == 9:  # Doc
            self.string()
            self.any(0)
        else:
            raise BadUpdate(f"unknown content ref {ref}")
        return []

    def delete_set(self) -> None:
        for _ in range(self.varuint()):
            self.varuint()  # client
            for _ in range(self.varuint()):
                self.varuint()  # clock
                self.varuint()  # length

    def any(self, depth: int) -> object:
        if depth > _MAX_DEPTH:
            raise BadUpdate("values nested too deep")
        tag = self.byte()
        if tag == 119:
            return self.string()
        if tag == 118:
            return {self.string(): self.any(depth + 1) for _ in range(self.count())}
        if tag == 117:
            return [self.any(depth + 1) for _ in range(self.count())]
        if tag in (126, 127):
            return None
        if tag in (120, 121):
            return tag == 120
        if tag == 125:
            return self.varint()
        if tag == 124:
            return float(struct.unpack(">f", self.take(4))[0])
        if tag == 123:
            return float(struct.unpack(">d", self.take(8))[0])
        if tag == 122:
            return int.from_bytes(self.take(8), "big", signed=True)
        if tag == 116:
            return self.take(self.varuint())
        raise BadUpdate(f"unknown value tag {tag}")

    def id(self) -> None:
        self.varuint()
        self.varuint()

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise BadUpdate("update ends early")
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise BadUpdate("update ends early")
        chunk, self.pos = self.data[self.pos : end], end
        return chunk

    def count(self) -> int:
        # Every element takes at least one byte: a count beyond the bytes left is a lie, and
        # refusing it here keeps a forged count from costing a long loop.
        n = self.varuint()
        if n > len(self.data) - self.pos:
            raise BadUpdate("a count exceeds the update's length")
        return n

    def varuint(self) -> int:
        # Most varuints are one byte (lengths, counts, small clocks): that path is inlined,
        # since this is the reader's hottest function (PROTOCOL.md: checked on every receipt).
        pos = self.pos
        if pos < len(self.data) and self.data[pos] < 0x80:
            self.pos = pos + 1
            return self.data[pos]
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7
            if shift > 70:
                raise BadUpdate("varuint too long")

    def varint(self) -> int:
        b = self.byte()
        n, sign, shift = b & 0x3F, -1 if b & 0x40 else 1, 6
        while b & 0x80:
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if shift > 70:
                raise BadUpdate("varint too long")
        return sign * n

    def string(self) -> str:
        size = self.varuint()
        end = self.pos + size
        if end > len(self.data):
            raise BadUpdate("update ends early")
        try:
            text = self.data[self.pos : end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadUpdate("a string is not UTF-8") from exc
        self.pos = end
        return text


def _json(text: str) -> object:
    if text == "undefined":
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadUpdate("JSON content is not JSON") from exc
    except RecursionError as exc:  # json.loads recurses once per level: a hostile member nests
        raise BadUpdate("JSON content nests too deep") from exc
