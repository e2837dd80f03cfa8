"""OpenAI's request and answer shapes, translated: a chat, completion or embedding request's body
becomes what a prompt holds (``ApiRequest``: its text, mode, ``LlmInput``, params, priority),
and a prompt's outcome becomes OpenAI's answer, its stream chunks and its usage.

``api.py`` wires these into the app; nothing here touches the space, so the rules can be
checked in-process (tests/node/test_openai_rules.py).

Every field of a request is either translated, accepted and ignored because it cannot change
the answer (``HARMLESS``), or refused with a 400 that names it: a client is never answered as
if a setting it sent was honoured when it was not. Null counts as absent, as OpenAI takes it.

- ``messages``: every role (``developer`` is ``system``), content as a string or a list of
  parts (text parts joined by newlines; image, audio and file parts are refused: no backend
  takes them, ``chat.ABILITIES`` has no "images"), ``name``, an assistant's ``tool_calls``
  (its content may be null), a tool turn's ``tool_call_id``.
- ``max_completion_tokens`` (or ``max_tokens``) -> ``max_tokens``; ``stop``: one string is the
  ``stop`` param (older nodes honour it), several go in ``LlmInput.stop``; ``temperature``,
  ``top_p``, ``seed``, ``frequency_penalty`` and ``presence_penalty`` -> params of those names
  (llama.cpp has each).
- ``response_format`` -> ``LlmInput.format``; ``tools`` and ``tool_choice`` -> ``LlmInput``.
- ``n`` must be 1 (and a legacy ``prompt`` list one text): one request is one prompt, so the
  log, Stop and priority each speak of one thing; a client that wants four answers sends four
  requests, which run side by side where the model can.
- ``logprobs``/``top_logprobs`` (a completion's ``logprobs``: how many alternatives) come from
  llama models (one loaded with ``logits_all``; others fail the run saying so); other backends
  are refused. A stream carries them all in its finish chunk.
- ``suffix``, ``echo``, ``best_of`` > 1, a non-empty ``logit_bias``, legacy ``functions``:
  refused.
- syncq's own fields: ``priority`` (-1000..1000; a stream defaults to 1, anything else to 0:
  the person watching text arrive goes ahead of a UI's background titles and tags),
  ``keep_on_disconnect``, ``keep_alive`` (seconds or "5m"), ``top_k``, ``min_p``,
  ``repeat_penalty``, and echo's test knobs (``api.py`` refuses those outside tests).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from syncq import chat
from syncq.chat import LlmInput, Message, Mode, OutputFormat, Tool, ToolCall
from syncq.client import Outcome
from syncq.errors import InvalidInput
from syncq.records import PRIORITY_RANGE, TEST_KNOBS, ParamValue

from . import openai_logprobs
from .http_common import ApiError, flag, keep_alive_seconds

# Accepted and ignored: bookkeeping of OpenAI's own service, which cannot change an answer.
HARMLESS = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})
# syncq's extensions (``extra_body`` in the official clients).
SYNCQ_FIELDS = frozenset(
    {"priority", "keep_on_disconnect", "keep_alive", "top_k", "min_p", "repeat_penalty", *TEST_KNOBS}
)
EMBED_SYNCQ_FIELDS = frozenset({"priority", "keep_alive", *TEST_KNOBS})
SAMPLING = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
_COMMON = frozenset({"model", "stream", "stream_options", "max_tokens", "stop", "n", *SAMPLING, "logprobs"})
CHAT_FIELDS = _COMMON | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logit_bias",
    "suffix",
}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of", "suffix", "logit_bias"}
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions"})
# Refused whenever given (not null), with why.
REFUSED = {
    "suffix": "suffix (fill in the middle) is not supported",
    "echo": "echo (the prompt repeated in the answer) is not supported",
    "functions": "functions is OpenAI's old name: send tools instead",
    "function_call": "function_call is OpenAI's old name: send tool_choice instead",
}
STREAM_PRIORITY = 1
EMBED_ENCODINGS = ("float", "base64")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiRequest:
    """What a request asks for, as a prompt holds it."""

    text: str  # ``Prompt.input``: the last user turn of a chat
    mode: Mode
    llm: LlmInput | None  # None: the text alone says it all (older nodes answer it too)
    params: dict[str, ParamValue]  # mode included
    priority: int
    stream: bool = False
    include_usage: bool = False
    keep_on_disconnect: bool = False
    encoding: str = "float"  # an embedding's: float or base64


def chat_request(body: Mapping[str, Any], model: str, backend: str | None) -> ApiRequest:
    """A /v1/chat/completions body (its model served by ``backend``). Raises ``ApiError``."""
    given = _given(body, CHAT_FIELDS)
    _refuse_common(given)
    messages = _messages(given.get("messages"), model, backend)
    tools = _tools(given.get("tools"))
    choice, forced = _tool_choice(given.get("tool_choice"))
    if "parallel_tool_calls" in given:
        flag(given, "parallel_tool_calls")  # accepted: a model makes as many calls as it makes
    params = _params(given)
    openai_logprobs.requested(given, params, model, backend, chat_mode=True)
    stops = _stops(given.get("stop"), params)
    llm = LlmInput(
        messages=messages,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        format=_format(given.get("response_format")),
        stop=stops,
    )
    text = chat.shown_text(messages)
    plain = LlmInput(messages=(Message(role="user", content=text),))  # the text says it all
    return _request(given, text, "chat", None if llm == plain else llm, params, model, backend)


def completion_request(body: Mapping[str, Any], model: str, backend: str | None) -> ApiRequest:
    """A /v1/completions body. Raises ``ApiError``."""
    given = _given(body, COMPLETION_FIELDS)
    _refuse_common(given)
    if given.get("best_of", 1) != 1:
        raise _unsupported("best_of", "best_of must be 1: send one request per answer")
    prompt = given.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) and prompt:
        raise _unsupported("prompt", "prompt takes one text per request here: send one request per text")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (token arrays are not supported)", param="prompt")
    params = _params(given)
    openai_logprobs.requested(given, params, model, backend, chat_mode=False)
    stops = _stops(given.get("stop"), params)
    return _request(
        given, prompt, "complete", LlmInput(stop=stops) if stops else None, params, model, backend
    )


def embedding_request(body: Mapping[str, Any], model: str, backend: str | None) -> ApiRequest:
    """A /v1/embeddings body. Raises ``ApiError``."""
    given = _given(body, EMBEDDING_FIELDS, EMBED_SYNCQ_FIELDS)
    if given.get("dimensions") is not None:
        raise _unsupported("dimensions", "dimensions is not supported: the model's own size is given")
    encoding = given.get("encoding_format", "float")
    if encoding not in EMBED_ENCODINGS:
        raise ApiError(400, "encoding_format must be float or base64", param="encoding_format")
    texts = given.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if isinstance(texts, list) and texts and all(isinstance(t, int | list) for t in texts):
        # LangChain's OpenAIEmbeddings sends tiktoken's ids of OpenAI's models by default, which
        # name nothing in another model's vocabulary: the text must come as text.
        raise ApiError(
            400,
            "input must be text: token arrays (ids of OpenAI's tokenizer) are not supported; "
            "LangChain's OpenAIEmbeddings sends them unless check_embedding_ctx_length=False",
            param="input",
        )
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ApiError(
            400,
            "input must be a non-empty string or a list of them (token arrays are not supported)",
            param="input",
        )
    if len(texts) > chat.MAX_EMBED_INPUTS:
        raise ApiError(400, f"input takes at most {chat.MAX_EMBED_INPUTS} texts", param="input")
    llm = LlmInput(inputs=tuple(texts)) if len(texts) > 1 else None
    params: dict[str, ParamValue] = {}
    if "keep_alive" in given:
        params["keep_alive"] = _keep_alive(given["keep_alive"])
    params |= {k: v for k, v in given.items() if k in TEST_KNOBS}
    found = _request(given, texts[0], "embed", llm, params, model, backend)
    return dataclasses.replace(found, encoding=encoding)


# -- answers --------------------------------------------------------------------------------


def usage(counts: Mapping[str, Any]) -> dict[str, int]:
    """OpenAI's usage from a result's (``tokens`` is the old name of completion_tokens)."""
    prompt = int(counts.get("prompt_tokens", 0) or 0)
    completion = int(counts.get("completion_tokens", counts.get("tokens", 0)) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(finish: str, calls: Sequence[ToolCall]) -> str:
    """Why the answer ended, as OpenAI says it ("" from an older node, or a failure: stop)."""
    return "tool_calls" if calls else finish or "stop"


def tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """A message's tool_calls in OpenAI's shape."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def answer(
    prompt_id: str, model: str, chat_mode: bool, outcome: Outcome, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The whole answer of a non-streaming chat or completion that is done."""
    calls, text = outcome.tool_calls, outcome.text
    reason = finish_reason(outcome.finish, calls)
    found = openai_logprobs.shaped(outcome, chat_mode)
    choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": found}
    if chat_mode:
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = tool_calls(calls)
        choice["message"] = message
    else:
        choice["text"] = text
    return {
        "id": f"syncq-{prompt_id}",
        "object": "chat.completion" if chat_mode else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(outcome.usage),
        "syncq": dict(extra),
    }


class Chunks:
    """The server-sent events of one streamed chat or completion, each as bytes."""

    def __init__(self, prompt_id: str, model: str, chat_mode: bool) -> None:
        self.chat = chat_mode
        self._head = {
            "id": f"syncq-{prompt_id}",
            "object": "chat.completion.chunk" if chat_mode else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def start(self) -> bytes:
        """The first chunk: a chat's role (OpenAI sends it before any text)."""
        return self._choice({"role": "assistant", "content": ""}) if self.chat else b""

    def text(self, piece: str) -> bytes:
        return self._choice({"content": piece}) if self.chat else self._choice(piece)

    def calls(self, calls: Sequence[ToolCall]) -> bytes:
        """The run's tool calls, whole, in one delta (each with its index)."""
        if not calls or not self.chat:
            return b""
        return self._choice({"tool_calls": [{"index": i, **c} for i, c in enumerate(tool_calls(calls))]})

    def finish(self, reason: str, outcome: Outcome | None = None) -> bytes:
        """The last choice chunk; the logprobs of every token ride on it (clients join the
        chunks' lists, and the stream's text chunks are not tokens)."""
        found = openai_logprobs.shaped(outcome, self.chat) if outcome is not None else None
        return self._choice({} if self.chat else "", reason, found)

    def usage(self, counts: Mapping[str, Any]) -> bytes:
        """``stream_options.include_usage``'s last chunk: no choices, the usage."""
        return _event({**self._head, "choices": [], "usage": usage(counts)})

    @staticmethod
    def error(message: str) -> bytes:
        return _event({"error": {"message": message, "type": "server_error", "code": "prompt_failed"}})

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"

    def _choice(
        self, delta: dict[str, Any] | str, finish: str | None = None, found: dict[str, Any] | None = None
    ) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": found}
        if isinstance(delta, dict):
            choice["delta"] = delta
        else:
            choice["text"] = delta
        return _event({**self._head, "choices": [choice]})


def embeddings(model: str, output: str, counts: Mapping[str, Any], encoding: str) -> dict[str, Any]:
    """The /v1/embeddings answer from an embed prompt's output (``[[f, ...], ...]``). Raises
    ``ApiError`` (502) if the output is not vectors."""
    try:
        vectors = json.loads(output)
        if not isinstance(vectors, list) or not all(
            isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors
        ):
            raise ValueError("not a list of vectors")
    except ValueError as exc:
        raise ApiError(502, f"the model gave no embeddings: {exc}", "server_error", "prompt_failed") from exc
    prompt_tokens = int(counts.get("prompt_tokens", 0) or 0)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    # base64: little-endian float32, which the official clients decode (and ask for by default)
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _event(data: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# -- requests -------------------------------------------------------------------------------


def _given(
    body: Mapping[str, Any], known: frozenset[str], extensions: frozenset[str] = SYNCQ_FIELDS
) -> dict[str, Any]:
    """The body's fields that are set (null is absent); refuses unknown ones."""
    given = {k: v for k, v in body.items() if v is not None and k not in HARMLESS}
    for name in given:
        if name in REFUSED:
            raise _unsupported(name, REFUSED[name])
        if name not in known and name not in extensions:
            raise ApiError(
                400,
                f"unknown field {name[:60]!r}: syncq does not support it",
                code="unknown_parameter",
                param=name[:60],
            )
    return given


def _refuse_common(given: Mapping[str, Any]) -> None:
    if given.get("n", 1) != 1:
        raise _unsupported("n", "n must be 1: send one request per answer (they run side by side)")
    if given.get("logit_bias"):
        raise _unsupported("logit_bias", "logit_bias is not supported")


def _params(given: Mapping[str, Any]) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {}
    tokens = given.get("max_completion_tokens", given.get("max_tokens"))
    if tokens is not None:
        params["max_tokens"] = tokens
    for name in (*SAMPLING, "top_k", "min_p", "repeat_penalty", *TEST_KNOBS):
        if name in given:
            params[name] = given[name]
    if "keep_alive" in given:
        params["keep_alive"] = _keep_alive(given["keep_alive"])
    for name, value in params.items():
        if isinstance(value, dict | list):
            raise ApiError(400, f"{name} must be a single value", param=name)
    return params


def _request(
    given: Mapping[str, Any],
    text: str,
    mode: Mode,
    llm: LlmInput | None,
    params: dict[str, ParamValue],
    model: str,
    backend: str | None,
) -> ApiRequest:
    if llm is not None:
        try:
            chat.check(llm)
        except InvalidInput as exc:
            raise ApiError(400, str(exc), code="invalid_request") from exc
    why = chat.refusal(backend, model, mode, llm)
    if why is not None:
        raise ApiError(400, why, code="model_unable", param="model")
    stream = flag(given, "stream")
    options = given.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    priority = given.get("priority", STREAM_PRIORITY if stream else 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITY_RANGE:
        raise ApiError(400, "priority must be a whole number from -1000 to 1000", param="priority")
    return ApiRequest(
        text=text,
        mode=mode,
        llm=llm,
        params={**params, "mode": mode},
        priority=priority,
        stream=stream,
        include_usage=stream and flag(options, "include_usage"),
        keep_on_disconnect=flag(given, "keep_on_disconnect"),
    )


def _keep_alive(value: object) -> float:
    try:
        return keep_alive_seconds(value)
    except InvalidInput as exc:
        raise ApiError(400, str(exc), param="keep_alive") from exc


def _unsupported(name: str, why: str) -> ApiError:
    return ApiError(400, why, code="unsupported_parameter", param=name)


def _stops(raw: object, params: dict[str, ParamValue]) -> tuple[str, ...]:
    """One stop string goes in params (older nodes honour it); several in ``LlmInput.stop``."""
    stops = [raw] if isinstance(raw, str) else raw if raw is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(stops) > chat.MAX_STOPS:
        raise ApiError(400, f"stop takes at most {chat.MAX_STOPS} strings", param="stop")
    if len(stops) == 1:
        params["stop"] = stops[0]
        return ()
    return tuple(stops)


def _messages(raw: object, model: str, backend: str | None) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of messages", code="invalid_messages")
    return tuple(_message(m, i, model, backend) for i, m in enumerate(raw))


def _message(raw: object, i: int, model: str, backend: str | None) -> Message:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise ApiError(400, f"{where} must be an object", code="invalid_messages", param=where)
    role = "system" if raw.get("role") == "developer" else raw.get("role")
    if role not in chat.ROLES:
        raise ApiError(
            400,
            f"{where}.role must be system, developer, user, assistant or tool",
            code="invalid_messages",
            param=f"{where}.role",
        )
    calls = _calls(raw.get("tool_calls"), where) if role == "assistant" else ()
    if raw.get("tool_calls") and role != "assistant":
        raise ApiError(400, f"{where}: only an assistant turn has tool_calls", param=f"{where}.tool_calls")
    content = raw.get("content")
    if content is None and role != "assistant":
        raise ApiError(400, f"{where}.content is required", code="invalid_messages", param=f"{where}.content")
    call_id, name = raw.get("tool_call_id", ""), raw.get("name") or ""
    if role == "tool" and not (isinstance(call_id, str) and call_id):
        raise ApiError(400, f"{where}: a tool turn needs tool_call_id", param=f"{where}.tool_call_id")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise ApiError(400, f"{where}: name and tool_call_id must be strings", param=where)
    return Message(
        role=role,
        content=_content(content, where, model, backend),
        tool_calls=calls,
        tool_call_id=call_id if role == "tool" else "",
        name=name,
    )


# The text parts of OpenAI's chat and Responses shapes (Open WebUI passes the latter on too).
_TEXT_PARTS = ("text", "input_text", "output_text", "refusal")
_NOT_TAKEN = {
    "image_url": "images",
    "input_image": "images",
    "image": "images",
    "input_audio": "audio",
    "audio": "audio",
    "file": "files",
    "input_file": "files",
}


def _content(raw: object, where: str, model: str, backend: str | None) -> str:
    if raw is None or isinstance(raw, str):
        return raw or ""
    if not isinstance(raw, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    texts = []
    for part in raw:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _NOT_TAKEN:
            # No backend takes them (``chat.ABILITIES`` has no "images"), and a prompt has no
            # place for them yet: refused, never answered as if the picture had been seen.
            raise ApiError(
                400,
                f"the model '{model}' ({backend or 'unknown'}) does not take {_NOT_TAKEN[kind]}",
                code="model_unable",
                param=f"{where}.content",
            )
        value = part.get("refusal" if kind == "refusal" else "text") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(value, str):
            raise ApiError(
                400,
                f"{where}.content has a part that is neither text nor a known kind",
                param=f"{where}.content",
            )
        texts.append(value)
    return "\n".join(texts)


def _calls(raw: object, where: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ApiError(400, f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or not isinstance(function, dict)
        ):
            raise ApiError(
                400,
                f"{where}.tool_calls: each is {{id, type: function, function}}",
                param=f"{where}.tool_calls",
            )
        arguments = function.get("arguments", "")
        if isinstance(arguments, dict):  # some clients send the parsed object
            arguments = json.dumps(arguments, separators=(",", ":"))
        ids = call.get("id"), function.get("name")
        if not all(isinstance(x, str) for x in (*ids, arguments)):
            raise ApiError(
                400, f"{where}.tool_calls: id, name and arguments are text", param=f"{where}.tool_calls"
            )
        calls.append(ToolCall(id=call["id"], name=function["name"], arguments=arguments))
    return tuple(calls)


def _tools(raw: object) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ApiError(400, "tools must be a list", param="tools")
    tools = []
    for tool in raw:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ApiError(400, "each tool must be {type: function, function: {name, ...}}", param="tools")
        name, description = function.get("name"), function.get("description") or ""
        parameters = function.get("parameters") or {}
        if not isinstance(name, str) or not isinstance(description, str) or not isinstance(parameters, dict):
            raise ApiError(400, "a tool's function needs a name; parameters is a JSON schema", param="tools")
        tools.append(Tool(name=name, description=description, parameters=parameters))
    return tuple(tools)


def _tool_choice(raw: object) -> tuple[Any, str]:
    """(``LlmInput.tool_choice``, ``forced_tool``)."""
    if raw is None or raw in chat.TOOL_CHOICES:
        return raw or "auto", ""
    function = raw.get("function") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(function, dict):
        name = function.get("name")
        if isinstance(name, str) and name:
            return "auto", name
    raise ApiError(
        400,
        'tool_choice must be auto, none, required or {"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def _format(raw: object) -> OutputFormat | None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if raw is None or kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat(type="json_object")
    spec = raw.get("json_schema") if isinstance(raw, dict) else None
    if kind == "json_schema" and isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        name = spec.get("name")
        return OutputFormat(
            type="json_schema", schema=spec["schema"], name=name if isinstance(name, str) else ""
        )
    raise ApiError(
        400,
        "response_format must be text, json_object, or json_schema with a json_schema.schema object",
        param="response_format",
    )
