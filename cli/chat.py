"""`syncq add --system TEXT` and `--continue ID`: a prompt that carries a conversation.

``--continue`` builds a new prompt on a done one: its conversation (or its text, as the one
user turn), its answer (with the tool calls it made) as an assistant turn, then the new user
turn. A chat started on one device goes on from any other, since the whole conversation lives
in the log. The new prompt keeps the old one's tools, output format and stop strings (a tool it
was forced to call is offered, no longer forced: each turn would call it again), not its
params, which are given anew with ``--param``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from syncq import chat
from syncq.errors import UserError
from syncq.lifecycle import Status


def conversation(
    space: Any, text: str, *, system: str | None, continued: str | None
) -> tuple[chat.LlmInput | None, str | None]:
    """The ``llm`` field for `syncq add` (None for a plain prompt), and the model of the prompt
    continued (None when none is). Raises ``UserError``."""
    if continued is None:
        if system is None:
            return None, None
        first = (chat.Message(role="system", content=system), chat.Message(role="user", content=text))
        return chat.LlmInput(messages=first), None
    entry = space.show(continued)
    before, run = entry.prompt, entry.result
    if entry.status is not Status.DONE or run is None:
        raise UserError(
            f"prompt {before.id} is {entry.status.value}: --continue needs a done prompt, whose "
            f"answer the conversation goes on from (`syncq show {before.id[:10]}`)"
        )
    old = before.llm or chat.LlmInput()
    history = chat.continued(old.messages, before.input, run.output, run.tool_calls)
    if system is not None:  # the new system turn replaces the old ones
        history = [chat.Message(role="system", content=system), *(m for m in history if m.role != "system")]
    turns = (*history, chat.Message(role="user", content=text))
    choice = "auto" if old.tool_choice == "required" else old.tool_choice
    llm = dataclasses.replace(old, messages=turns, tool_choice=choice, forced_tool="", inputs=())
    return llm, before.model
