from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncq.errors import AmbiguousId, InvalidInput, UnknownId
from syncq.ids import is_prompt_id, new_prompt_id, next_prompt_id, prompt_id_time_ms, resolve_prefix

times = st.integers(min_value=0, max_value=(1 << 48) - 1)
entropy = st.binary(min_size=10, max_size=10)


@given(times, entropy)
def test_prompt_id_round_trips_its_time(ms: int, rnd: bytes) -> None:
    pid = new_prompt_id(ms, rnd)
    assert is_prompt_id(pid)
    assert prompt_id_time_ms(pid) == ms


@given(times, times, entropy, entropy)
def test_prompt_ids_sort_by_time(a: int, b: int, ra: bytes, rb: bytes) -> None:
    if a < b:
        assert new_prompt_id(a, ra) < new_prompt_id(b, rb)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="entropy"):
        new_prompt_id(1, b"short")
    with pytest.raises(ValueError, match="range"):
        new_prompt_id(-1, bytes(10))
    with pytest.raises(ValueError, match="not a prompt id"):
        prompt_id_time_ms("nope")


IDS = [new_prompt_id(1_700_000_000_000, bytes([i]) * 10) for i in range(3)]


def test_unique_prefix_resolves_case_insensitively() -> None:
    target = IDS[1]
    prefix = next(target[:n] for n in range(1, 27) if sum(i.startswith(target[:n]) for i in IDS) == 1)
    assert resolve_prefix(prefix.lower(), IDS) == target


def test_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(AmbiguousId) as err:
        resolve_prefix(IDS[0][:5], IDS)
    assert set(err.value.candidates) == set(IDS)
    assert IDS[2] in str(err.value)


def test_unknown_prefix_says_so() -> None:
    with pytest.raises(UnknownId, match="no prompt id starts with 'ZZZ'"):
        resolve_prefix("ZZZ", IDS)


@pytest.mark.parametrize("bad", ["", "   ", "01J-X", "01JU"])
def test_malformed_prefix_is_a_user_error(bad: str) -> None:
    with pytest.raises(InvalidInput):
        resolve_prefix(bad, IDS)


@given(times, entropy, entropy, st.integers(min_value=-5, max_value=5))
def test_next_id_sorts_after_the_previous_even_in_the_same_millisecond(
    ms: int, r1: bytes, r2: bytes, step: int
) -> None:
    first = new_prompt_id(ms, r1)
    later = max(0, min(ms + step, (1 << 48) - 1))
    second = next_prompt_id(later, r2, first)
    assert second > first
    assert next_prompt_id(ms, r2, None) == new_prompt_id(ms, r2)
