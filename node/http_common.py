"""What the HTTP API's endpoints share: the error they answer in OpenAI's shape, the JSON body
read within its size limit, and the two steps of any request that runs a prompt (its model
checked against the mesh, its outcome awaited).

``api.py`` wires the app and serves the chat and log endpoints; ``media.py`` serves audio, images
and attachments. Both import from here and nothing here imports them, so neither imports the
other's half to share these.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from syncq.executors.echo import knob_problem

import syncq
from syncq.client import Outcome
from syncq.errors import InvalidInput, SyncqError
from syncq.lifecycle import Status
from syncq.records import TEST_KNOBS, PromptKind
from syncq.space import BACKEND_KINDS

from .api_auth import ApiSettings

MAX_BODY_BYTES = 4 << 20
MAX_JSON_DEPTH = 32  # OpenAI's bodies nest 5 deep (a tool's JSON schema, a few more)
# A string, or what is left of an unterminated one: with the closing quote optional a match
# never fails, so a search never starts again at each quote inside it (quadratic on '"\\"\\"...').
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_STEP = [1 if chr(b) in "[{" else -1 for b in range(256)]
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str = "",
        *,
        param: str | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.param, self.retry = status, kind, code, param, retry

    def response(self) -> JSONResponse:
        body = {
            "error": {"message": str(self), "type": self.kind, "code": self.code or None, "param": self.param}
        }
        # The official clients obey this header before their own rule (retry any 5xx).
        headers = {} if self.retry is None else {"x-should-retry": str(self.retry).lower()}
        return JSONResponse(body, status_code=self.status, headers=headers)


async def json_body(request: Request, *, any_type: bool = False) -> dict[str, Any]:
    """The body as a JSON object, of at most ``MAX_BODY_BYTES`` and nested at most
    ``MAX_JSON_DEPTH`` deep. ``any_type``: read as JSON whatever its content type says (Ollama's
    routes, as Ollama does; ``api_guard`` let only keyed requests through with another type).
    Raises ``ApiError``."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not any_type and kind not in ("", "application/json"):  # "": no body at all (``api_guard`` saw to it)
        raise ApiError(415, "the body must be JSON (application/json)", code="unsupported_media_type")
    refuse_declared(request, MAX_BODY_BYTES)
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise too_large(MAX_BODY_BYTES)
    if json_depth(bytes(raw)) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the body is nested deeper than {MAX_JSON_DEPTH} levels", code="too_deep")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of the JSON text ``raw`` nest, counted before decoding:
    ``json.loads`` recurses once per level and a 50,000-deep body blew the stack (a
    RecursionError, answered 500 with a traceback). Strings are cut out first (their brackets
    are text), then the running count of the brackets alone is taken, all of it in C."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def flag(body: Mapping[str, Any], name: str) -> bool:
    """A boolean field of the body (absent or null: false). Raises ``ApiError`` for anything
    but true or false: ``"no"`` is a non-empty string, which Python would take as true."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, not {json.dumps(value)[:40]}", param=name)
    return value


def header_flag(request: Request, name: str) -> bool:
    """A true/false header (absent: false). Raises ``ApiError`` for other values."""
    value = request.headers.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise ApiError(400, f"the header {name} must be true or false", param=name)
    return value == "true"


def refuse_knobs(
    space: syncq.AsyncClient, settings: ApiSettings, model: str, params: Mapping[str, Any]
) -> None:
    """Refuse echo's test knobs (``executors.echo.knob_problem``). Raises ``ApiError``."""
    if not TEST_KNOBS & params.keys():
        return  # the usual request: no mesh to read
    backend = {m.name: m.backend for m in space.models()}.get(model)
    problem = knob_problem(model, backend, params, settings.test_knobs)
    if problem is not None:
        raise ApiError(400, problem, code="test_knob")


def too_large(limit: int) -> ApiError:
    """The 413 for a body over ``limit`` bytes."""
    return ApiError(413, f"the request body is larger than {limit >> 20} MiB", code="too_large")


def refuse_declared(request: Request, limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit``, before a byte of it is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


def served_model(space: syncq.AsyncClient, model: object, kind: PromptKind) -> str:
    """The model, if some node serves it for prompts of ``kind``. Raises ``ApiError``."""
    return served_backend(space, model, kind)[0]


def served_backend(space: syncq.AsyncClient, model: object, kind: PromptKind) -> tuple[str, str]:
    """``served_model`` and the backend the mesh serves it with, from one read of the mesh."""
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required", code="missing_model", param="model")
    backend = {m.name: m.backend for m in space.models()}.get(model)
    why = (
        []
        if backend
        else [f"{n.name}: {ad.unusable}" for n in space.nodes() for ad in n.models if ad.name == model]
    )
    if why:
        raise ApiError(
            503,
            f"no node can run the model '{model}' now ({'; '.join(why)})",
            "server_error",
            "model_unusable",
            retry=False,
        )
    if backend is None:
        raise ApiError(
            404,
            f"The model '{model}' does not exist: no node of this space serves it",
            code="model_not_found",
        )
    serves = BACKEND_KINDS.get(backend, PromptKind.LLM)
    if serves is not kind:
        raise ApiError(
            400,
            f"the model '{model}' ({backend}) takes {serves} prompts, not {kind} prompts",
            code="wrong_model_kind",
            param="model",
        )
    return model, backend


async def await_outcome(space: syncq.AsyncClient, prompt_id: str) -> Outcome:
    """The prompt's outcome once it is done. Raises ``ApiError`` with the executor's message:
    502 if it failed or was cancelled, 503 if no node can run it now (``client.stranded``)."""
    outcome = await settled(space, prompt_id)
    if outcome.status is Status.QUEUED:
        raise ApiError(503, unusable(space, outcome), "server_error", "model_unusable", retry=False)
    if not outcome.ok:
        raise ApiError(502, outcome.problem(), "server_error", "prompt_failed", retry=False)
    return outcome


async def settled(space: syncq.AsyncClient, prompt_id: str) -> Outcome:
    """The outcome once the prompt ended or can run nowhere (``client.stranded``)."""
    entry = space.get(prompt_id)
    if space.over(entry):  # a prompt run at once (``AsyncClient.submit``) is over already
        return space.outcome(entry)
    async for item in streamed(space, prompt_id, live=False):
        if isinstance(item, Outcome):
            return item
    raise AssertionError("streamed ends with the outcome")  # pragma: no cover


async def streamed(
    space: syncq.AsyncClient, prompt_id: str, *, live: bool = True
) -> AsyncIterator[str | Outcome]:
    """The prompt's output as it comes, then its ``Outcome`` last, read from the entry that says
    it is over: a stream that ended for a stranded prompt goes on if a node claims it after.
    ``live`` as in ``AsyncClient.stream``: a client is shown the output as it comes."""
    while True:
        # Ends when the prompt does, or is stranded.
        async for piece in space.stream(prompt_id, live=live):
            yield piece
        entry = space.get(prompt_id)
        if space.over(entry):
            yield space.outcome(entry)
            return


async def outcome_or_cancel(
    space: syncq.AsyncClient, request: Request, prompt_id: str, *, cancel_on_disconnect: bool
) -> Outcome:
    """``await_outcome``; with ``cancel_on_disconnect``, a client that hangs up first cancels the
    prompt (a non-streaming answer is otherwise kept in the log for whoever asks later). Raises
    ``ApiError``, also when the client left (nobody reads that answer)."""
    if not cancel_on_disconnect:
        return await await_outcome(space, prompt_id)
    waiting = asyncio.ensure_future(await_outcome(space, prompt_id))
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(SyncqError):
                space.cancel(prompt_id)
    if waiting.cancelled():
        raise ApiError(400, "the client left: its prompt is cancelled", code="client_disconnected")
    return waiting.result()


async def disconnected(request: Request) -> None:
    """Return once the client has hung up (its body is read already: only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def failure(space: syncq.AsyncClient, outcome: Outcome) -> str:
    """What a stream says of a prompt that did not succeed: why no node can run it (and it is
    cancelled: ``unusable``), or how it failed."""
    return unusable(space, outcome) if outcome.status is Status.QUEUED else outcome.problem()


def unusable(space: syncq.AsyncClient, outcome: Outcome) -> str:
    """The 503's message for a prompt the API added that no node can run now: it is cancelled,
    since nobody would read the answer if a capable node ran it later."""
    with contextlib.suppress(SyncqError):
        space.cancel(outcome.prompt_id)
    return f"no node can run the model '{outcome.model}' now: {outcome.error}"


# -- keep_alive: seconds, or a Go-style duration (OpenAI extension, Ollama's field) ------------

MAX_KEEP_ALIVE_S = 7 * 24 * 3600  # records.COMMON_PARAMS' bound for keep_alive
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: object) -> float:
    """``keep_alive`` as the seconds of the prompt's ``keep_alive`` param: a number of seconds,
    a numeric string ("300"), or a Go duration as Ollama takes it ("5m", "1h30m", "300s",
    "1.5h", "-1m"). Negative means as long as possible (Ollama: forever), capped at
    ``MAX_KEEP_ALIVE_S``; 0 unloads the model after the prompt. Raises ``InvalidInput``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f'keep_alive must be seconds or a duration such as "5m", not {_shown(value)}')
    if isinstance(value, str):
        text = value.strip()
        sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
        try:
            seconds = sign * float(body) if body and _plain_number(body) else sign * _duration(body)
        except ValueError as exc:
            raise InvalidInput(
                f'keep_alive must be seconds or a duration such as "5m" or "1h30m", not {_shown(value)}'
            ) from exc
    elif isinstance(value, int):  # bounded first: float(10**400) raises OverflowError (a 500)
        seconds = float(max(-1, min(value, MAX_KEEP_ALIVE_S)))
    else:
        seconds = float(value)
    if seconds != seconds:  # NaN: compares false with everything, so no bound would hold it
        raise InvalidInput(f"keep_alive must be a finite number of seconds, not {_shown(value)}")
    return float(MAX_KEEP_ALIVE_S) if seconds < 0 else min(seconds, float(MAX_KEEP_ALIVE_S))


def _plain_number(text: str) -> bool:
    return bool(re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)", text))


def _duration(text: str) -> float:
    """The seconds of a Go duration without its sign ("1h30m"). Raises ``ValueError``."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            raise ValueError(text)
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def _shown(value: object) -> str:
    return json.dumps(value, default=str)[:40]
