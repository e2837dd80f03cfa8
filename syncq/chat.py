"""What an llm prompt may carry beyond its text: a whole conversation, tools, an output format,
several stop strings, and the texts of an embedding (the ``llm`` field of a prompt).

A chat UI or an agent sends a history and a system prompt, tool definitions and JSON schemas;
before this record only the user turns reached the model, joined into one text. ``LlmInput`` is
stored inside the prompt's record in the encrypted log, so whichever node runs the prompt sees
the whole request, and ``syncq show`` on any device can print the conversation.

``Prompt.input`` stays the prompt's text to show (the last user turn of a conversation): a node
of an older version reads that and answers it, as it did before.

Tool-call arguments are kept as the JSON text the model wrote (OpenAI's shape), never parsed
here: a model may write invalid JSON, and the client is the one to judge it.

Pure: validation raises ``InvalidInput`` for what a user gave (``check``) and
``MalformedRecord`` for what another device stored (``from_wire``), with the same rules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from syncq.errors import InvalidInput, MalformedRecord

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]
Mode: TypeAlias = Literal["chat", "complete", "embed"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")  # or forced: ``forced_tool`` names the tool
FORMATS = ("text", "json_object", "json_schema")

MAX_MESSAGES = 2000
MAX_TOOLS = 128
MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 64
MAX_EMBED_INPUTS = 256
MAX_TOP_LOGPROBS = 20
MAX_LOGPROBS = 32768  # tokens of one answer whose logprobs are kept (records.LLM_PARAMS max_tokens)
# ... and the bytes they may take in the log (encoded): a result must fit in one envelope
MAX_LOGPROBS_BYTES = 2 << 20
MAX_SCHEMA_DEPTH = 24
# The most a schema may ask one thing repeated (maxItems, maxLength, a pattern's {m,n}...).
# llama.cpp's grammar converter writes each repetition out as one more nested group: maxItems
# 10**7 took 627 MB and 1.8 s to convert, 10**9 exhausts memory, and llama.cpp's grammar parser
# refuses nesting past ~1,000 and crashes (SIGSEGV) near 50,000. A 40-byte schema in one record
# would otherwise take down the worker of every node that claims it.
MAX_SCHEMA_REPEAT = 1000
_REPEATS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
MAX_LLM_BYTES = 1 << 20  # the whole field, encoded: a long history is text, not a file
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # OpenAI's rule, plus "." (MCP names)
_CALL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# What each backend can honour. A request that asks for more is refused with the reason
# before it is queued (the API answers 400), never run while ignoring part of it.
#   chat, complete: the two text modes; embed: vectors (/v1/embeddings, /api/embed)
#   json: response_format json_object/json_schema; tools: tools and tool_choice
#   history: system and assistant turns reach the model (echo answers the last user turn)
ABILITIES: Mapping[str, frozenset[str]] = {
    "llama": frozenset({"chat", "complete", "embed", "json", "tools", "history"}),
    "openai": frozenset({"chat", "complete", "json", "tools", "history"}),
    "echo": frozenset({"chat", "complete", "embed", "json", "tools", "history"}),
}


class Unable(InvalidInput):
    """The model's backend cannot do what the prompt asks (tools, JSON output, images...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """One call a model made: ``arguments`` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str

    def to_wire(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_wire(cls, wire: object) -> ToolCall:
        w = _mapping(wire, "a tool call")
        call = cls(id=_text(w, "id"), name=_text(w, "name"), arguments=_text(w, "arguments"))
        if not _CALL_ID.fullmatch(call.id) or not _TOOL_NAME.fullmatch(call.name):
            raise MalformedRecord("a tool call has a bad id or name")
        return call


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenLogprob:
    """One generated token's log-probability and, when asked (``top_logprobs``), its most
    likely alternatives as (token, logprob) pairs: OpenAI's ``logprobs.content`` entry."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    def to_wire(self) -> list[Any]:
        return [self.token, self.logprob, [list(pair) for pair in self.top]]

    @classmethod
    def from_wire(cls, wire: object) -> TokenLogprob:
        if not (isinstance(wire, list) and len(wire) == 3 and isinstance(wire[2], list)):
            raise MalformedRecord("a token's logprob is not [token, logprob, top]")
        token, logprob, top = wire
        pairs = [p for p in top[: MAX_TOP_LOGPROBS + 1] if isinstance(p, list) and len(p) == 2]
        if len(pairs) != len(top) or len(top) > MAX_TOP_LOGPROBS:
            raise MalformedRecord("a token's top logprobs are not at most 20 [token, logprob] pairs")
        if not isinstance(token, str) or not all(isinstance(t, str) for t, _ in pairs):
            raise MalformedRecord("a logprob's token is not text")
        if not all(_is_logprob(v) for v in (logprob, *(v for _, v in pairs))):
            raise MalformedRecord("a logprob is not a finite number")
        return cls(token=token, logprob=float(logprob), top=tuple((t, float(v)) for t, v in pairs))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_logprob(value: object) -> bool:
    # An int past float's range (10**400 in JSON) would raise OverflowError in float(), and NaN
    # or Infinity would make the API's JSON answer invalid: another device may store either.
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) < 1 << 64
    return isinstance(value, float) and math.isfinite(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One turn of a conversation. An assistant turn may carry ``tool_calls`` (and then often
    no content); a tool turn answers the call named by ``tool_call_id``."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""  # a tool turn's tool, or a participant's name

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            wire["tool_calls"] = [c.to_wire() for c in self.tool_calls]
        if self.tool_call_id:
            wire["tool_call_id"] = self.tool_call_id
        if self.name:
            wire["name"] = self.name
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> Message:
        w = _mapping(wire, "a message")
        role = w.get("role")
        if role not in ROLES:
            raise MalformedRecord("a message has an unknown role")
        calls = w.get("tool_calls", [])
        if not isinstance(calls, list) or len(calls) > MAX_TOOLS:
            raise MalformedRecord("a message's tool_calls are not a list")
        return cls(
            role=role,
            content=_text(w, "content"),
            tool_calls=tuple(ToolCall.from_wire(c) for c in calls),
            tool_call_id=_text(w, "tool_call_id", ""),
            name=_text(w, "name", ""),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    """A function the model may call: ``parameters`` is its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}

    @classmethod
    def from_wire(cls, wire: object) -> Tool:
        w = _mapping(wire, "a tool")
        parameters = w.get("parameters", {})
        if not isinstance(parameters, dict):
            raise MalformedRecord("a tool's parameters are not an object")
        tool = cls(name=_text(w, "name"), description=_text(w, "description", ""), parameters=parameters)
        if not _TOOL_NAME.fullmatch(tool.name):
            raise MalformedRecord("a tool has a bad name")
        return tool


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputFormat:
    """``response_format``: JSON of any shape (json_object), or JSON that follows ``schema``."""

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] = field(default_factory=dict)  # json_schema only
    name: str = ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type}
        if self.type == "json_schema":
            wire |= {"schema": dict(self.schema), "name": self.name}
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> OutputFormat:
        w = _mapping(wire, "an output format")
        kind = w.get("type")
        if kind == "json_object":
            return cls(type="json_object")
        schema = w.get("schema")
        if kind != "json_schema" or not isinstance(schema, dict):
            raise MalformedRecord("an output format is neither json_object nor json_schema with a schema")
        return cls(type="json_schema", schema=schema, name=_text(w, "name", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmInput:
    """Everything of an llm prompt that is not its text or a scalar parameter.

    ``messages`` is the whole conversation for ``mode=chat`` (empty: the prompt's text is one
    user turn); ``inputs`` the texts of ``mode=embed`` (empty: the prompt's text alone).
    """

    messages: tuple[Message, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: Literal["auto", "none", "required"] = "auto"
    forced_tool: str = ""  # tool_choice naming one tool: the model must call exactly that one
    format: OutputFormat | None = None
    stop: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()

    @property
    def wants_tools(self) -> bool:
        """Whether the model is offered tools it may call."""
        return bool(self.tools) and self.tool_choice != "none"

    def needs(self) -> set[str]:
        """The abilities (``ABILITIES``) a backend must have to honour this."""
        needs = set()
        if self.wants_tools:
            needs.add("tools")
        if self.format is not None:
            needs.add("json")
        if any(m.role != "user" for m in self.messages):
            needs.add("history")
        return needs

    def to_wire(self) -> dict[str, Any]:
        """The dict stored under the prompt's ``llm`` key; empty fields are left out."""
        wire: dict[str, Any] = {}
        if self.messages:
            wire["messages"] = [m.to_wire() for m in self.messages]
        if self.tools:
            wire["tools"] = [t.to_wire() for t in self.tools]
        if self.tool_choice != "auto":
            wire["tool_choice"] = self.tool_choice
        if self.forced_tool:
            wire["forced_tool"] = self.forced_tool
        if self.format is not None:
            wire["format"] = self.format.to_wire()
        if self.stop:
            wire["stop"] = list(self.stop)
        if self.inputs:
            wire["inputs"] = list(self.inputs)
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> LlmInput:
        """Check and convert a stored dict. Raises ``MalformedRecord``."""
        w = _mapping(wire, "the llm field")
        try:
            return check(_decode(w))
        except InvalidInput as exc:
            raise MalformedRecord(f"the llm field: {exc}") from exc


def _decode(w: Mapping[str, Any]) -> LlmInput:
    messages, tools = w.get("messages", []), w.get("tools", [])
    stop, inputs = w.get("stop", []), w.get("inputs", [])
    for name, value in (("messages", messages), ("tools", tools), ("stop", stop), ("inputs", inputs)):
        if not isinstance(value, list):
            raise MalformedRecord(f"the llm field's {name} is not a list")
    choice = w.get("tool_choice", "auto")
    if choice not in TOOL_CHOICES:
        raise MalformedRecord("the llm field's tool_choice is unknown")
    return LlmInput(
        messages=tuple(Message.from_wire(m) for m in messages[: MAX_MESSAGES + 1]),
        tools=tuple(Tool.from_wire(t) for t in tools[: MAX_TOOLS + 1]),
        tool_choice=choice,
        forced_tool=_text(w, "forced_tool", ""),
        format=OutputFormat.from_wire(w["format"]) if "format" in w else None,
        stop=tuple(_strings(stop, "stop")),
        inputs=tuple(_strings(inputs, "inputs")),
    )


def check(llm: LlmInput) -> LlmInput:
    """Refuse what no backend could run: too many turns, tools or stops, a forced tool that is
    not offered, a tool result that answers no call, schemas nested too deep, more than
    ``MAX_LLM_BYTES`` in all. Raises ``InvalidInput``; returns ``llm``."""
    if len(llm.messages) > MAX_MESSAGES:
        raise InvalidInput(f"the conversation has more than {MAX_MESSAGES} messages")
    if len(llm.tools) > MAX_TOOLS:
        raise InvalidInput(f"more than {MAX_TOOLS} tools")
    if len(llm.stop) > MAX_STOPS or not all(0 < len(s) <= MAX_STOP_CHARS for s in llm.stop):
        raise InvalidInput(f"stop takes at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters")
    if len(llm.inputs) > MAX_EMBED_INPUTS:
        raise InvalidInput(f"at most {MAX_EMBED_INPUTS} texts to embed in one request")
    names = [t.name for t in llm.tools]
    for tool in llm.tools:
        if not _TOOL_NAME.fullmatch(tool.name):
            raise InvalidInput(f"tool name {tool.name[:70]!r} must be 1 to 64 letters, digits, _ . or -")
        _check_depth(tool.parameters, f"the parameters of tool {tool.name}")
    if len(set(names)) != len(names):
        raise InvalidInput("two tools have the same name")
    if llm.forced_tool and llm.forced_tool not in names:
        raise InvalidInput(f"tool_choice names {llm.forced_tool[:70]!r}, which is not among the tools")
    if llm.tool_choice == "required" and not llm.tools:
        raise InvalidInput("tool_choice is required but no tools were given")
    if llm.format is not None and llm.format.type == "json_schema":
        if not llm.format.schema:
            raise InvalidInput("response_format json_schema needs a schema")
        _check_depth(llm.format.schema, "the response_format schema")
    _check_turns(llm.messages)
    try:
        size = len(json.dumps(llm.to_wire(), separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:
        # A lone surrogate: JSON's "\ud800" escape gives one, and no UTF-8 store can hold it.
        raise InvalidInput(
            "the conversation holds text that is not valid Unicode (a lone surrogate)"
        ) from None
    if size > MAX_LLM_BYTES:
        raise InvalidInput(f"the conversation and tools take {size} bytes; the limit is {MAX_LLM_BYTES}")
    return llm


def _check_turns(messages: Sequence[Message]) -> None:
    called: set[str] = set()
    for m in messages:
        if m.tool_calls and m.role != "assistant":
            raise InvalidInput("only an assistant turn can carry tool_calls")
        for call in m.tool_calls:
            if not _CALL_ID.fullmatch(call.id) or not _TOOL_NAME.fullmatch(call.name):
                raise InvalidInput("a tool call needs an id and a function name (letters, digits, _ . -)")
            called.add(call.id)
        if m.role == "tool" and m.tool_call_id not in called:
            raise InvalidInput("a tool message answers no earlier tool call (check tool_call_id)")


def _check_depth(value: object, what: str, depth: int = 0) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidInput(f"{what} nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(value, Mapping):
        _check_repeats(value, what)
        for v in value.values():
            _check_depth(v, what, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_depth(v, what, depth + 1)


def _check_repeats(schema: Mapping[str, Any], what: str) -> None:
    # Checked wherever the key appears (a property may be named "maxItems" too): refusing a
    # large number there costs nothing, missing one in a real schema costs a worker.
    counts = [schema.get(k) for k in _REPEATS]
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        counts += [n for q in _QUANTIFIER.findall(pattern) for n in q if n]
    for count in counts:
        if isinstance(count, str):  # a pattern's digits: compared by length first, int() has limits
            count = int(count) if len(count) <= 6 else MAX_SCHEMA_REPEAT + 1
        if _is_number(count) and count > MAX_SCHEMA_REPEAT:  # type: ignore[operator]
            raise InvalidInput(f"{what} repeats something more than {MAX_SCHEMA_REPEAT} times")


def refusal(backend: str | None, model: str, mode: str, llm: LlmInput | None) -> str | None:
    """Why ``model`` (served by ``backend``; None: not advertised yet) cannot honour the
    request, or None. Unknown backends (a plug-in) are trusted with everything."""
    if backend is None or backend not in ABILITIES:
        return None
    can = ABILITIES[backend]
    if mode not in can:
        return f"the model '{model}' ({backend}) cannot {_DOES[mode]}"
    for need in sorted(llm.needs() if llm is not None else ()):
        if need not in can:
            return f"the model '{model}' ({backend}) cannot {_DOES[need]}"
    return None


_DOES = {
    "chat": "chat",
    "complete": "complete text",
    "embed": "make embeddings",
    "json": "follow a response_format (JSON output)",
    "tools": "call tools",
    "history": "read a conversation's system and assistant turns",
}


def continued(
    history: Sequence[Message], prompt_text: str, answer: str, calls: Sequence[ToolCall] = ()
) -> list[Message]:
    """The conversation of a prompt with its answer appended: what ``syncq add --continue``
    builds a new prompt on. ``history`` empty: the prompt's text was the one user turn."""
    turns = list(history) or [Message(role="user", content=prompt_text)]
    return [*turns, Message(role="assistant", content=answer, tool_calls=tuple(calls))]


def shown_text(messages: Sequence[Message]) -> str:
    """The text a conversation shows as its prompt: the last user turn (else the last turn)."""
    for m in reversed(messages):
        if m.role == "user":
            return m.content
    return messages[-1].content if messages else ""


def prompt_llm(
    text: str, messages: Sequence[Message | Mapping[str, Any]] | None, llm: LlmInput | None
) -> tuple[str, LlmInput | None]:
    """A caller's prompt as its text to show and its ``llm`` field (checked): ``messages`` (a
    conversation, ``messages_from``) or a whole ``llm``, not both. An empty ``text`` becomes
    the conversation's ``shown_text`` (or the first text to embed). Raises ``InvalidInput``."""
    if messages is not None and llm is not None:
        raise InvalidInput("give messages= or llm= (which holds the messages), not both")
    if messages is not None:
        turns = messages_from(messages)
        if not turns:
            raise InvalidInput("messages is empty: give at least one turn")
        llm = LlmInput(messages=turns)
    if llm is None:
        return text, None
    if not isinstance(llm, LlmInput):
        raise InvalidInput(f"llm must be a syncq.LlmInput, not a {type(llm).__name__}")
    check(llm)
    if not text.strip():
        text = shown_text(llm.messages) if llm.messages else (llm.inputs[0] if llm.inputs else text)
    return text, llm


def messages_from(values: Sequence[Message | Mapping[str, Any]]) -> tuple[Message, ...]:
    """A caller's conversation as ``Message`` turns: each one a ``Message`` already, or a dict
    ``{role, content, tool_calls?, tool_call_id?, name?}`` (content may be None, as OpenAI's
    assistant turn with tool_calls has it). A tool call is a ``ToolCall``, ``{id, name,
    arguments}`` or OpenAI's ``{id, type, function: {name, arguments}}``; arguments given as
    an object are written as JSON text. Raises ``InvalidInput`` naming the turn at fault."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
        raise InvalidInput("messages must be a list of messages (dicts with role and content)")
    return tuple(_message_from(value, f"messages[{i}]") for i, value in enumerate(values))


def _message_from(value: Message | Mapping[str, Any], where: str) -> Message:
    if isinstance(value, Message):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where} is a {type(value).__name__}, not a dict with role and content")
    unknown = set(value) - {"role", "content", "tool_calls", "tool_call_id", "name"}
    if unknown:
        raise InvalidInput(f"{where} has unknown fields: {', '.join(sorted(map(str, unknown)))}")
    role = value.get("role")
    if role not in ROLES:
        raise InvalidInput(f"{where}: role {str(role)[:40]!r} is not one of {', '.join(ROLES)}")
    content = value.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidInput(f"{where}: content must be text (or None)")
    calls = value.get("tool_calls") or ()
    if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
        raise InvalidInput(f"{where}: tool_calls must be a list")
    for name in ("tool_call_id", "name"):
        if not isinstance(value.get(name, ""), str):
            raise InvalidInput(f"{where}: {name} must be text")
    return Message(
        role=role,
        content=content or "",
        tool_calls=tuple(_call_from(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(calls)),
        tool_call_id=value.get("tool_call_id", ""),
        name=value.get("name", ""),
    )


def _call_from(value: ToolCall | Mapping[str, Any], where: str) -> ToolCall:
    if isinstance(value, ToolCall):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where} is not a dict with id, name and arguments")
    function = value.get("function", value)  # OpenAI nests name and arguments in "function"
    if not isinstance(function, Mapping):
        raise InvalidInput(f"{where}: function must be a dict with name and arguments")
    call_id, name, arguments = value.get("id"), function.get("name"), function.get("arguments", "")
    if isinstance(arguments, Mapping):
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
        raise InvalidInput(f"{where} needs an id and a name (text) and arguments (JSON text or a dict)")
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _mapping(wire: object, what: str) -> Mapping[str, Any]:
    if not isinstance(wire, Mapping):
        raise MalformedRecord(f"{what} is not an object")
    return wire


def _text(w: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = w.get(name, default)
    if not isinstance(value, str):
        raise MalformedRecord(f"field {name!r} is not text")
    return value


def _strings(values: list[Any], what: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise MalformedRecord(f"the llm field's {what} are not all text")
    return values
