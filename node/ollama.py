"""Ollama's API on the node's API port, for the clients that speak only Ollama (the ``ollama``
Python and JS packages, Open WebUI's Ollama connection, Continue, Raycast, Obsidian plugins,
LiteLLM's ``ollama_chat/``). Behind the same ``api_guard.Guard`` as the rest: the API key as
``Authorization: Bearer KEY`` (``ollama.Client(host=URL, headers={"Authorization": "Bearer
KEY"})``; Open WebUI's Ollama connection has a key field that sends the same header).

    GET  /api/version      {"version": OLLAMA_VERSION}: the Ollama API these shapes follow
    GET  /api/tags         every llm model of the mesh, listed as name:latest
    GET  /api/ps           the models loaded on some node, with an estimated expires_at
    POST /api/show         {model}: details, capabilities (completion, tools, embedding)
    POST /api/chat         {model, messages, tools?, format?, options?, stream?, keep_alive?}
    POST /api/generate     {model, prompt, system?, raw?, format?, options?, stream?, keep_alive?}
    POST /api/embed        {model, input: text or [texts]} -> {embeddings: [[...], ...]}
    POST /api/embeddings   {model, prompt} -> {embedding: [...]} (Ollama's older endpoint)
    POST /api/pull, /api/push, /api/create, /api/copy, /api/blobs/D; DELETE /api/delete: 501
    (the mesh serves the models its nodes hold; add one in a node's models.toml)

How they run: like ``/v1/chat/completions`` (``api.py``), each request is a prompt in the log
that whichever node serves the model answers. ``stream`` defaults to true, as Ollama's does:
the answer comes as NDJSON (``application/x-ndjson``), one object per piece, then a last one
with ``done: true``, ``done_reason`` ("stop" or "length"), the token counts and durations in ns
(``ollama_wire.counts``). A streamed answer of tool calls sends them in one object before the
last, as Ollama does; an error after the stream began is an object ``{"error": ...}``.

- Model names: syncq's, or with ``:latest``; an unknown one: 404 ``{"error": "model 'x' not
  found"}``. Every error of these routes is Ollama's ``{"error": "..."}``, the guard's 401,
  403 and 415 (``PATHS``) too; a wrong method (405) keeps OpenAI's shape, as unknown routes do.
- ``options`` map onto the prompt's params (``ollama_wire``'s docstring lists which are
  mapped, ignored as harmless, or refused); ``format`` "json" or a schema becomes the prompt's
  output format, ``tools`` its tools, ``keep_alive`` ("5m", 300, "-1") its ``keep_alive``.
- Refused with a 400 that says why: images (no model of the mesh reads them), ``think`` (no
  thinking models), ``suffix``, ``template``, ``context``, ``logprobs``, embed's ``dimensions``
  and ``truncate: false``; a model that cannot do what is asked (``chat.refusal``).
- ``raw: true`` sends the prompt as it is (mode complete); otherwise generate is one user turn
  (with ``system`` before it) through the model's chat template, as in Ollama.
- Empty ``prompt`` (generate) or ``messages`` (chat): Ollama's "load" request, answered at once
  with ``done_reason: "load"``; with ``keep_alive: 0``, its "unload" (Open WebUI's unload
  button), answered ``done_reason: "unload"``. Neither queues a prompt: nodes load a model
  for its first prompt and unload it after its keep_alive.
- Priority: a streaming request gets 1 (a person is reading it), others 0, unless the body sets
  ``priority`` (-1000..1000, syncq's field), so a UI's title and tag requests wait behind it.
- Disconnects: a streaming client that hangs up (a chat UI's Stop) cancels its prompt, unless
  it sent ``X-Syncq-Keep-On-Disconnect: true`` or ``keep_on_disconnect: true``; a
  non-streaming request runs on and its answer stays in the log, unless it sent
  ``X-Syncq-Cancel-On-Disconnect: true``.
- ``GET /`` stays the web page (HEAD / answers 200, which is what Ollama's CLI probes); Ollama
  clients probe ``/api/version`` and ``/api/tags``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import syncq
from syncq.chat import LlmInput, Message, refusal, shown_text
from syncq.client import MeshModel
from syncq.errors import InvalidInput, SyncqError, UnknownId, UserError, WaitTimeout
from syncq.lifecycle import Status
from syncq.records import ParamValue
from syncq.space import BACKEND_KINDS

from . import ollama_wire as wire
from .api_auth import ApiSettings
from .http_common import (
    ApiError,
    await_outcome,
    failure,
    flag,
    header_flag,
    json_body,
    keep_alive_seconds,
    outcome_or_cancel,
    refuse_knobs,
    streamed,
)

NDJSON = "application/x-ndjson"
DEFAULT_KEEP_ALIVE_S = 300.0  # the manager's default (executors.manager): /api/ps's estimate
UNSUPPORTED = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
SERVED = ("/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat", "/api/generate")
PATHS = frozenset({*SERVED, "/api/embed", "/api/embeddings", *UNSUPPORTED})  # the guard's shape
Handler = Callable[[Request], Awaitable[Response]]


def routes(space: syncq.AsyncClient, settings: ApiSettings) -> list[Route]:
    """Ollama's routes over one space, for ``api.build_app``."""
    api = OllamaApi(space, settings)
    return [
        Route("/api/version", _answering(api.version), methods=["GET"]),
        Route("/api/tags", _answering(api.tags), methods=["GET"]),
        Route("/api/ps", _answering(api.ps), methods=["GET"]),
        Route("/api/show", _answering(api.show), methods=["POST"]),
        Route("/api/chat", _answering(api.chat), methods=["POST"]),
        Route("/api/generate", _answering(api.generate), methods=["POST"]),
        Route("/api/embed", _answering(api.embed), methods=["POST"]),
        Route("/api/embeddings", _answering(api.embeddings), methods=["POST"]),
        *(Route(path, _answering(api.unsupported), methods=["POST", "DELETE"]) for path in UNSUPPORTED),
        Route("/api/blobs/{digest}", _answering(api.unsupported), methods=["HEAD", "POST"]),
    ]


def _answering(handler: Handler) -> Handler:
    """``handler`` with every error answered in Ollama's shape, ``{"error": message}``."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, str(exc))
        except UnknownId as exc:
            return _error(404, str(exc))
        except WaitTimeout as exc:
            return _error(504, str(exc))
        except UserError as exc:
            return _error(400, str(exc))
        except SyncqError as exc:  # a broken store: ours
            return _error(500, str(exc))

    return endpoint


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class OllamaApi:
    """The handlers, each a starlette endpoint over one space."""

    def __init__(self, space: syncq.AsyncClient, settings: ApiSettings) -> None:
        self.space, self.settings = space, settings

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": wire.OLLAMA_VERSION, "syncq": syncq.__version__})

    async def tags(self, request: Request) -> Response:
        seen = {n.name: n.last_seen for n in self.space.nodes()}
        return JSONResponse(
            {"models": [self._listed(m, max(seen.get(n, 0) for n in m.nodes)) for m in self._llms()]}
        )

    async def ps(self, request: Request) -> Response:
        now = time.time() * 1000
        loaded = [
            self._listed(m, now)
            | {
                "expires_at": wire.timestamp(self._expiry(m, now)),
                "size_vram": 0,
                "syncq": {"nodes": list(m.warm)},
            }
            for m in self._llms()
            if m.warm
        ]
        return JSONResponse({"models": loaded})

    async def show(self, request: Request) -> Response:
        body = await json_body(request, any_type=True)
        asked = body.get("model") or body.get("name")
        model = self._model(asked)
        info = wire.details(model)
        return JSONResponse(
            {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "license": "",
                "details": info,
                "model_info": {"general.architecture": info["family"], "general.basename": model.name},
                "capabilities": wire.capabilities(model.backend),
                "modified_at": wire.timestamp(time.time() * 1000),
                "syncq": {"backend": model.backend, "nodes": list(model.nodes)},
            }
        )

    async def unsupported(self, request: Request) -> Response:
        raise ApiError(
            501,
            f"{request.url.path} is not supported: the mesh serves the models its nodes hold "
            "(add one to a node's models.toml)",
        )

    async def chat(self, request: Request) -> Response:
        body = await json_body(request, any_type=True)
        model = self._model(body.get("model"))
        turns = wire.turns_from(body.get("messages"))
        wire.refuse_extras(body, ("think", "logprobs", "template"))
        if not turns:
            return _at_once(body, {"message": {"role": "assistant", "content": ""}})
        params, stops = self._settings(body)
        llm = wire.chat_input(body, turns, stops)
        shape = wire.Answer("chat", body["model"], _now_ms)
        return await self._run(request, body, model, "chat", llm, params, shape)

    async def generate(self, request: Request) -> Response:
        body = await json_body(request, any_type=True)
        model = self._model(body.get("model"))
        wire.refuse_extras(body, ("think", "logprobs", "template", "context", "suffix", "images"))
        if not body.get("prompt"):
            return _at_once(body, {"response": ""})
        params, stops = self._settings(body)
        text, mode, llm = wire.generate_input(body, stops)
        shape = wire.Answer("generate", body["model"], _now_ms)
        return await self._run(request, body, model, mode, llm, params, shape, text)

    async def embed(self, request: Request) -> Response:
        body = await json_body(request, any_type=True)
        model = self._model(body.get("model"))
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a text or a list of texts")
        if body.get("dimensions") is not None:
            raise ApiError(400, "dimensions is not supported: a model's vectors keep their size")
        if body.get("truncate") is False:
            raise ApiError(400, "truncate false is not supported: a text beyond the context fails anyway")
        vectors, usage = await self._embed(body, model, texts) if texts else ([], {})
        counts = wire.counts(usage)
        return JSONResponse(
            {
                "model": body["model"],
                "embeddings": vectors,
                "total_duration": counts["total_duration"],
                "load_duration": 0,
                "prompt_eval_count": counts["prompt_eval_count"],
            }
        )

    async def embeddings(self, request: Request) -> Response:
        body = await json_body(request, any_type=True)
        model = self._model(body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be text")
        vectors, _ = await self._embed(body, model, [prompt]) if prompt else ([[]], {})
        return JSONResponse({"embedding": vectors[0]})

    # -- the steps every prompt takes ------------------------------------------------------------

    def _llms(self) -> list[MeshModel]:
        return [m for m in self.space.models() if m.backend not in BACKEND_KINDS]

    def _model(self, asked: object) -> MeshModel:
        """The llm model a request names. Raises ``ApiError``: 400 without one, 404 for a model
        nobody serves, 503 for one the nodes that have it cannot run now."""
        if not isinstance(asked, str) or not asked:
            raise ApiError(400, "model is required")
        found = wire.find_model(self._llms(), asked)
        if found is not None:
            return found
        name = asked.removesuffix(":latest")
        why = [f"{n.name}: {ad.unusable}" for n in self.space.nodes() for ad in n.models if ad.name == name]
        if why:
            raise ApiError(503, f"no node can run the model '{name}' now ({'; '.join(why)})")
        raise wire.not_found(asked)

    def _listed(self, model: MeshModel, modified_ms: float) -> dict[str, Any]:
        sizes = [ad.size for n in self.space.nodes() for ad in n.models if ad.name == model.name]
        name = wire.listed_name(model.name)
        return {
            "name": name,
            "model": name,
            "modified_at": wire.timestamp(modified_ms),
            "size": max(sizes, default=0),
            "digest": wire.digest(model.name),
            "details": wire.details(model),
        }

    def _expiry(self, model: MeshModel, now: float) -> float:
        """When a loaded model is likely to unload (ms): its latest prompt's end plus that
        prompt's keep_alive (or the manager's default); now plus that while one still runs.
        An estimate: a node unloads on its own clock, and may keep the model longer for a
        prompt that asked, or drop it sooner when memory runs short."""
        latest = self.space.log(limit=20, model=model.name)
        if not latest:
            return now + DEFAULT_KEEP_ALIVE_S * 1000
        entry = latest[-1]
        kept = entry.prompt.params.get("keep_alive")
        keep_ms = (float(kept) if isinstance(kept, int | float) else DEFAULT_KEEP_ALIVE_S) * 1000
        if entry.status in (Status.QUEUED, Status.CLAIMED, Status.RUNNING) or entry.result is None:
            return now + keep_ms
        return max(now, entry.result.finished_at + keep_ms)

    def _settings(self, body: Mapping[str, Any]) -> tuple[dict[str, ParamValue], tuple[str, ...]]:
        """The params the body's options and keep_alive make, and its stop strings. Raises
        ``ApiError``."""
        params, stops = wire.options_params(body)
        if body.get("keep_alive") is not None:
            params["keep_alive"] = _seconds(body["keep_alive"])
        return params, stops

    async def _add(
        self,
        text: str,
        model: MeshModel,
        mode: str,
        llm: LlmInput,
        params: Mapping[str, ParamValue],
        priority: int,
        *,
        durable: bool,
        at_once: bool,
    ) -> str:
        """Queue the prompt; returns its id. Raises ``ApiError`` for what the node refuses.
        ``durable`` and ``at_once`` as in ``AsyncClient.submit``: a streamed answer starts
        before the result, and otherwise the answer is the acknowledgement."""
        plain = llm == LlmInput() or llm == LlmInput(messages=(Message(role="user", content=text),))
        why = refusal(model.backend, model.name, mode, None if plain else llm)
        if why is not None:
            raise ApiError(400, why)
        refuse_knobs(self.space, self.settings, model.name, params)
        # Only a prompt that needs more than its text carries the llm field (older nodes and
        # ``syncq show`` read the text alone).
        try:
            added = await self.space.submit(
                text,
                model=model.name,
                params={**params, "mode": mode},
                priority=priority,
                llm=None if plain else llm,
                durable=durable,
                at_once=at_once,
            )
        except InvalidInput as exc:  # chat.Unable among them: the node's own check of the model
            raise ApiError(400, str(exc)) from exc
        return added.id

    async def _run(
        self,
        request: Request,
        body: Mapping[str, Any],
        model: MeshModel,
        mode: str,
        llm: LlmInput,
        params: Mapping[str, ParamValue],
        shape: wire.Answer,
        text: str = "",
    ) -> Response:
        stream = _stream_flag(body)
        priority = _priority(body, 1 if stream else 0)
        # Every header and flag is read before the prompt is queued: a 400 leaves nothing behind.
        keep = header_flag(request, "x-syncq-keep-on-disconnect") or flag(body, "keep_on_disconnect")
        cancel = header_flag(request, "x-syncq-cancel-on-disconnect")
        text = text or shown_text(llm.messages)
        at_once = not stream and not cancel
        prompt_id = await self._add(text, model, mode, llm, params, priority, durable=stream, at_once=at_once)
        if stream:
            return StreamingResponse(self._stream(prompt_id, shape, keep), media_type=NDJSON)
        outcome = await outcome_or_cancel(self.space, request, prompt_id, cancel_on_disconnect=cancel)
        return JSONResponse(shape.final(outcome, outcome.finish, outcome.tool_calls, whole=True))

    async def _stream(self, prompt_id: str, shape: wire.Answer, keep: bool) -> AsyncIterator[bytes]:
        finished = False
        try:
            async for item in streamed(self.space, prompt_id):
                if isinstance(item, str):
                    yield _line(shape.chunk(item))
                else:
                    outcome = item
            finished = True
            if not outcome.ok:
                yield _line({"error": failure(self.space, outcome)})
                return
            if outcome.tool_calls:
                yield _line(shape.chunk("", outcome.tool_calls))
            yield _line(shape.final(outcome, outcome.finish, (), whole=False))
        except ApiError as exc:  # tool arguments Ollama's clients cannot take
            yield _line({"error": str(exc)})
        finally:
            if not finished and not keep:  # the client hung up: a chat UI's Stop
                with contextlib.suppress(SyncqError):
                    self.space.cancel(prompt_id)

    async def _embed(
        self, body: Mapping[str, Any], model: MeshModel, texts: list[str]
    ) -> tuple[list[list[float]], Mapping[str, Any]]:
        params, stops = self._settings(body)
        if stops:
            raise ApiError(400, "stop has no meaning for embeddings")
        llm = LlmInput(inputs=tuple(texts)) if len(texts) > 1 else LlmInput()
        prompt_id = await self._add(
            texts[0], model, "embed", llm, params, _priority(body, 0), durable=False, at_once=True
        )
        outcome = await await_outcome(self.space, prompt_id)
        return wire.vectors(outcome.text, len(texts)), outcome.usage


def _now_ms() -> float:
    return time.time() * 1000


def _at_once(body: Mapping[str, Any], said: dict[str, Any]) -> Response:
    """Ollama's load (empty prompt or messages) or unload (the same with keep_alive 0) request,
    answered without a prompt: a node loads a model for its first prompt anyway."""
    keep = body.get("keep_alive")
    unload = keep is not None and _seconds(keep) == 0
    answer = {"model": body["model"], "created_at": wire.timestamp(time.time() * 1000), **said}
    return JSONResponse(answer | {"done": True, "done_reason": "unload" if unload else "load"})


def _seconds(value: object) -> float:
    try:
        return keep_alive_seconds(value)
    except InvalidInput as exc:
        raise ApiError(400, str(exc)) from exc


def _stream_flag(body: Mapping[str, Any]) -> bool:
    """``stream``: true unless the body says false (Ollama's default)."""
    return True if body.get("stream") is None else flag(body, "stream")


def _priority(body: Mapping[str, Any], default: int) -> int:
    value = body.get("priority")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not -1000 <= value <= 1000:
        raise ApiError(400, "priority must be a whole number from -1000 to 1000")
    return value


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"
