"""The OpenAI API's translation rules on their own (node/openai_chat.py, node/http_common.py):
no process, no socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syncq.node.http_common import MAX_KEEP_ALIVE_S, keep_alive_seconds

from syncq.errors import InvalidInput


@given(st.integers(0, 200), st.integers(0, 59), st.integers(0, 59))
def test_a_go_duration_is_its_hours_minutes_and_seconds_capped_at_the_maximum(h: int, m: int, s: int) -> None:
    total = min(h * 3600 + m * 60 + s, MAX_KEEP_ALIVE_S)
    assert keep_alive_seconds(f"{h}h{m}m{s}s") == total
    assert keep_alive_seconds(f"{h * 60 + m}m{s}s") == total
    assert keep_alive_seconds(str(h * 3600 + m * 60 + s)) == total
    assert keep_alive_seconds(h * 3600 + m * 60 + s) == total


def test_keep_alive_takes_ollama_s_forms_and_refuses_the_rest() -> None:
    assert keep_alive_seconds("5m") == 300
    assert keep_alive_seconds("1.5h") == 5400
    assert keep_alive_seconds("500ms") == 0.5
    assert keep_alive_seconds(0) == keep_alive_seconds("0") == 0
    for forever in (-1, "-1", "-1m", -0.5, 10**12):
        assert keep_alive_seconds(forever) == MAX_KEEP_ALIVE_S
    for bad in ("5x", "", "m", "5m3", "1h 30m", "--1", True, None, [1], float("nan")):
        with pytest.raises(InvalidInput, match="keep_alive"):
            keep_alive_seconds(bad)
