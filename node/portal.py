"""The file portal: requests as folders, not sockets (DESIGN.md section 9).

A portal is a folder with ``inbox/ queued/ outbox/ errors/`` (the home's ``portal/``, plus any
listed under ``portals`` in config.toml's ``[node]``). A client writes a request folder elsewhere
and renames it into ``inbox/`` (only a complete rename counts: nothing is read before it is
there whole). The request is ``request.yaml`` or ``request.json``::

    model: gemma3-270m          # required
    prompt: Why is the sky blue?   # or messages: [{role: user, content: ...}, ...]
    params: {max_tokens: 64}
    priority: 0
    files: [talk.wav]           # attachments: files of the request folder (optional)

Defaults cascade from ``defaults.yaml`` in the portal folder (the request wins; params merge;
``files`` only ever come from the request). ``files`` names files inside the request folder,
by relative paths; an absolute path, a ``..``, a symbolic link or a missing file is a bad
request. Without ``files`` nothing is attached, whatever else the folder holds. With files the
prompt text may be left out (a speech model takes exactly one audio file). The
params are checked for the kind of model the mesh serves (llm, asr, image).

The node takes each request in three steps, each safe to repeat after a crash (kill -9)::

    1. pick an id, write it to inbox/NAME/.syncq-id        (a crash here: the id is reused)
    2. rename inbox/NAME -> queued/ID                      (atomic)
    3. add the prompt with that id                         (``Space.add(prompt_id=)``: idempotent)

On start, folders in ``queued/`` whose prompt the log lacks are added (step 3 again), and those
left in ``inbox/`` are taken (step 1 reuses a recorded id). So a request is never lost and never
added twice. When the prompt ends, on whichever device it ran, the node writes ``result.json``
(status, text, error, usage, timings, node) and ``answer.txt`` (the text alone) into the
folder and renames it to ``outbox/ID``; while an LLM runs, ``partial.txt`` holds the output so
far. A result's output files (a transcript's ``talk.json`` and ``talk.srt``, an ``image.png``)
are fetched through the node first and written beside them, and ``result.json`` lists them under
``files``. An output never replaces a file of the request: one with the same name and the same
bytes is that file (echo's copies), one with other bytes is written as ``NAME-2.EXT``. If an
output cannot be fetched (no peer that holds it is connected), the folder stays in ``queued/``
and the node tries again a little later. A bad request goes to ``errors/NAME`` with
``error.txt`` saying what is wrong. The node never deletes anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import filecmp
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from syncq.blobs import MAX_FILES, BlobRef
from syncq.client import Outcome
from syncq.errors import InvalidInput, SyncqError, UserError
from syncq.ids import PromptId, is_prompt_id
from syncq.lifecycle import TERMINAL
from syncq.log import Changes, Entry, Log
from syncq.records import PromptKind, check_params, messages_input
from syncq.space import BACKEND_KINDS, Space, wall_clock_ms
from syncq.watch import FolderWatch, wait_event

if TYPE_CHECKING:
    from .daemon import Node

FOLDERS = ("inbox", "queued", "outbox", "errors")
ID_FILE = ".syncq-id"
MAX_REQUEST_BYTES = 1 << 20  # request.yaml / request.json
MAX_FOLDER_BYTES = 512 << 20  # everything in one request folder
SAFETY_S = 5.0  # a look at the inbox this often even without a change reported
RETRY_FILES_S = 30.0  # a result whose files could not be fetched is tried again after this
OUT_STAGING = ".syncq-out"  # output files are decrypted here, then moved beside result.json
# Names the portal writes: an output file never takes one of them.
RESERVED = frozenset({"request.yaml", "request.json", "result.json", "answer.txt", "partial.txt", ID_FILE})


class BadRequest(UserError):
    """A request folder the portal cannot take; the message goes to error.txt."""


def portal_roots(home: Path, config: Mapping[str, Any]) -> list[Path]:
    """The home's portal and those listed in config.toml's ``[node] portals``."""
    extra = config.get("portals", [])
    if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
        raise UserError(f"{home / 'config.toml'}: [node] portals must be a list of folder paths")
    return [home / "portal", *(Path(p).expanduser() for p in extra)]


def read_request(folder: Path, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The request in ``folder`` with the portal's defaults under it. Raises ``BadRequest``."""
    if folder.is_symlink() or not folder.is_dir():
        raise BadRequest("a request must be a folder, not a file or a symbolic link")
    files = [folder / "request.yaml", folder / "request.json"]
    found = [f for f in files if f.exists() or f.is_symlink()]
    if not found:
        raise BadRequest("no request.yaml or request.json in the folder")
    if len(found) > 1:
        raise BadRequest("both request.yaml and request.json: keep one")
    total = 0
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise BadRequest(f"{path.relative_to(folder)} is a symbolic link: copy the file in instead")
        total += path.stat().st_size if path.is_file() else 0
        if total > MAX_FOLDER_BYTES:
            raise BadRequest(f"the folder holds more than {MAX_FOLDER_BYTES >> 20} MiB")
    request = _parse(found[0])
    merged = {**defaults, **request, "params": {**defaults.get("params", {}), **request.get("params", {})}}
    merged.pop("files", None)  # a default list of files would name files of no request
    if "files" in request:
        merged["files"] = request["files"]
    _check(merged)
    return merged


def attachments(folder: Path, request: Mapping[str, Any]) -> list[Path]:
    """The files the request attaches (``files:``), checked. Raises ``BadRequest``."""
    names = request.get("files", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise BadRequest("files: must be a list of file names in the request folder (e.g. [talk.wav])")
    if len(names) > MAX_FILES:
        raise BadRequest(f"files: at most {MAX_FILES} files per request ({len(names)} given)")
    paths = [_attachment(folder, name) for name in names]
    seen: set[str] = set()
    for path in paths:
        if path.name in seen:
            raise BadRequest(f"files: two files are named {path.name!r}; attachments need distinct names")
        seen.add(path.name)
    return paths


def _attachment(folder: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise BadRequest(f"files: {name!r} must be a relative path inside the request folder, without ..")
    path = folder.joinpath(*relative.parts)
    for step in [*reversed(path.relative_to(folder).parents), path.relative_to(folder)]:
        if (folder / step).is_symlink():
            raise BadRequest(f"files: {name!r} is a symbolic link: copy the file in instead")
    if not path.is_file():
        raise BadRequest(f"files: {name!r} is not a file in the request folder")
    return path


def _parse(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_REQUEST_BYTES:
        raise BadRequest(f"{path.name} is larger than {MAX_REQUEST_BYTES >> 10} KiB")
    text = path.read_text(encoding="utf-8", errors="strict")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise BadRequest(f"{path.name} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest(f"{path.name} must hold a mapping (model: ..., prompt: ...)")
    return data


def _check(request: Mapping[str, Any]) -> None:
    known = {"model", "prompt", "messages", "params", "priority", "max_attempts", "files"}
    unknown = sorted(set(request) - known)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; a request has {', '.join(sorted(known))}")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise BadRequest("model: is missing (the name of a model, e.g. gemma3-270m)")
    if "prompt" in request and "messages" in request:
        raise BadRequest("give either prompt: (text) or messages: (a list of {role, content}), not both")
    if "prompt" not in request and "messages" not in request and not request.get("files"):
        raise BadRequest("give either prompt: (text) or messages: (a list of {role, content})")
    if "prompt" in request and not isinstance(request["prompt"], str):
        raise BadRequest("prompt: must be text")
    if not isinstance(request.get("params"), dict):
        raise BadRequest("params: must be a mapping (e.g. {max_tokens: 64})")


def prompt_text(request: Mapping[str, Any]) -> str:
    """The prompt's input: the text, or the messages as a transcript the LLM executor reads
    (or nothing, for a request whose files are the input)."""
    if "prompt" in request:
        return str(request["prompt"])
    return messages_input(request["messages"]) if "messages" in request else ""


class Portal:
    """One portal folder, served by the node."""

    def __init__(self, node: Node, root: Path) -> None:
        self.node = node
        self.space: Space = node.space
        self.root = root
        self.folders = {name: root / name for name in FOLDERS}
        self._wake = asyncio.Event()
        self._log: Log | None = None
        self._feed: Changes | None = None
        self._waiting: dict[str, Path] = {}  # prompt id -> its folder in queued/
        self._fetching: set[str] = set()  # prompts whose output files are being fetched
        self._retry_at: dict[str, float] = {}  # prompt id -> when to fetch its files again

    def wake(self) -> None:
        """The log changed: look at the queued requests."""
        self._wake.set()

    async def run(self) -> None:
        """Take requests and deliver results until cancelled."""
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        watch = FolderWatch(self.folders["inbox"])
        loop = asyncio.get_running_loop()
        fd = watch.fileno()
        if fd is not None:
            loop.add_reader(fd, watch.reader(self._wake.set))
        self.node.log.event("portal", path=str(self.root))
        await self._resume()
        try:
            while True:
                await self._take_inbox()
                self._deliver()
                await wait_event(self._wake, SAFETY_S if fd is not None else 0.2)
                self._wake.clear()
        finally:
            if fd is not None:
                loop.remove_reader(fd)
            watch.close()

    # -- requests in ----------------------------------------------------------------------------

    async def _resume(self) -> None:
        """After a restart: re-add what was queued but not added, and wait for the rest."""
        for folder in sorted(self.folders["queued"].iterdir()):
            if folder.is_dir() and is_prompt_id(folder.name):
                await self._add(folder, PromptId(folder.name))

    async def _take_inbox(self) -> None:
        for folder in sorted(self.folders["inbox"].iterdir()):
            if folder.name.startswith("."):
                continue  # hidden: a client's work in progress, by convention
            try:
                await self._take(folder)
            except OSError as exc:
                self.node.log.event("portal-failed", level="error", request=folder.name, reason=str(exc))

    async def _take(self, folder: Path) -> None:
        try:  # everything that can be checked before the move is, so errors/ keeps the name
            request = self._checked(folder)
        except (BadRequest, InvalidInput) as exc:
            self._reject(folder, str(exc))
            return
        recorded = folder / ID_FILE
        prompt_id = recorded.read_text().split("\n")[0].strip() if recorded.exists() else ""
        if not is_prompt_id(prompt_id):
            prompt_id = self.space.new_prompt_id()
            _write_durably(recorded, f"{prompt_id}\n{folder.name}\n")  # the id, and the name it came with
        target = self.folders["queued"] / prompt_id
        os.rename(folder, target)
        await self._add(target, PromptId(prompt_id), request)

    def _checked(self, folder: Path) -> dict[str, Any]:
        """The request, checked as far as it can be without adding it."""
        request = read_request(folder, self._defaults())
        kind = self._kind(request["model"])
        check_params(request["params"], kind)
        files = attachments(folder, request)
        if kind is PromptKind.ASR and len(files) != 1:
            raise BadRequest(f"{request['model']} is a speech model: files: must list exactly one audio file")
        prompt_text(request)
        return request

    async def _add(self, folder: Path, prompt_id: PromptId, request: dict[str, Any] | None = None) -> None:
        if request is None and self.space.log.has_prompt(prompt_id):
            self._queued(folder, prompt_id)  # after a restart: added before the crash
            return
        try:
            request = request if request is not None else self._checked(folder)
            refs = await self._attach(attachments(folder, request))
            self.space.add(
                prompt_text(request),
                model=request["model"],
                kind=self._kind(request["model"]),
                params={**request["params"], **({"mode": "chat"} if "messages" in request else {})},
                priority=int(request.get("priority", 0)),
                max_attempts=int(request.get("max_attempts", 3)),
                prompt_id=prompt_id,
                files=refs,
            )
        except (SyncqError, ValueError, TypeError) as exc:
            self._reject(folder, str(exc))
            return
        self._queued(folder, prompt_id)
        self.node.changed()  # offer it to the peers
        self.node.log_changed()  # and to this node's scheduler

    def _queued(self, folder: Path, prompt_id: PromptId) -> None:
        self._waiting[prompt_id] = folder
        self.node.log.event("portal-queued", prompt=prompt_id, request=folder.name)

    async def _attach(self, files: Sequence[Path]) -> list[BlobRef]:
        """Seal the files into the attachment store, off the loop (up to 512 MiB are read twice)."""
        return [await asyncio.to_thread(self.space.attach, path) for path in files]

    def _kind(self, model: str) -> PromptKind:
        """The kind of prompts ``model`` takes, from the backend serving it. Raises ``BadRequest``
        if no node of the mesh serves it."""
        served = {m.name: m.backend for n in self.space.log.nodes() for m in n.models}
        if self.node.scheduler is not None:  # before this node's presence is out
            served |= {name: spec.backend for name, spec in self.node.scheduler.manager.specs.items()}
        if model not in served:
            known = ", ".join(sorted(served)) or "none yet"
            raise BadRequest(
                f"no node of this space serves model {model!r} (served: {known}); a node that "
                "serves it and has not synced here yet makes it known"
            )
        return BACKEND_KINDS.get(served[model], PromptKind.LLM)

    def _reject(self, folder: Path, reason: str) -> None:
        recorded = folder / ID_FILE
        lines = recorded.read_text().split("\n") if folder.is_dir() and recorded.exists() else []
        name = lines[1] if len(lines) > 1 and lines[1] else folder.name
        target = _free(self.folders["errors"] / name.removeprefix("."))
        rejected = folder
        if folder.is_symlink() or not folder.is_dir():
            # Never write through a link: move the link itself into a folder (hidden meanwhile).
            rejected = folder.with_name(f".{folder.name}.rejected")
            rejected.mkdir(exist_ok=True)
            os.rename(folder, rejected / folder.name)
        # error.txt first: a client that sees the folder in errors/ finds it there.
        (rejected / "error.txt").write_text(reason + "\n")
        os.rename(rejected, target)
        self.node.log.event("portal-rejected", request=folder.name, reason=reason)

    def _defaults(self) -> dict[str, Any]:
        path = self.root / "defaults.yaml"
        if not path.exists():
            return {}
        try:
            found = _parse(path)
        except BadRequest as exc:
            self.node.log.event("portal-defaults-ignored", level="error", reason=str(exc))
            return {}
        return found

    # -- results out ----------------------------------------------------------------------------

    def _deliver(self) -> None:
        log = self.space.log
        if log is not self._log or self._feed is None:
            self._log, self._feed = log, log.follow(streams=True)
            changed = set(self._waiting)
        else:
            changed = self._feed.drain() & set(self._waiting)
        now = time.monotonic()
        for prompt_id in [p for p, at in self._retry_at.items() if at <= now]:
            del self._retry_at[prompt_id]
            changed.add(prompt_id)
        for prompt_id in sorted(changed - self._fetching - set(self._retry_at)):
            folder = self._waiting[prompt_id]
            entry = log.entry(prompt_id)
            if entry.status not in TERMINAL:
                if entry.stream:
                    _replace(folder / "partial.txt", entry.stream)
            elif Outcome.of(entry).attachments:
                self._fetching.add(prompt_id)
                self.node.spawn(self._deliver_with_files(folder, entry))
            else:
                self._finish(folder, entry, [])

    async def _deliver_with_files(self, folder: Path, entry: Entry) -> None:
        """Fetch the result's files through the node, write them into the folder, deliver."""
        prompt_id = entry.prompt.id
        try:
            refs = Outcome.of(entry).attachments
            for ref in refs:
                await self.node.transfers.fetch(ref)
            names = await asyncio.to_thread(self._write_outputs, folder, refs)
            self._finish(folder, entry, names)
        except (SyncqError, OSError) as exc:  # BlobUnavailable: no peer that holds it is connected
            self._retry_at[prompt_id] = time.monotonic() + RETRY_FILES_S
            self.node.log.event("portal-files-waiting", level="warning", prompt=prompt_id, reason=str(exc))
        finally:
            self._fetching.discard(prompt_id)

    def _write_outputs(self, folder: Path, refs: Sequence[BlobRef]) -> list[str]:
        """Decrypt each file into a hidden folder, then move it beside result.json; returns the
        names they got. Repeating it after a crash finds the same names (equal bytes)."""
        staging = folder / OUT_STAGING
        staging.mkdir(exist_ok=True)
        names = [_place(self.space.save_file(ref, staging), folder / ref.name) for ref in refs]
        shutil.rmtree(staging, ignore_errors=True)  # only what a kill -9 left half written
        return names

    def _finish(self, folder: Path, entry: Entry, files: list[str]) -> None:
        outcome = Outcome.of(entry)
        fields = dataclasses.asdict(outcome) | {"files": files}
        result = {"id": fields.pop("prompt_id"), **fields, "delivered_at": wall_clock_ms()}
        if entry.stream is None and (folder / "partial.txt").exists():
            _replace(folder / "partial.txt", outcome.text)
        _replace(folder / "answer.txt", outcome.text)  # for shell clients: no JSON to parse
        _replace(folder / "result.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        os.rename(folder, _free(self.folders["outbox"] / folder.name))
        del self._waiting[entry.prompt.id]
        self.node.log.event("portal-delivered", prompt=entry.prompt.id, status=entry.status.value)


def _place(staged: Path, target: Path) -> str:
    """Move ``staged`` to ``target``, or to ``STEM-2.EXT`` ... if a file with other bytes (or one
    the portal writes) has that name; a file with the same bytes is taken as it. Returns the name."""
    candidate, n = target, 1
    while True:
        taken = candidate.exists() or candidate.is_symlink() or candidate.name in RESERVED
        if not taken:
            os.rename(staged, candidate)
            return candidate.name
        if candidate.name not in RESERVED and _same_file(candidate, staged):
            staged.unlink()
            return candidate.name
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and not a.is_symlink() and filecmp.cmp(a, b, shallow=False)


def _free(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... if taken: nothing is ever overwritten."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one)."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
