"""The local HTTP API: OpenAI-compatible endpoints that enqueue into the space and answer when
the result arrives, from whichever node runs the prompt (DESIGN.md section 10).

    GET  /v1/models                 every model of the mesh;  GET /v1/models/{id}: one
    POST /v1/chat/completions       {model, messages, stream?, tools?, response_format?, ...}
    POST /v1/completions            {model, prompt, stream?, ...}
    POST /v1/embeddings             {model, input: text | [text, ...], encoding_format?}
    POST /v1/audio/transcriptions   a form: file, model, language?, response_format?
                                    (json | text | srt | verbose_json)
    POST /v1/images/generations     {model, prompt, size?: "WxH", n?: 1, response_format?: b64_json,
                                    steps?, seed?, guidance?, negative_prompt?}
    GET  /api/prompts[?limit=N]     the log, newest last;  GET /api/prompts/{id}: one prompt
    GET  /api/prompts/{id}/files/{name}[?source=input|output]   an attachment's bytes
    GET  /api/nodes                 the nodes of the mesh and their models
    POST /api/prompts               {text, model, params?}: add;  POST /api/prompts/{id}/cancel|retry
    GET  /api/events                server-sent events: the ids of prompts that changed
    GET  /                          the web page (node/web/index.html): the queue, live

Each request is a prompt like ``syncq add``: it goes through an ``AsyncClient`` on the node's own
Space, which the node tells of every change and whose store tells the node of each commit
(``Node._serve_api``), so a prompt is claimed and its answer read at once. OpenAI's request fields become the
prompt's text, ``LlmInput`` (the conversation, tools, output format, stop strings) and params in
``openai_chat.py``, which also shapes the answers and stream chunks; every field is honoured or
refused with a 400 naming it. A streaming request is queued with priority 1 (else 0) unless it
sets ``priority``. A streaming client that disconnects cancels its prompt (Stop) unless it asked
to keep it (header ``X-Syncq-Keep-On-Disconnect: true`` or body ``keep_on_disconnect: true``);
a non-streaming one leaves it running, its answer kept in the log, unless it asked otherwise
(header ``X-Syncq-Cancel-On-Disconnect: true``). Errors have OpenAI's shape:
``{"error": {"message", "type", "code"}}`` with a 4xx status; a prompt that failed answers 502
with the executor's message and ``x-should-retry: false`` (syncq already retried it, up to the
prompt's ``max_attempts``: the official clients would otherwise run it three times more).

The endpoints whose input or output is a file (audio, images, attachments) live in
``media.py``; what both halves share (``ApiError``, the JSON body, the model check, awaiting an
outcome) in ``http_common.py``. This module wires them all into one app behind one guard
and one error mapping, and serves the rest.

Served on 127.0.0.1:7331 by default (``syncq node --api HOST:PORT``, ``--no-api``), behind
``api_guard.Guard``: the Host and Origin checks, the home's API key (``api_auth``: a Bearer
header, or the web page's session cookie from ``syncq web``'s login link) and the body's
content type, on every request; ``api_guard.guarded_protocol`` times out slow headers and caps
the connections.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import syncq
from syncq.client import MeshModel
from syncq.errors import InvalidInput, SyncqError, UnknownId, UserError, WaitTimeout
from syncq.lifecycle import Status
from syncq.log import Entry
from syncq.records import Prompt, PromptKind

from . import ollama, openai_chat
from .api_auth import ApiSettings
from .api_guard import Guard, guarded_protocol
from .http_common import (
    ApiError,
    failure,
    header_flag,
    json_body,
    outcome_or_cancel,
    refuse_knobs,
    served_backend,
    streamed,
)
from .media import Media, file_links, output_files

Translate = Callable[[Mapping[str, Any], str, "str | None"], openai_chat.ApiRequest]
STATUSES = tuple(s.value for s in Status)
# The page's own script and styles only: a prompt's text is shown as text, and should anything
# slip, it can neither load nor send anywhere else.
PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket. Raises ``UserError`` if the address is busy or not ours."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without, a kept-alive client waited 40 ms per answer
    # (Nagle's algorithm holding the body behind the headers until a delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UserError(f"the HTTP API cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the node owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(
    space: syncq.AsyncClient,
    sock: socket.socket,
    settings: ApiSettings,
    *,
    listen: tuple[str, int],
    report: Callable[[BaseException], None],
) -> None:
    """Serve the API on ``sock`` (bound to ``listen``) until cancelled; ``report`` is told of
    our own errors (answered 500)."""
    app = Guard(
        build_app(space, settings), settings, listen=listen, loopback=is_loopback(listen[0]), report=report
    )
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, http=guarded_protocol(settings)
    )
    server = _QuietServer(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True


def build_app(space: syncq.AsyncClient, settings: ApiSettings) -> Starlette:
    """The ASGI app over one space; ``Guard`` checks who may call it."""
    api, media = _Api(space, settings), Media(space, settings)
    html = resources.files("syncq.node").joinpath("web/index.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        # The page holds no data, so it needs no key; what it fetches does (the session cookie).
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"})

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except UnknownId as exc:
                return ApiError(404, str(exc), code="not_found").response()
            except WaitTimeout as exc:
                return ApiError(504, str(exc), "server_error", "timeout").response()
            except UserError as exc:
                return ApiError(400, str(exc)).response()
            except SyncqError as exc:  # a broken store or attachment: ours, and said as OpenAI would
                return ApiError(500, str(exc), "server_error", "internal_error").response()

        return endpoint

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = (
            "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else ""
        )
        message = f"no such endpoint: {request.method} {request.url.path}" if kind else str(exc.detail)
        return ApiError(exc.status_code, message, code=kind or "http_error").response()

    async def server_error(request: Request, exc: Exception) -> Response:
        return ApiError(
            500, "internal error: see the node's log", "server_error", "internal_error"
        ).response()

    return Starlette(
        routes=[
            Route("/v1/models", guarded(api.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", guarded(api.model), methods=["GET"]),
            Route("/v1/chat/completions", guarded(api.chat), methods=["POST"]),
            Route("/v1/completions", guarded(api.complete), methods=["POST"]),
            Route("/v1/embeddings", guarded(api.embed), methods=["POST"]),
            Route("/v1/audio/transcriptions", guarded(media.transcribe), methods=["POST"]),
            Route("/v1/images/generations", guarded(media.draw), methods=["POST"]),
            Route("/api/prompts", guarded(api.prompts), methods=["GET"]),
            Route("/api/prompts/{prompt_id}", guarded(api.prompt), methods=["GET"]),
            Route("/api/prompts/{prompt_id}/files/{name}", guarded(media.file), methods=["GET"]),
            Route("/api/nodes", guarded(api.nodes), methods=["GET"]),
            Route("/api/prompts", guarded(api.add), methods=["POST"]),
            Route("/api/prompts/{prompt_id}/cancel", guarded(api.cancel), methods=["POST"]),
            Route("/api/prompts/{prompt_id}/retry", guarded(api.retry), methods=["POST"]),
            Route("/api/events", guarded(api.events), methods=["GET"]),
            *ollama.routes(space, settings),
            Route("/", page, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


class _Api:
    """The chat, completion and log endpoints over one space, each a starlette handler."""

    def __init__(self, space: syncq.AsyncClient, settings: ApiSettings) -> None:
        self.space, self.settings = space, settings

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model(m) for m in self.space.models()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model_id"]
        for m in self.space.models():
            if m.name == name:
                return JSONResponse(_model(m))
        raise ApiError(
            404, f"The model '{name}' does not exist: no node of this space serves it", code="model_not_found"
        )

    async def chat(self, request: Request) -> Response:
        return await self._run(request, openai_chat.chat_request)

    async def complete(self, request: Request) -> Response:
        return await self._run(request, openai_chat.completion_request)

    async def embed(self, request: Request) -> Response:
        asked, added = await self._add(request, openai_chat.embedding_request, cancel_on_disconnect=False)
        outcome = await outcome_or_cancel(self.space, request, added.id, cancel_on_disconnect=False)
        return JSONResponse(openai_chat.embeddings(added.model, outcome.text, outcome.usage, asked.encoding))

    async def _add(
        self, request: Request, translate: Translate, *, cancel_on_disconnect: bool
    ) -> tuple[openai_chat.ApiRequest, Prompt]:
        """The body translated, checked against the model's backend, and queued (or run at
        once: ``AsyncClient.submit``)."""
        body = await json_body(request)
        model, backend = served_backend(self.space, body.get("model"), PromptKind.LLM)
        asked = translate(body, model, backend)
        refuse_knobs(self.space, self.settings, model, asked.params)
        try:
            # A streamed answer names its prompt before there is a result: that add is synced.
            # Otherwise the answer is the acknowledgement: the prompt may run here before it is
            # stored, and is stored with its result (unless its client's leaving must cancel it).
            added = await self.space.submit(
                asked.text,
                model=model,
                params=asked.params,
                priority=asked.priority,
                llm=asked.llm,
                durable=asked.stream,
                at_once=not asked.stream and not cancel_on_disconnect,
            )
        except InvalidInput as exc:
            raise ApiError(400, str(exc), code="invalid_parameter") from exc
        return asked, added

    async def _run(self, request: Request, translate: Translate) -> Response:
        # Both headers are checked before anything is queued.
        keep_header = header_flag(request, "x-syncq-keep-on-disconnect")
        cancel = header_flag(request, "x-syncq-cancel-on-disconnect")
        asked, added = await self._add(request, translate, cancel_on_disconnect=cancel)
        chat_mode = asked.mode == "chat"
        if asked.stream:
            keep = asked.keep_on_disconnect or keep_header
            return StreamingResponse(
                self._stream(added.id, added.model, chat_mode, asked.include_usage, cancel=not keep),
                media_type="text/event-stream",
            )
        outcome = await outcome_or_cancel(self.space, request, added.id, cancel_on_disconnect=cancel)
        extra = {"id": added.id, "node": outcome.node_name}
        return JSONResponse(openai_chat.answer(added.id, added.model, chat_mode, outcome, extra))

    async def _stream(
        self, prompt_id: str, model: str, chat_mode: bool, include_usage: bool, *, cancel: bool
    ) -> AsyncIterator[bytes]:
        """The answer as server-sent events. A client that hangs up cancels the prompt (a chat
        UI's Stop button) unless it asked to keep it: starlette ends this generator at once
        when the connection closes, wherever it waits."""
        chunks = openai_chat.Chunks(prompt_id, model, chat_mode)
        finished = False
        try:
            if start := chunks.start():
                yield start
            async for item in streamed(self.space, prompt_id):
                if isinstance(item, str):
                    yield chunks.text(item)
                else:
                    outcome = item
            finished = True
            if not outcome.ok:
                yield chunks.error(failure(self.space, outcome))
            elif calls := chunks.calls(outcome.tool_calls):
                yield calls
            yield chunks.finish(openai_chat.finish_reason(outcome.finish, outcome.tool_calls), outcome)
            if include_usage:
                yield chunks.usage(outcome.usage)
            yield chunks.done()
        finally:
            if not finished and cancel:
                with contextlib.suppress(SyncqError):
                    self.space.cancel(prompt_id)

    async def prompts(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError as exc:
            raise ApiError(400, "limit must be a whole number") from exc
        if limit < 0:
            raise ApiError(400, "limit must be 0 or more", param="limit")
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise ApiError(
                400, f"status must be one of {', '.join(STATUSES)}", code="invalid_status", param="status"
            )
        return JSONResponse({"data": [_entry(e) for e in self.space.log(limit=limit, status=status)]})

    async def prompt(self, request: Request) -> Response:
        return JSONResponse(_entry(self.space.get(request.path_params["prompt_id"])))

    async def nodes(self, request: Request) -> Response:
        return JSONResponse({"data": [n.to_wire() | {"id": n.id} for n in self.space.nodes()]})

    async def add(self, request: Request) -> Response:
        body = await json_body(request)
        text, model, params = body.get("text"), body.get("model"), body.get("params", {})
        if not isinstance(text, str) or not isinstance(model, str) or not isinstance(params, dict):
            raise ApiError(400, "give text (a string), model (a string) and optionally params (an object)")
        refuse_knobs(self.space, self.settings, model, params)
        prompt = await self.space.submit(text, model=model, params=params)
        return JSONResponse(_entry(self.space.get(prompt.id)), status_code=201)

    async def cancel(self, request: Request) -> Response:
        return JSONResponse(_entry(self.space.cancel(request.path_params["prompt_id"])))

    async def retry(self, request: Request) -> Response:
        return JSONResponse(_entry(self.space.retry(request.path_params["prompt_id"])))

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            yield b": connected\n\n"
            async for changed in self.space.changes():
                yield f"data: {json.dumps(sorted(changed))}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")


def _model(m: MeshModel) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": 0, "owned_by": "syncq", "nodes": list(m.nodes)}


def _entry(entry: Entry) -> dict[str, Any]:
    run = entry.result
    return {
        "id": entry.prompt.id,
        "model": entry.prompt.model,
        "input": entry.prompt.input,
        "status": entry.status.value,
        "created_at": entry.prompt.created_at,
        "output": run.output if run is not None and entry.status is Status.DONE else entry.stream,
        "error": run.error if run is not None else None,
        "node": run.node_name if run is not None else None,
        "files": file_links(entry.prompt.id, entry.prompt.files, "input"),
        "output_files": file_links(entry.prompt.id, output_files(entry), "output"),
    }
