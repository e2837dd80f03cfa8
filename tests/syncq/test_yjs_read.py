"""The Yjs update reader must find exactly the values pycrdt applies, and refuse what it cannot
read, never raising anything else."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from syncq import yjs
from syncq.errors import BadUpdate
from syncq.yjs import encode_map_inserts
from syncq.yjs_read import Inserted, inserted_strings, inserted_values

ROOTS = ("prompts", "results", "nodes")
KEYS = st.sampled_from(["a", "b", "c", "d", "e", "ключ", ""])
TEXTS = st.text(max_size=30)
OTHERS = st.integers(-(2**40), 2**40) | st.booleans() | st.none() | st.lists(TEXTS, max_size=3)

# One write: (root, key, what), what = ("str", s) | ("other", v) | ("map", {k: s}) | ("text", s)
#   | ("del", None) | ("append", s) (to a Text already under the key, else a plain set)
WRITES = st.tuples(
    st.sampled_from(ROOTS),
    KEYS,
    st.one_of(
        st.tuples(st.just("str"), TEXTS),
        st.tuples(st.just("other"), OTHERS),
        st.tuples(st.just("map"), st.dictionaries(KEYS, TEXTS, max_size=3)),
        st.tuples(st.just("text"), TEXTS),
        st.tuples(st.just("del"), st.none()),
        st.tuples(st.just("append"), TEXTS),
    ),
)
# Several transactions, each writing a key at most once (so no value is overwritten inside the
# transaction that wrote it: such a value is in the update but never seen by an observer).
ROUNDS = st.lists(
    st.lists(WRITES, max_size=6).map(lambda ws: list({(r, k): (r, k, w) for r, k, w in ws}.values())),
    min_size=1,
    max_size=5,
)


def write(doc: Doc[Any], root: str, key: str, what: tuple[str, Any]) -> None:
    target = doc.get(root, type=Map)
    kind, value = what
    if kind == "del":
        target.pop(key, None)
    elif kind == "map":
        target[key] = Map(value)
    elif kind == "text":
        target[key] = Text(value)
    elif kind == "append" and isinstance(target.get(key), Text):
        target[key] += value
    else:
        target[key] = value


def strings_in(value: object) -> list[str]:
    """The string values an observer sees arrive: a plain string, or those of a new nested map."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Map):
        return [s for v in value.values() for s in strings_in(v)]
    return []


@settings(max_examples=300, deadline=None)
@given(rounds=ROUNDS, client=st.integers(1, 2**53 - 1))
def test_the_reader_finds_exactly_the_strings_pycrdt_applies(
    rounds: list[list[tuple[str, str, tuple[str, Any]]]], client: int
) -> None:
    writer: Doc[Any] = Doc(client_id=client)
    reader: Doc[Any] = Doc()
    seen: list[str] = []
    new_keys: set[tuple[str, str]] = set()

    def observer(root: str) -> Any:
        def on_change(event: Any) -> None:
            for key, change in event.keys.items():
                if change["action"] in ("add", "update"):
                    seen.extend(strings_in(change["newValue"]))
                if change["action"] == "add":
                    new_keys.add((root, key))

        return on_change

    subscriptions = [reader.get(r, type=Map).observe(observer(r)) for r in ROOTS]
    for writes in rounds:
        before = writer.get_state()
        with writer.transaction():
            for root, key, what in writes:
                write(writer, root, key, what)
        update = writer.get_update(before)
        seen.clear()
        new_keys.clear()
        found = list(inserted_values(update))
        reader.apply_update(update)
        assert Counter(s for s in inserted_strings(update)) == Counter(seen)
        named = {(v.root, v.key) for v in found if v.root is not None and v.key is not None}
        assert {k for k in named if k[0] in ROOTS and isinstance(_value(found, k), str)} <= new_keys
    assert subscriptions


def _value(found: list[Inserted], key: tuple[str, str]) -> object:
    return next(v.value for v in found if (v.root, v.key) == key)


def test_a_new_key_names_its_map_and_an_overwrite_does_not() -> None:
    doc: Doc[Any] = Doc(client_id=5)
    nodes = doc.get("nodes", type=Map)
    first = _captured(doc, lambda: nodes.__setitem__("n1", '{"node":"n1"}'))
    again = _captured(doc, lambda: nodes.__setitem__("n1", '{"node":"n2"}'))
    assert list(inserted_values(first)) == [Inserted('{"node":"n1"}', "nodes", "n1")]
    assert list(inserted_values(again)) == [Inserted('{"node":"n2"}', None, None)]


def test_blind_inserts_read_back() -> None:
    update = encode_map_inserts(7, 3, "prompts", [("p1", "x"), ("p2", {"a": [1, 2.5, None]})])
    assert list(inserted_values(update)) == [
        Inserted("x", "prompts", "p1"),
        Inserted({"a": [1.0, 2.5, None]}, "prompts", "p2"),
    ]


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_is_refused_with_bad_update_only(data: bytes) -> None:
    with contextlib.suppress(BadUpdate):
        list(inserted_values(data))


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_damaged_real_updates_are_read_or_refused(cut: int, flip: int, bit: int) -> None:
    doc: Doc[Any] = Doc(client_id=9)
    update = _captured(
        doc, lambda: doc.get("results", type=Map).update({"k": '{"node":"x"}', "t": Text("hi")})
    )
    damaged = bytearray(update[: cut % (len(update) + 1)])
    if damaged:
        damaged[flip % len(damaged)] ^= 1 << bit
    with contextlib.suppress(BadUpdate):
        list(inserted_values(bytes(damaged)))


def test_a_forged_count_is_refused_without_looping() -> None:
    # One client claiming 2**60 structs: refused at once, not after a long loop.
    update = bytes([1]) + bytes([0xFF] * 8 + [0x0F]) + bytes([1, 0])
    with pytest.raises(BadUpdate):
        list(inserted_values(update))


def test_reading_costs_little_per_envelope() -> None:
    """Measures the reader on 10k small updates and one 512 KiB batch (numbers in the report)."""
    record = '{"author":"' + "ab" * 32 + '","input":"' + "x" * 300 + '","model":"echo"}'
    small = [encode_map_inserts(i + 1, 0, "prompts", [(f"p{i}", record)]) for i in range(10_000)]
    batch = encode_map_inserts(1, 0, "prompts", [(f"p{i}", record) for i in range(512 * 1024 // len(record))])
    start = time.perf_counter()
    for update in small:
        inserted_strings(update)
    per_small = (time.perf_counter() - start) / len(small)
    start = time.perf_counter()
    inserted_strings(batch)
    per_batch = time.perf_counter() - start
    print(f"reader: {per_small * 1e6:.1f} us per small update, {per_batch * 1e3:.1f} ms per 512 KiB batch")
    assert per_small < 0.001 and per_batch < 0.25  # generous: a shared, loaded CI machine


def _captured(doc: Doc[Any], change: Any) -> bytes:
    before = doc.get_state()
    with doc.transaction():
        change()
    return doc.get_update(before)


def test_json_content_nested_past_the_stack_is_a_bad_update() -> None:
    # json.loads raised RecursionError (not BadUpdate) out of the member's envelope check.
    deep = "[" * 100_000 + "]" * 100_000
    out = bytearray()
    for n in (1, 1, 3, 0):  # one struct group: one item of client 3 at clock 0
        yjs._varuint(out, n)
    out.append(0x20 | 2)  # a parentSub (key) and content ref 2, JSON
    yjs._varuint(out, yjs._PARENT_IS_ROOT_NAME)
    for text in ("prompts", "k"):
        yjs._string(out, text)
    yjs._varuint(out, 1)
    yjs._string(out, deep)
    yjs._varuint(out, 0)  # no delete set
    with pytest.raises(BadUpdate, match="nests too deep"):
        list(inserted_values(bytes(out)))
