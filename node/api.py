"""The local HTTP API: OpenAI-compatible endpoints that enqueue into the space and answer when
the result arrives, from whichever node runs the prompt (DESIGN.md section 10).

    GET  /v1/models                 every model of the mesh
    POST /v1/chat/completions       {model, messages, stream?, max_tokens?, temperature?, ...}
    POST /v1/completions            {model, prompt, stream?, ...}
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

Each request is a prompt like ``syncq add``: it goes through ``syncq.aopen`` on its own store
connection, so waiting wakes on the store's writes (``syncq.watch``) and the node syncs the
prompt as it syncs any other process's. A client that disconnects does not cancel its prompt
unless it asked to (header ``X-Syncq-Cancel-On-Disconnect: true``). Errors have OpenAI's shape:
``{"error": {"message", "type", "code"}}`` with a 4xx status; a prompt that failed answers 502
with the executor's message and ``x-should-retry: false`` (syncq already retried it, up to the
prompt's ``max_attempts``: the official clients would otherwise run it three times more).

Audio and images are prompts with attachments (``Space.add(files=)``): the upload is sealed into
the home's attachment store, the node that runs the prompt fetches it, and the output files
(``<stem>.json`` and ``<stem>.srt`` of a transcript, ``image.png``) are fetched back through this
home's node (``syncq.client.fetch_files``) into a scratch folder under ``work/``, read, and
removed: plaintext never outlives the request. An upload is limited to 25 MiB as OpenAI's is,
refused from its Content-Length before a byte is read (and counted as it streams, for a body
sent in chunks).

Served on 127.0.0.1:7331 by default (``syncq node --api HOST:PORT``, ``--no-api``). Beyond
loopback it needs a token (``SYNCQ_API_TOKEN`` or ``api_token`` in config.toml's ``[node]``),
checked in constant time on every request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import mimetypes
import re
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import Message

import syncq
from syncq.blobs import BlobRef
from syncq.client import Outcome
from syncq.errors import BlobUnavailable, InvalidInput, SyncqError, UnknownId, UserError, WaitTimeout
from syncq.lifecycle import Status
from syncq.log import Entry
from syncq.records import IMAGE_PARAMS, LLM_PARAMS, Prompt, PromptKind, check_params, messages_input
from syncq.space import BACKEND_KINDS

MAX_BODY_BYTES = 4 << 20
MAX_UPLOAD_BYTES = 25 << 20  # an audio file, as OpenAI limits it
FORM_SLACK_BYTES = 64 << 10  # the multipart framing and the small fields beside the file
FETCH_TIMEOUT_S = 600.0  # an attachment asked for through /api/prompts/{id}/files
PARAMS = set(LLM_PARAMS) - {"mode"}  # OpenAI's names where they exist; keep_alive etc. as extra_body
IMAGE_EXTRAS = set(IMAGE_PARAMS) - {"width", "height"}  # steps, seed, guidance, negative_prompt ...
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json")
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


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


async def serve_api(space: syncq.AsyncClient, sock: socket.socket, token: str | None) -> None:
    """Serve the API on ``sock`` until cancelled."""
    app = build_app(space, token)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = _QuietServer(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True


def build_app(space: syncq.AsyncClient, token: str | None) -> Starlette:
    """The ASGI app over one space."""
    api = _Api(space)
    html = resources.files("syncq.node").joinpath("web/index.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        # The page holds no data, so it needs no token; what it fetches does.
        return HTMLResponse(html)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if token is not None:
                given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return ApiError(401, "a valid API token is required (Bearer)", "auth_error").response()
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

    return Starlette(
        routes=[
            Route("/v1/models", guarded(api.models), methods=["GET"]),
            Route("/v1/chat/completions", guarded(api.chat), methods=["POST"]),
            Route("/v1/completions", guarded(api.complete), methods=["POST"]),
            Route("/v1/audio/transcriptions", guarded(api.transcribe), methods=["POST"]),
            Route("/v1/images/generations", guarded(api.draw), methods=["POST"]),
            Route("/api/prompts", guarded(api.prompts), methods=["GET"]),
            Route("/api/prompts/{prompt_id}", guarded(api.prompt), methods=["GET"]),
            Route("/api/prompts/{prompt_id}/files/{name}", guarded(api.file), methods=["GET"]),
            Route("/api/nodes", guarded(api.nodes), methods=["GET"]),
            Route("/api/prompts", guarded(api.add), methods=["POST"]),
            Route("/api/prompts/{prompt_id}/cancel", guarded(api.cancel), methods=["POST"]),
            Route("/api/prompts/{prompt_id}/retry", guarded(api.retry), methods=["POST"]),
            Route("/api/events", guarded(api.events), methods=["GET"]),
            Route("/", page, methods=["GET"]),
        ]
    )


class _Api:
    def __init__(self, space: syncq.AsyncClient) -> None:
        self.space = space
        for left in self._work().glob("api-*"):  # plaintext a kill -9 left behind
            shutil.rmtree(left, ignore_errors=True)

    async def models(self, request: Request) -> Response:
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "syncq", "nodes": list(m.nodes)}
            for m in self.space.models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        body = await _body(request)
        try:
            text = messages_input(body.get("messages"))
        except InvalidInput as exc:
            raise ApiError(400, str(exc), code="invalid_messages") from exc
        return await self._run(request, body, text, "chat", "chat.completion")

    async def complete(self, request: Request) -> Response:
        body = await _body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string", code="invalid_prompt")
        return await self._run(request, body, prompt, "complete", "text_completion")

    async def _run(
        self, request: Request, body: Mapping[str, Any], text: str, mode: str, kind: str
    ) -> Response:
        model = self._served(body.get("model"), PromptKind.LLM)
        params: dict[str, Any] = {k: v for k, v in body.items() if k in PARAMS and v is not None}
        if isinstance(params.get("stop"), list):
            params["stop"] = params["stop"][0] if params["stop"] else None
        try:
            added = self.space.add(text, model=model, params={**params, "mode": mode})
        except InvalidInput as exc:
            raise ApiError(400, str(exc), code="invalid_parameter") from exc
        cancel_on_disconnect = request.headers.get("x-syncq-cancel-on-disconnect", "").lower() == "true"
        if body.get("stream"):
            return StreamingResponse(
                self._stream(request, added.id, model, kind, cancel_on_disconnect),
                media_type="text/event-stream",
            )
        outcome = await self._finished(added.id)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if kind == "chat.completion":
            choice["message"] = {"role": "assistant", "content": outcome.text}
        else:
            choice["text"] = outcome.text
        return JSONResponse(
            {
                "id": f"syncq-{added.id}",
                "object": kind,
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": _usage(outcome.usage),
                "syncq": {"id": added.id, "node": outcome.node_name},
            }
        )

    async def _stream(
        self, request: Request, prompt_id: str, model: str, kind: str, cancel_on_disconnect: bool
    ) -> AsyncIterator[bytes]:
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
        created = int(time.time())

        def event(delta: str | None, finish: str | None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chunk_kind == "chat.completion.chunk":
                choice["delta"] = {"content": delta} if delta is not None else {}
            else:
                choice["text"] = delta or ""
            data = {
                "id": f"syncq-{prompt_id}",
                "object": chunk_kind,
                "created": created,
                "model": model,
                "choices": [choice],
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        finished = False
        try:
            async for piece in self.space.stream(prompt_id):
                yield event(piece, None)
            outcome = await self.space.result(prompt_id)
            finished = True
            if not outcome.ok:
                error = {
                    "error": {
                        "message": f"the prompt {outcome.status}: {outcome.error or ''}",
                        "type": "server_error",
                    }
                }
                yield f"data: {json.dumps(error)}\n\n".encode()
            yield event(None, "stop")
            yield b"data: [DONE]\n\n"
        finally:
            if not finished and cancel_on_disconnect:
                with contextlib.suppress(SyncqError):
                    self.space.cancel(prompt_id)

    async def transcribe(self, request: Request) -> Response:
        with self._scratch() as scratch:
            form = await _form(request, MAX_UPLOAD_BYTES + FORM_SLACK_BYTES)
            try:
                model = self._served(_field(form, "model"), PromptKind.ASR)
                fmt = _field(form, "response_format") or "json"
                if fmt not in TRANSCRIPT_FORMATS:
                    raise ApiError(
                        400,
                        f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}, not {fmt!r}",
                        code="invalid_response_format",
                        param="response_format",
                    )
                params = _asr_params(form)
                audio = await _save_upload(form.get("file"), Path(scratch))
            finally:
                await form.close()
            ref = await asyncio.to_thread(self.space.space.attach, audio)  # reads it twice: off the loop
            added = self._add("", model, PromptKind.ASR, params, files=[ref])
            return _transcript(await self._finished(added.id, Path(scratch) / "out"), fmt)

    async def draw(self, request: Request) -> Response:
        body = await _body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "prompt is required: the text to draw", code="missing_prompt", param="prompt")
        model = self._served(body.get("model"), PromptKind.IMAGE)
        if body.get("n") not in (None, 1):
            raise ApiError(400, "n must be 1: syncq draws one image per request", code="invalid_n", param="n")
        fmt = body.get("response_format") or "b64_json"
        if fmt != "b64_json":
            raise ApiError(
                400,
                f"response_format {fmt!r} is not supported: syncq serves no image URLs; "
                "use b64_json (the default)",
                code="invalid_response_format",
                param="response_format",
            )
        if body.get("output_format") not in (None, "png"):
            raise ApiError(
                400, "output_format must be png", code="invalid_output_format", param="output_format"
            )
        params = {k: v for k, v in body.items() if k in IMAGE_EXTRAS and v is not None}
        added = self._add(prompt, model, PromptKind.IMAGE, params | _size(body.get("size")))
        with self._scratch() as scratch:
            outcome = await self._finished(added.id, Path(scratch))
            image = next((f for f in outcome.files if f.suffix.lower() == ".png"), None)
            if image is None:
                raise ApiError(
                    502, f"{model} answered with no image", "server_error", "no_image", retry=False
                )
            data = base64.b64encode(image.read_bytes()).decode("ascii")
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": data, "revised_prompt": None}],
                "output_format": "png",
                "syncq": {"id": added.id, "node": outcome.node_name, "usage": dict(outcome.usage)},
            }
        )

    async def file(self, request: Request) -> Response:
        entry = self.space.get(request.path_params["prompt_id"])
        name, source = request.path_params["name"], request.query_params.get("source")
        if source not in (None, "input", "output"):
            raise ApiError(400, "source must be input or output", param="source")
        refs = [
            *(_outputs(entry) if source != "input" else ()),
            *(entry.prompt.files if source != "output" else ()),
        ]
        ref = next((r for r in refs if r.name == name), None)
        if ref is None:
            have = ", ".join(sorted({r.name for r in refs})) or "none"
            raise ApiError(
                404, f"prompt {entry.prompt.id} has no file {name!r} (files: {have})", code="not_found"
            )
        scratch = self._scratch_folder()
        try:
            (path,) = await self._fetch([ref], scratch)
        except BlobUnavailable as exc:  # no connected peer holds it now
            shutil.rmtree(scratch, ignore_errors=True)
            raise ApiError(503, str(exc), "server_error", "file_unavailable") from exc
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return FileResponse(
            path,
            media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
            filename=name,
            content_disposition_type="inline",
            # Files come from any device of the space: shown, never run as this page's script.
            headers={"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"},
            background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True),
        )

    def _served(self, model: object, kind: PromptKind) -> str:
        """The model, if some node serves it for prompts of ``kind``. Raises ``ApiError``."""
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required", code="missing_model", param="model")
        backend = {m.name: m.backend for m in self.space.models()}.get(model)
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
        return model

    def _add(
        self,
        text: str,
        model: str,
        kind: PromptKind,
        params: Mapping[str, Any],
        files: Sequence[BlobRef] = (),
    ) -> Prompt:
        try:
            return self.space.space.add(text, model=model, kind=kind, params=params, files=files)
        except InvalidInput as exc:
            raise ApiError(400, str(exc), code="invalid_parameter") from exc

    async def _finished(self, prompt_id: str, files_dir: Path | None = None) -> Outcome:
        """The prompt's outcome once it is done, its output files in ``files_dir``. Raises
        ``ApiError`` (502) with the executor's message if it failed or was cancelled."""
        async for _ in self.space.stream(prompt_id):  # ends when the prompt does
            pass
        outcome = Outcome.of(self.space.get(prompt_id))
        if not outcome.ok:
            raise ApiError(
                502,
                f"the prompt {outcome.status}: {outcome.error or ''}".strip(),
                "server_error",
                "prompt_failed",
                retry=False,
            )
        if files_dir is None or not outcome.attachments:
            return outcome
        saved = await self._fetch(outcome.attachments, files_dir)
        return dataclasses.replace(outcome, files=tuple(saved))

    async def _fetch(self, refs: Sequence[BlobRef], folder: Path) -> list[Path]:
        """Save attachments into ``folder``, this home's node fetching those not here yet."""
        return await self.space.save_files(refs, folder, timeout=FETCH_TIMEOUT_S)

    def _scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A private folder for plaintext (uploads, fetched outputs), removed on exit."""
        return tempfile.TemporaryDirectory(prefix="api-", dir=self._work(), ignore_cleanup_errors=True)

    def _scratch_folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="api-", dir=self._work()))

    def _work(self) -> Path:
        # Under the home (private to its owner), not /tmp: the files are decrypted.
        work = self.space.space.paths.root / "work"
        work.mkdir(exist_ok=True)
        return work

    async def prompts(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError as exc:
            raise ApiError(400, "limit must be a whole number") from exc
        status = request.query_params.get("status")
        return JSONResponse({"data": [_entry(e) for e in self.space.log(limit=limit, status=status)]})

    async def prompt(self, request: Request) -> Response:
        return JSONResponse(_entry(self.space.get(request.path_params["prompt_id"])))

    async def nodes(self, request: Request) -> Response:
        return JSONResponse({"data": [n.to_wire() | {"id": n.id} for n in self.space.nodes()]})

    async def add(self, request: Request) -> Response:
        body = await _body(request)
        text, model, params = body.get("text"), body.get("model"), body.get("params", {})
        if not isinstance(text, str) or not isinstance(model, str) or not isinstance(params, dict):
            raise ApiError(400, "give text (a string), model (a string) and optionally params (an object)")
        prompt = self.space.add(text, model=model, params=params)
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


async def _body(request: Request) -> dict[str, Any]:
    _refuse_declared(request, MAX_BODY_BYTES)
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large(MAX_BODY_BYTES)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit >> 20} MiB", code="too_large")


def _refuse_declared(request: Request, limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit``, before a byte of it is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def _form(request: Request, limit: int) -> FormData:
    """The multipart form, read with at most ``limit`` bytes of body. Raises ``ApiError``."""
    _refuse_declared(request, limit)
    seen = 0

    async def receive() -> Message:  # a body sent in chunks has no Content-Length to check
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _too_large(limit)
        return message

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=32)
    except (MultiPartException, HTTPException) as exc:
        reason = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise ApiError(400, f"the form could not be read: {reason}", code="invalid_form") from exc


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise ApiError(400, f"{name} must be a text field, not a file", param=name)


async def _save_upload(upload: object, folder: Path) -> Path:
    """Write the form's ``file`` into ``folder`` under its own (sanitised) name."""
    if not isinstance(upload, UploadFile):
        raise ApiError(
            400, "file is required: the audio, as a file in the form", code="missing_file", param="file"
        )
    name = Path((upload.filename or "").replace("\\", "/")).name.lstrip(".") or "audio"
    path = folder / (name if len(name.encode()) <= 200 else "audio" + Path(name).suffix[:16])
    await asyncio.to_thread(_copy, upload.file, path)
    return path


def _copy(source: IO[bytes], path: Path) -> None:
    source.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out)


def _asr_params(form: FormData) -> dict[str, Any]:
    """The speech params in the form: OpenAI's ``language``, syncq's ``vad_filter``."""
    params: dict[str, Any] = {}
    language = _field(form, "language")
    if language is not None:
        params["language"] = language
    vad = _field(form, "vad_filter")
    if vad is not None:
        if vad.lower() not in ("true", "false"):
            raise ApiError(400, "vad_filter must be true or false", param="vad_filter")
        params["vad_filter"] = vad.lower() == "true"
    try:
        return check_params(params, PromptKind.ASR)
    except InvalidInput as exc:
        raise ApiError(400, str(exc), code="invalid_parameter") from exc


def _transcript(outcome: Outcome, fmt: str) -> Response:
    """The transcript in OpenAI's ``response_format``, from the text and the result's files."""
    if fmt == "json":
        return JSONResponse({"text": outcome.text})
    if fmt == "text":
        return PlainTextResponse(outcome.text + "\n")
    suffix = ".srt" if fmt == "srt" else ".json"
    found = next((f for f in outcome.files if f.suffix == suffix), None)
    if found is None:
        raise ApiError(
            502, f"{outcome.model} answered with no {suffix} file", "server_error", "no_file", retry=False
        )
    if fmt == "srt":
        return PlainTextResponse(found.read_text(encoding="utf-8"), media_type="application/x-subrip")
    doc = json.loads(found.read_text(encoding="utf-8"))
    return JSONResponse(
        {
            "task": "transcribe",
            "language": doc.get("language"),
            "duration": doc.get("duration"),
            "text": outcome.text,
            "segments": doc.get("segments", []),
        }
    )


def _size(size: object) -> dict[str, int]:
    """``"WxH"`` as width and height params; none for no size (the pipeline's own) or "auto"."""
    if size is None or size == "auto":
        return {}
    found = SIZE.fullmatch(size) if isinstance(size, str) else None
    if found is None:
        raise ApiError(
            400, f"size must be WIDTHxHEIGHT, e.g. 512x512, not {size!r}", code="invalid_size", param="size"
        )
    width, height = int(found[1]), int(found[2])
    check = IMAGE_PARAMS["width"][0]
    if not (check(width) and check(height)):
        raise ApiError(
            400,
            f"size {size} is not one this API draws: width and height must be multiples of 8 from 8 to 8192",
            code="invalid_size",
            param="size",
        )
    return {"width": width, "height": height}


def _outputs(entry: Entry) -> tuple[BlobRef, ...]:
    run = entry.result
    return run.files if run is not None and entry.status is Status.DONE else ()


def _files(prompt_id: str, refs: Sequence[BlobRef], source: str) -> list[dict[str, Any]]:
    return [
        {
            "name": ref.name,
            "size": ref.size,
            "id": ref.id,
            "url": f"/api/prompts/{prompt_id}/files/{quote(ref.name)}?source={source}",
        }
        for ref in refs
    ]


def _usage(usage: Mapping[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    completion = int(usage.get("completion_tokens", usage.get("tokens", 0)) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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
        "files": _files(entry.prompt.id, entry.prompt.files, "input"),
        "output_files": _files(entry.prompt.id, _outputs(entry), "output"),
    }
