"""The HTTP API's media endpoints: prompts whose input or output is a file (DESIGN.md section 10).

    POST /v1/audio/transcriptions   a form: file, model, language?, response_format?
                                    (json | text | srt | verbose_json)
    POST /v1/images/generations     {model, prompt, size?: "WxH", n?: 1, response_format?: b64_json,
                                    steps?, seed?, guidance?, negative_prompt?}
    GET  /api/prompts/{id}/files/{name}[?source=input|output]   an attachment's bytes

Audio and images are prompts with attachments (``Space.add(files=)``): the upload is sealed into
the home's attachment store, the node that runs the prompt fetches it, and the output files
(``<stem>.json`` and ``<stem>.srt`` of a transcript, ``image.png``) are fetched back through this
home's node (``syncq.client.fetch_files``) into a scratch folder under ``work/``, read, and
removed: plaintext never outlives the request. An upload is limited to 25 MiB as OpenAI's is,
refused from its Content-Length before a byte is read (and counted as it streams, for a body
sent in chunks).

The upload is read by ``uploads.read_upload``: written (mode 0600) into a folder of the home's
``work/`` (0700) only once its model was found served, never into the system's temporary
folder, and removed with the request.

``api.py`` routes these requests here, through the same guard and error mapping as the rest of
the API, and lists a prompt's files with ``file_links``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import mimetypes
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

import syncq
from syncq.blobs import BlobRef
from syncq.client import Outcome
from syncq.errors import BlobUnavailable, InvalidInput
from syncq.lifecycle import Status
from syncq.log import Entry
from syncq.records import IMAGE_PARAMS, Prompt, PromptKind, check_params

from .api_auth import ApiSettings
from .http_common import ApiError, await_outcome, json_body, refuse_knobs, served_model
from .uploads import read_upload

MAX_UPLOAD_BYTES = 25 << 20  # an audio file, as OpenAI limits it
FORM_SLACK_BYTES = 64 << 10  # the multipart framing and the small fields beside the file
FETCH_TIMEOUT_S = 600.0  # an attachment asked for through /api/prompts/{id}/files
IMAGE_EXTRAS = set(IMAGE_PARAMS) - {"width", "height"}  # steps, seed, guidance, negative_prompt ...
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json")
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


class Media:
    """The media endpoints over one space, each a starlette handler."""

    def __init__(self, space: syncq.AsyncClient, settings: ApiSettings) -> None:
        self.space, self.settings = space, settings
        work = self._work()
        work.chmod(0o700)  # once: a work/ made by an older version has the umask's mode
        for left in work.glob("api-*"):  # plaintext a kill -9 left behind
            shutil.rmtree(left, ignore_errors=True)

    async def transcribe(self, request: Request) -> Response:
        """``POST /v1/audio/transcriptions``. Raises ``ApiError``."""
        scratch: Path | None = None

        def place(fields: Mapping[str, str], filename: str) -> Path:
            # Called once the model is known: an upload for a model nobody serves is never written.
            nonlocal scratch
            served_model(self.space, fields.get("model") or None, PromptKind.ASR)
            scratch = self._scratch_folder()
            return scratch / _upload_name(filename)

        try:
            form = await read_upload(request, MAX_UPLOAD_BYTES + FORM_SLACK_BYTES, place)
            model = served_model(self.space, form.fields.get("model") or None, PromptKind.ASR)
            fmt = form.fields.get("response_format") or "json"
            if fmt not in TRANSCRIPT_FORMATS:
                raise ApiError(
                    400,
                    f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}, not {fmt!r}",
                    code="invalid_response_format",
                    param="response_format",
                )
            params = _asr_params(form.fields)
            if form.path is None or scratch is None:
                raise ApiError(
                    400,
                    "file is required: the audio, as a file in the form",
                    code="missing_file",
                    param="file",
                )
            refuse_knobs(self.space, self.settings, model, params)
            ref = await asyncio.to_thread(self.space.space.attach, form.path)  # reads it twice: off the loop
            added = self._add("", model, PromptKind.ASR, params, files=[ref])
            return _transcript(await self._finished(added.id, scratch / "out"), fmt)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    async def draw(self, request: Request) -> Response:
        """``POST /v1/images/generations``. Raises ``ApiError``."""
        body = await json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "prompt is required: the text to draw", code="missing_prompt", param="prompt")
        model = served_model(self.space, body.get("model"), PromptKind.IMAGE)
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
        refuse_knobs(self.space, self.settings, model, params)
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
        """``GET /api/prompts/{id}/files/{name}``: an input or output file's bytes. Raises
        ``ApiError``, ``UnknownId``."""
        entry = self.space.get(request.path_params["prompt_id"])
        name, source = request.path_params["name"], request.query_params.get("source")
        if source not in (None, "input", "output"):
            raise ApiError(400, "source must be input or output", param="source")
        refs = [
            *(output_files(entry) if source != "input" else ()),
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
        return _ScratchFile(
            scratch,
            path,
            media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
            filename=name,
            content_disposition_type="inline",
            # Files come from any device of the space: shown, never run as this page's script.
            headers={"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"},
        )

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

    async def _finished(self, prompt_id: str, files_dir: Path) -> Outcome:
        """The prompt's outcome once it is done, its output files in ``files_dir``. Raises
        ``ApiError`` (502) with the executor's message if it failed or was cancelled."""
        outcome = await await_outcome(self.space, prompt_id)
        if not outcome.attachments:
            return outcome
        saved = await self._fetch(outcome.attachments, files_dir)
        return dataclasses.replace(outcome, files=tuple(saved))

    async def _fetch(self, refs: Sequence[BlobRef], folder: Path) -> list[Path]:
        """Save attachments into ``folder``, this home's node fetching those not here yet."""
        return await self.space.save_files(refs, folder, timeout=FETCH_TIMEOUT_S)

    def _scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A private folder (0700) for plaintext (fetched outputs), removed on exit."""
        return tempfile.TemporaryDirectory(prefix="api-", dir=self._work(), ignore_cleanup_errors=True)

    def _scratch_folder(self) -> Path:
        """A private folder (0700) for plaintext; the caller removes it."""
        return Path(tempfile.mkdtemp(prefix="api-", dir=self._work()))

    def _work(self) -> Path:
        # Under the home (private to its owner), not /tmp: the files are decrypted.
        work = self.space.space.paths.root / "work"
        work.mkdir(mode=0o700, exist_ok=True)
        return work


def output_files(entry: Entry) -> tuple[BlobRef, ...]:
    """The prompt's output files: none unless it is done."""
    run = entry.result
    return run.files if run is not None and entry.status is Status.DONE else ()


def file_links(prompt_id: str, refs: Sequence[BlobRef], source: str) -> list[dict[str, Any]]:
    """The files as the log lists them, each with the URL that ``Media.file`` serves it at."""
    return [
        {
            "name": ref.name,
            "size": ref.size,
            "id": ref.id,
            "url": f"/api/prompts/{prompt_id}/files/{quote(ref.name)}?source={source}",
        }
        for ref in refs
    ]


def _upload_name(filename: str) -> str:
    """The upload's own name, sanitised: no folders, no leading dot, at most 200 bytes."""
    name = Path(filename.replace("\\", "/")).name.lstrip(".") or "audio"
    return name if len(name.encode()) <= 200 else "audio" + Path(name).suffix[:16]


def _asr_params(fields: Mapping[str, str]) -> dict[str, Any]:
    """The speech params in the form: OpenAI's ``language``, syncq's ``vad_filter``."""
    params: dict[str, Any] = {}
    language = fields.get("language") or None
    if language is not None:
        params["language"] = language
    vad = fields.get("vad_filter") or None
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


class _ScratchFile(FileResponse):
    """A decrypted file's response that removes its scratch folder however the sending ends.
    A ``background`` task would not run when sending raises (a client gone mid-file)."""

    def __init__(self, scratch: Path, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.scratch = scratch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
