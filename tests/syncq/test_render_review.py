"""`syncq log` and `syncq show` print what another member wrote as text, never as rich markup:
the model and a run's node name are another member's too."""

from __future__ import annotations

import contextlib
import io

from syncq.cli import render

from syncq import yjs
from syncq.ids import DeviceId, PromptId, new_prompt_id
from syncq.log import Log
from syncq.records import Prompt, PromptKind, Result, RunStatus, encode

PLANTED = "[link=e.vil]x[/]"  # short enough for log's model column (18)


def test_a_model_and_a_node_name_another_member_wrote_are_printed_as_written() -> None:
    prompt = Prompt(
        id=new_prompt_id(1_700_000_000_000, bytes(10)),
        model=PLANTED,  # Prompt.from_wire takes any text: check_model runs only on add
        kind=PromptKind.LLM,
        input="hello",
        created_at=1_700_000_000_000,
        author=DeviceId("d" * 64),
    )
    result = Result(
        prompt_id=PromptId(prompt.id),
        node="e" * 64,
        node_name=PLANTED,
        attempt=1,
        status=RunStatus.DONE,
        output="hi",
        error=None,
        started_at=1,
        finished_at=2,
    )
    log = Log(client_id=1)
    log.apply(yjs.encode_map_inserts(42, 0, "prompts", [(prompt.id, encode(prompt.to_wire()))]))
    log.apply(yjs.encode_map_inserts(43, 0, "results", [(result.key, encode(result.to_wire()))]))
    entry = log.entry(prompt.id)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        render.log([entry], as_json=False)
    assert PLANTED in printed.getvalue()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        render.show(entry, as_json=False)
    assert printed.getvalue().count(PLANTED) == 2  # the model, and the run's node
