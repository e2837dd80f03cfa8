"""`syncq log` and `syncq show` of records another device stored: whatever times it wrote, each
device's view prints."""

from __future__ import annotations

import contextlib
import io

from hypothesis import given, settings
from hypothesis import strategies as st
from syncq.cli import render

from syncq import yjs
from syncq.blobs import BlobRef
from syncq.ids import DeviceId, new_prompt_id
from syncq.log import Log
from syncq.records import Prompt, PromptKind, encode


@settings(max_examples=30, deadline=None)
@given(st.integers(-(10**30), 10**30))
def test_a_prompt_created_at_any_time_is_logged_and_shown(created: int) -> None:
    # created_at 10**18 raised ValueError ("year is out of range") out of both, on every device.
    prompt = Prompt(
        id=new_prompt_id(1_700_000_000_000, bytes(10)),
        model="echo",
        kind=PromptKind.LLM,
        input="hello",
        created_at=created,
        author=DeviceId("d" * 64),
    )
    log = Log(client_id=1)
    log.apply(yjs.encode_map_inserts(42, 0, "prompts", [(prompt.id, encode(prompt.to_wire()))]))
    entry = log.entry(prompt.id)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # rich's console writes to sys.stdout as it prints
        render.log([entry], as_json=False)
        render.show(entry, as_json=False)
    assert printed.getvalue().count("hello") == 2


def test_show_prints_another_member_s_params_and_file_names_as_written() -> None:
    # Cells of show's table were read as rich markup ([link=...] planted a hyperlink), and an
    # attachment's name reached the terminal with its escape codes.
    prompt = Prompt(
        id=new_prompt_id(1_700_000_000_000, bytes(10)),
        model="echo",
        kind=PromptKind.LLM,
        input="hello",
        params={"stop": "[link=https://evil.example]here[/link]"},
        files=(BlobRef(id="ab" * 32, name="\x1b]0;owned\x07[red]a.txt", size=3),),
        created_at=1_700_000_000_000,
        author=DeviceId("d" * 64),
    )
    log = Log(client_id=1)
    log.apply(yjs.encode_map_inserts(42, 0, "prompts", [(prompt.id, encode(prompt.to_wire()))]))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        render.show(log.entry(prompt.id), as_json=False)
    text = printed.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "[link=https://evil.example]here[/link]" in text
    assert "\\x1b]0;owned\\x07[red]a.txt" in text
