"""Ollama's request and answer shapes, translated to and from syncq's prompts: the model names
(``name:latest``), ``options`` onto the prompt's params, messages, tools and ``format`` onto
its ``llm`` field (``syncq.chat``), and a result's usage onto Ollama's counts and durations.

No I/O: ``ollama.py`` reads the bodies, queues the prompts and streams the answers; everything
here takes what it needs as arguments and raises ``ApiError`` (answered ``{"error": message}``)
for what a client got wrong. The shapes follow Ollama's docs/api.md and api/types.go.

Options (``options``, or the same names at the top level of the body, where Open WebUI puts
``num_predict``; ``options`` wins):

- mapped: num_predict -> max_tokens (negative, Ollama's "no limit": the most a prompt may ask,
  32768), temperature, top_p, top_k, min_p, seed, repeat_penalty, frequency_penalty,
  presence_penalty, stop (a string or up to 4 strings);
- accepted and ignored, as they change how a model runs, never what it answers: ``HARMLESS``
  (num_thread, num_gpu, main_gpu, num_batch, use_mmap, use_mlock, numa, low_vram, ...);
- accepted at their neutral value only (mirostat 0, tfs_z 1, typical_p 1): ``NEUTRAL``;
- refused with a 400 naming the option: num_ctx (a node loads a model with its own context
  size), num_keep, repeat_last_n, penalize_newline, mirostat != 0 ..., and any unknown name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from syncq.chat import ABILITIES, LlmInput, Message, OutputFormat, Tool, ToolCall
from syncq.client import MeshModel, Outcome
from syncq.records import LLM_PARAMS, TEST_KNOBS, ParamValue

from .http_common import ApiError

# The Ollama API version whose shapes this follows: clients gate features on it (structured
# outputs need 0.5, tools 0.3), so it names Ollama's release, not syncq's.
OLLAMA_VERSION = "0.12.6"
MAX_TOKENS = 32768  # records.LLM_PARAMS' bound: what "no limit" (num_predict < 0) becomes
MAPPED = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
HARMLESS = frozenset(
    {
        "num_thread", "num_gpu", "main_gpu", "num_batch", "use_mmap", "use_mlock", "numa",
        "low_vram", "f16_kv", "vocab_only", "logits_all", "embedding_only",
    }
)  # fmt: skip
NEUTRAL: Mapping[str, float] = {"mirostat": 0, "tfs_z": 1.0, "typical_p": 1.0}
REFUSED = frozenset(
    {"num_ctx", "num_keep", "repeat_last_n", "penalize_newline", "mirostat_tau", "mirostat_eta"}
)
OPTIONS = frozenset({*MAPPED, "stop", *HARMLESS, *NEUTRAL, *REFUSED})
_SIZE = re.compile(r"(?:^|[-_.])(\d+(?:\.\d+)?)([mbMB])(?:$|[-_.])")


# -- model names ------------------------------------------------------------------------------


def listed_name(name: str) -> str:
    """How a syncq model is listed to Ollama clients: with a tag, as Ollama names every model
    (Open WebUI looks a model up as ``name:latest`` when the name it has carries no tag)."""
    return name if ":" in name else f"{name}:latest"


def find_model(models: Iterable[MeshModel], asked: str) -> MeshModel | None:
    """The model a client names: syncq's name itself, or it with ``:latest``."""
    by_name = {m.name: m for m in models}
    return by_name.get(asked) or by_name.get(asked.removesuffix(":latest"))


def not_found(asked: object) -> ApiError:
    """Ollama's 404 for a model nobody serves."""
    return ApiError(404, f"model '{str(asked)[:200]}' not found")


def digest(name: str) -> str:
    """A stable stand-in for a model's digest: the SHA-256 of its name (syncq has no blobs of
    models to hash; clients only compare digests)."""
    return hashlib.sha256(name.encode()).hexdigest()


def details(model: MeshModel) -> dict[str, Any]:
    """Ollama's ``details``: gguf for the llama backend, the family and size read from the name
    (gemma3-270m: gemma3, 270M), what is not known left empty."""
    family = model.name.split("-", 1)[0].split(":", 1)[0] if model.backend == "llama" else model.backend
    size = _SIZE.search(model.name)
    return {
        "parent_model": "",
        "format": "gguf" if model.backend == "llama" else "",
        "family": family,
        "families": [family],
        "parameter_size": f"{size.group(1)}{size.group(2).upper()}" if size else "",
        "quantization_level": "",
    }


def capabilities(backend: str) -> list[str]:
    """Ollama's capabilities of a backend, from ``chat.ABILITIES`` (a plug-in: completion)."""
    can = ABILITIES.get(backend, frozenset({"chat", "complete"}))
    found = ["completion"] if can & {"chat", "complete"} else []
    return found + [name for ability, name in (("tools", "tools"), ("embed", "embedding")) if ability in can]


def timestamp(ms: float) -> str:
    """An RFC 3339 time, as Ollama writes ``created_at`` and ``expires_at``. The times come from
    other nodes' records (a presence's ``last_seen``, a result's ``finished_at``), any whole
    number: held to years 1970 to 9999, since one out of datetime's range made /api/tags and
    /api/ps answer 500 on every node of the mesh."""
    held = min(max(ms, 0.0), _LATEST_MS)
    return datetime.fromtimestamp(held / 1000, UTC).isoformat().replace("+00:00", "Z")


_LATEST_MS = datetime(9999, 12, 31, tzinfo=UTC).timestamp() * 1000


# -- requests ---------------------------------------------------------------------------------


def options_params(body: Mapping[str, Any]) -> tuple[dict[str, ParamValue], tuple[str, ...]]:
    """The body's ``options`` (and option names at its top level) as the prompt's params and
    its stop strings (see the module's docstring). Raises ``ApiError`` naming the option."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "options must be an object")
    merged = {k: v for k, v in body.items() if k in OPTIONS and v is not None} | {
        k: v for k, v in options.items() if v is not None
    }
    params: dict[str, ParamValue] = {}
    stops: tuple[str, ...] = ()
    for name, value in merged.items():
        if name == "stop":
            stops = _stops(value)
        elif name in MAPPED:
            params[MAPPED[name]] = _number(name, value)
        elif name in TEST_KNOBS:  # echo's, refused outside tests (``http_common.refuse_knobs``)
            params[name] = value
        elif name in NEUTRAL:
            if _number(name, value) != NEUTRAL[name]:
                raise ApiError(400, f"option {name}={value} is not supported: no backend samples so")
        elif name in REFUSED:
            why = _WHY.get(name, "no backend honours it per request")
            raise ApiError(400, f"option {name} is not supported: {why}")
        elif name not in HARMLESS:
            raise ApiError(400, f"unknown option {str(name)[:60]!r}")
    wanted = params.get("max_tokens")
    if isinstance(wanted, int | float) and wanted < 0:
        params["max_tokens"] = MAX_TOKENS  # Ollama's -1 (no limit) and -2 (fill the context)
    for name, value in params.items():
        valid, expected = LLM_PARAMS[name]
        if not valid(value):
            shown = {v: k for k, v in MAPPED.items()}.get(name, name)
            raise ApiError(400, f"option {shown}={value!r} is invalid: expected {expected}")
    return params, stops


_WHY = {
    "num_ctx": "a node loads each model with its own context size (models.toml)",
    "num_keep": "the context is never shifted: a prompt longer than the context fails",
}


def _number(name: str, value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"option {name} must be a number, not {json.dumps(value)[:40]}")
    return value


def _stops(value: object) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "option stop must be a string or a list of strings")
    return tuple(stops)


def output_format(value: object) -> OutputFormat | None:
    """``format``: "json" (any JSON), a JSON schema, or nothing ("" or null)."""
    if value is None or value == "":
        return None
    if value == "json":
        return OutputFormat(type="json_object")
    if isinstance(value, dict) and value:
        return OutputFormat(type="json_schema", schema=value, name="ollama_format")
    raise ApiError(400, f'format must be "json" or a JSON schema, not {json.dumps(value)[:60]}')


def tools_from(value: object) -> tuple[Tool, ...]:
    """``tools``: ``[{"type": "function", "function": {name, description, parameters}}]``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ApiError(400, "tools must be a list")
    tools = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise ApiError(400, f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}')
        name, description = function.get("name"), function.get("description") or ""
        parameters = function.get("parameters") or {}
        if not isinstance(name, str) or not isinstance(description, str) or not isinstance(parameters, dict):
            raise ApiError(400, f"tools[{i}].function needs a name, a text description, object parameters")
        tools.append(Tool(name=name, description=description, parameters=parameters))
    return tuple(tools)


def turns_from(value: object) -> tuple[Message, ...]:
    """Ollama's messages as ``chat.Message`` turns. Tool calls carry their arguments as an
    object (written here as JSON text) and often no id: one is made (``call_T_K``, turn T,
    call K). A tool turn answers the call its ``tool_call_id`` names (Open WebUI sends it),
    else the oldest of its ``tool_name`` (Ollama's way), else the oldest not answered yet.
    Images are refused: no backend of syncq reads them. Raises ``ApiError``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ApiError(400, "messages must be a list")
    turns: list[Message] = []
    waiting: list[ToolCall] = []  # calls not answered yet, oldest first
    for t, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{t}] needs a role: system, user, assistant or tool")
        content = m.get("content") or ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{t}].content must be text")
        if m.get("images"):
            raise ApiError(400, "images are not supported: no model of this mesh reads images")
        calls = tuple(_call_in(c, t, k) for k, c in enumerate(_list(m.get("tool_calls"), t)))
        waiting += calls
        answered = _answered(m, waiting, t) if m["role"] == "tool" else None
        if answered is not None:
            waiting.remove(answered)
        turns.append(
            Message(
                role=m["role"],
                content=content,
                tool_calls=calls,
                tool_call_id=answered.id if answered else "",
                name=answered.name if answered else "",
            )
        )
    return tuple(turns)


def _list(value: object, t: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(400, f"messages[{t}].tool_calls must be a list")
    return value


def _call_in(call: object, t: int, k: int) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ApiError(400, f"messages[{t}].tool_calls[{k}] needs a function with a name")
    arguments = function.get("arguments", {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    given = call.get("id") if isinstance(call, dict) else None
    call_id = given if isinstance(given, str) and given else f"call_{t}_{k}"
    return ToolCall(id=call_id, name=function["name"], arguments=text)


def _answered(m: Mapping[str, Any], waiting: Sequence[ToolCall], t: int) -> ToolCall:
    """The call a tool turn answers: the one its ``tool_call_id`` names, else the oldest one of
    its ``tool_name``, else the oldest one waiting (clients disagree on which they send, and an
    id they made up themselves names none of ours)."""
    by_id, by_name = m.get("tool_call_id"), m.get("tool_name") or m.get("name")
    found = [c for c in waiting if c.id == by_id] or [c for c in waiting if c.name == by_name] or waiting
    if not found:
        raise ApiError(400, f"messages[{t}] is a tool result that answers no earlier tool call")
    return found[0]


def chat_input(body: Mapping[str, Any], turns: tuple[Message, ...], stops: tuple[str, ...]) -> LlmInput:
    """/api/chat's conversation, tools, format and stop strings as a prompt's ``llm`` field. A
    ``system`` beside the messages (Open WebUI moves a model's system prompt there; Ollama's
    chat would drop it) becomes the first turn."""
    system = body.get("system") or ""
    if not isinstance(system, str):
        raise ApiError(400, "system must be text")
    return LlmInput(
        messages=(Message(role="system", content=system), *turns) if system else turns,
        tools=tools_from(body.get("tools")),
        format=output_format(body.get("format")),
        stop=stops,
    )


def generate_input(body: Mapping[str, Any], stops: tuple[str, ...]) -> tuple[str, str, LlmInput]:
    """/api/generate's prompt as (text, mode, llm): ``raw`` sends the text as it is (mode
    complete); otherwise it is one user turn, after ``system`` if given (mode chat), which the
    node puts through the model's chat template as Ollama does. Raises ``ApiError``."""
    prompt, system = body.get("prompt") or "", body.get("system") or ""
    if not isinstance(prompt, str) or not isinstance(system, str):
        raise ApiError(400, "prompt and system must be text")
    raw = body.get("raw")
    if raw is not None and not isinstance(raw, bool):
        raise ApiError(400, "raw must be true or false")
    if raw and system:
        raise ApiError(400, "raw mode does not support template, system, or context")
    turns = (Message(role="system", content=system), Message(role="user", content=prompt)) if system else ()
    llm = LlmInput(messages=turns, format=output_format(body.get("format")), stop=stops)
    return prompt, "complete" if raw else "chat", llm


_UNSUPPORTED = {
    "think": "no model of this mesh thinks",
    "logprobs": "use /v1/chat/completions for logprobs",
    "template": "a node applies the model's own chat template",
    "context": "send the conversation to /api/chat instead",
    "suffix": "no model of this mesh fills in text between a prompt and a suffix",
    "images": "no model of this mesh reads images",
}


def refuse_extras(body: Mapping[str, Any], names: Iterable[str]) -> None:
    """Refuse fields no node can honour (``_UNSUPPORTED``) when they ask for something: false,
    "" and [] ask for nothing. Raises ``ApiError``."""
    for name in names:
        if body.get(name):
            what = f'"{body.get("model")}" does not support thinking' if name == "think" else ""
            raise ApiError(400, f"{what or f'{name} is not supported'}: {_UNSUPPORTED[name]}")


# -- answers ----------------------------------------------------------------------------------


class Answer:
    """The objects of one answer to a client that named ``model``: chat's carry a message,
    generate's a response; ``clock`` gives their ``created_at`` (ms since the epoch)."""

    def __init__(self, kind: str, model: str, clock: Callable[[], float]) -> None:
        self.kind, self.model, self.clock = kind, model, clock

    def chunk(self, text: str, calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
        """A piece of a stream (``done: false``)."""
        return self._base() | self._said(text, calls) | {"done": False}

    def final(
        self, outcome: Outcome, finish: str, calls: Sequence[ToolCall], *, whole: bool
    ) -> dict[str, Any]:
        """The last object (``done: true``) with the counts; ``whole``: with the answer's text
        (a non-streaming answer), else empty (a stream's last object)."""
        return (
            self._base()
            | self._said(outcome.text if whole else "", calls)
            | {"done": True, "done_reason": done_reason(finish)}
            | counts(outcome.usage)
            | {"syncq": {"id": outcome.prompt_id, "node": outcome.node_name}}
        )

    def _base(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": timestamp(self.clock())}

    def _said(self, text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
        if self.kind == "generate":
            return {"response": text}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls_out(calls)
        return {"message": message}


def calls_out(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """A result's tool calls as Ollama gives them: arguments as an object. Raises ``ApiError``
    (502) for arguments that are not a JSON object: Ollama's clients cannot take them."""
    out = []
    for k, call in enumerate(calls):
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise ApiError(502, f"the model called {call.name} with arguments that are not a JSON object")
        out.append({"id": call.id, "function": {"index": k, "name": call.name, "arguments": arguments}})
    return out


def counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """A result's usage as Ollama's counts and durations (nanoseconds). The scheduler measures
    the run (``ms_total``) and its first token (``ms_first_token``): the prompt's evaluation is
    taken as the time to the first token and the rest as generation. A load is not measured
    apart (it is inside the first token's time): ``load_duration`` is 0."""
    total, first = _ms(usage.get("ms_total")), _ms(usage.get("ms_first_token"))
    completion = usage.get("completion_tokens", usage.get("tokens", 0))
    return {
        "total_duration": total * 1_000_000,
        "load_duration": 0,
        "prompt_eval_count": _ms(usage.get("prompt_tokens")),
        "prompt_eval_duration": min(first, total) * 1_000_000,
        "eval_count": _ms(completion),
        "eval_duration": max(0, total - first) * 1_000_000,
    }


def _ms(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def done_reason(finish: str) -> str:
    """Ollama's ``done_reason``: "length" when max_tokens cut it, else "stop" (Ollama says stop
    for an answer of tool calls too)."""
    return "length" if finish == "length" else "stop"


def vectors(output: str, expected: int) -> list[list[float]]:
    """An embed prompt's output (``[[f, ...], ...]``, one per text). Raises ``ApiError`` (502)."""
    try:
        found = json.loads(output)
    except ValueError:
        found = None
    if not (
        isinstance(found, list)
        and len(found) == expected
        and all(isinstance(v, list) and all(isinstance(f, int | float) for f in v) for v in found)
    ):
        raise ApiError(502, "the model's answer is not one vector per text")
    return found
