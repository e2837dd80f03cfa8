"""The hand-written Yjs encoder must write exactly what pycrdt reads back as the same values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Map

from syncq.yjs import encode_map_inserts

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def as_read_back(value: object) -> object:
    """What pycrdt hands back for a stored value: numbers as floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [as_read_back(v) for v in value]
    assert isinstance(value, dict)
    return {k: as_read_back(v) for k, v in value.items()}


@given(
    client=st.integers(min_value=1, max_value=2**53 - 1),
    entries=st.dictionaries(st.text(min_size=1, max_size=12), values, min_size=1, max_size=5),
)
def test_pycrdt_reads_back_every_encoded_insert(client: int, entries: dict[str, object]) -> None:
    doc: Doc = Doc()
    root = doc.get("prompts", type=Map)
    doc.apply_update(encode_map_inserts(client, 0, "prompts", list(entries.items())))
    assert root.to_py() == {k: as_read_back(v) for k, v in entries.items()}


def test_consecutive_updates_of_one_client_continue_its_clock() -> None:
    doc: Doc = Doc()
    root = doc.get("prompts", type=Map)
    first = encode_map_inserts(7, 0, "prompts", [("a", 1), ("b", 2)])
    second = encode_map_inserts(7, 2, "prompts", [("c", 3)])
    doc.apply_update(first)
    doc.apply_update(second)
    assert root.to_py() == {"a": 1.0, "b": 2.0, "c": 3.0}


def test_an_insert_merges_with_a_pycrdt_document() -> None:
    doc: Doc = Doc(client_id=1)
    root = doc.get("prompts", type=Map)
    root["made-by-pycrdt"] = {"x": "y"}
    doc.apply_update(encode_map_inserts(2, 0, "prompts", [("blind", {"n": 1})]))
    assert root.to_py() == {"made-by-pycrdt": {"x": "y"}, "blind": {"n": 1.0}}


@pytest.mark.parametrize("bad", [math.nan, math.inf, object(), {1: "x"}])
def test_values_the_crdt_cannot_hold_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        encode_map_inserts(1, 0, "prompts", [("k", bad)])  # type: ignore[list-item]


def test_an_empty_update_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_map_inserts(1, 0, "prompts", [])
