"""A multipart upload read for ``POST /v1/audio/transcriptions``: its text fields, and its one
file written where the caller says once the caller has seen the fields it needs.

Starlette's own form parser spooled every file part into a ``SpooledTemporaryFile``: past 1 MiB,
a file of the system's temporary folder (/tmp), in plaintext, outside the home, before anything
of the request was checked. Here the file goes nowhere until ``place(fields)`` answers: it is
called when the file part begins if the ``model`` field came before it (what the OpenAI clients
send: fields first), else once the form has ended, the bytes held in memory until then (at most
the upload limit). ``place`` checks the model (raising ``ApiError``) and names the file's path,
under the home; the file is created there with mode 0600.
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from .http_common import ApiError, refuse_declared, too_large

MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 << 10
FILE_FIELD = "file"


@dataclass(slots=True)
class Upload:
    """What the form held: its text fields, and where its file was written (None: no file)."""

    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    filename: str = ""


@dataclass(slots=True)
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _Reader:
    """The parser's callbacks, and the file's bytes on their way to ``place``'s path."""

    def __init__(self, place: Callable[[Mapping[str, str], str], Path], charset: str) -> None:
        self.place, self.charset = place, charset
        self.upload = Upload()
        self.part = _Part()
        self.header_name = self.header_value = b""
        self.disposition = b""
        self.file_part: _Part | None = None  # the file, while it is held in memory
        self.out: IO[bytes] | None = None
        self.pending = bytearray()  # file bytes parsed but not yet written (written off the loop)

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.begin,
            "on_part_data": self.data,
            "on_part_end": self.end,
            "on_header_field": lambda d, s, e: self._add_header(d[s:e], b""),
            "on_header_value": lambda d, s, e: self._add_header(b"", d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
        }

    def begin(self) -> None:
        self.part, self.disposition = _Part(), b""

    def _add_header(self, name: bytes, value: bytes) -> None:
        self.header_name += name
        self.header_value += value

    def header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise ApiError(400, "the form could not be read: a part has no name", code="invalid_form")
        self.part.name = self._text(options[b"name"])
        if b"filename" not in options:
            if len(self.upload.fields) >= MAX_FIELDS:
                raise ApiError(400, f"the form has more than {MAX_FIELDS} fields", code="invalid_form")
            return
        if self.part.name != FILE_FIELD:
            raise ApiError(400, f"{self.part.name} must be a text field, not a file", param=self.part.name)
        if self.file_part is not None or self.upload.path is not None:
            raise ApiError(400, "the form has more than one file", code="invalid_form")
        self.part.filename = self.upload.filename = self._text(options[b"filename"])
        if "model" in self.upload.fields:
            self._open()
        else:
            self.file_part = self.part

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.part.filename is None:
            if len(self.part.data) + end - start > MAX_FIELD_BYTES:
                raise ApiError(400, f"the field {self.part.name} is too long", code="invalid_form")
            self.part.data += data[start:end]
        elif self.out is not None:
            self.pending += data[start:end]
        else:
            self.part.data += data[start:end]

    def end(self) -> None:
        if self.part.filename is None:
            self.upload.fields[self.part.name] = self._text(bytes(self.part.data))

    def finish(self) -> None:
        """The form has ended: a file held in memory goes to its place now."""
        if self.file_part is not None:
            held = self.file_part.data
            self._open()
            self.pending += held

    def _open(self) -> None:
        path = self.place(self.upload.fields, self.upload.filename)
        self.out = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self.upload.path, self.file_part = path, None

    async def flush(self) -> None:
        if self.out is not None and self.pending:
            chunk, self.pending = bytes(self.pending), bytearray()
            await asyncio.to_thread(self.out.write, chunk)

    def _text(self, raw: bytes) -> str:
        return raw.decode(self.charset, errors="replace")


async def read_upload(
    request: Request, limit: int, place: Callable[[Mapping[str, str], str], Path]
) -> Upload:
    """The form of ``request`` (a body of at most ``limit`` bytes), its file written to
    ``place(fields, filename)``. A body that is not multipart is an empty form. Raises
    ``ApiError`` (and whatever ``place`` raises)."""
    refuse_declared(request, limit)
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        return Upload()
    if b"boundary" not in options:
        raise ApiError(400, "the form could not be read: it has no boundary", code="invalid_form")
    charset = options.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    reader = _Reader(place, charset)
    parser = MultipartParser(options[b"boundary"], reader.callbacks())  # type: ignore[arg-type]
    seen = 0
    try:
        async for chunk in request.stream():  # a chunked body has no Content-Length to check
            seen += len(chunk)
            if seen > limit:
                raise too_large(limit)
            parser.write(chunk)
            await reader.flush()
        parser.finalize()
        reader.finish()
        await reader.flush()
    except FormParserError as exc:
        raise ApiError(400, f"the form could not be read: {exc}", code="invalid_form") from exc
    finally:
        if reader.out is not None:
            reader.out.close()
    return reader.upload
