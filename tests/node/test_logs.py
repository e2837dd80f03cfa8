"""The node's human log: one event is one line, whatever text its fields carry."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from syncq.node.logs import NodeLog


def human(kind: str, **fields: object) -> list[str]:
    stream = io.StringIO()
    NodeLog(json_lines=False, stream=stream).event(kind, **fields)
    return stream.getvalue().splitlines()


def test_a_folder_name_with_a_newline_cannot_forge_a_line() -> None:
    lines = human("portal-queued", request="x\n12:00:00 connected to laptop\r", prompt="01J")
    assert len(lines) == 1
    assert "x\\n12:00:00 connected to laptop\\r" in lines[0]


@given(text=st.text())
def test_any_field_text_stays_on_its_events_line(text: str) -> None:
    lines = human("portal-rejected", request=text, reason=text)
    assert len(lines) == 1
    assert "\x1b" not in lines[0]


def test_a_traceback_keeps_its_lines_each_indented() -> None:
    lines = human(
        "task-crashed",
        task="portal",
        delay=1.0,
        reason="boom",
        traceback="Traceback\n12:00:00 error: disk full",
    )
    assert lines[1:] == ["    Traceback", "    12:00:00 error: disk full"]
