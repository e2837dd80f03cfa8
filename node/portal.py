"""The file portal: requests as folders, not sockets (DESIGN.md section 9).

A portal is a folder with ``inbox/ queued/ outbox/ errors/`` (the home's ``portal/``, plus any
listed under ``portals`` in config.toml's ``[node]``). A client writes a request folder elsewhere
and renames it into ``inbox/`` (a rename is atomic: the folder is taken at once). A folder
copied or written into the inbox in place is taken only once its tree has stopped changing
(names, sizes and mtimes unchanged across two looks ``SETTLE_S`` apart; see
``node/portal_settle.py``), so a file still being written is never taken truncated. The request
is ``request.yaml`` or ``request.json``::

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
``error.txt`` saying what is wrong (``node/portal_requests.py`` checks every field, and the size
and nesting of the file before parsing it). Whatever goes wrong with one folder sends that
folder to ``errors/`` (a name that is not UTF-8 as its escaped form, ``\\xff\\xfe``), never stops
the portal: an exception that is not the request's fault is a bug of ours, and its traceback
goes to the node's log and to ``error.txt``. The node never deletes anything.

Folders the portal makes are 0700 and files it writes 0600; a request folder is made so too
as it is queued (its prompt is plaintext).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import filecmp
import itertools
import json
import math
import os
import shutil
import stat
import time
import traceback
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from syncq.blobs import BlobRef
from syncq.client import Outcome
from syncq.errors import SyncqError, UserError
from syncq.ids import PromptId, is_prompt_id
from syncq.lifecycle import TERMINAL
from syncq.log import Changes, Entry, Log
from syncq.records import PromptKind, check_params
from syncq.space import BACKEND_KINDS, Space, wall_clock_ms
from syncq.watch import FolderWatch, wait_event

from .portal_requests import (
    MAX_FOLDER_ENTRIES,
    BadRequest,
    attachments,
    parse,
    prompt_text,
    read_request,
    safe_name,
)
from .portal_settle import SETTLE_S, Settling

if TYPE_CHECKING:
    from .daemon import Node

FOLDERS = ("inbox", "queued", "outbox", "errors")
ID_FILE = ".syncq-id"
SAFETY_S = 5.0  # a look at the inbox this often even without a change reported
SETTLING_LOOK_S = SETTLE_S / 4  # while a copied-in folder settles, a look this often
RETRY_FILES_S = 30.0  # a result whose files could not be fetched is tried again after this
OUT_STAGING = ".syncq-out"  # output files are decrypted here, then moved beside result.json
# Names the portal writes: an output file never takes one of them.
RESERVED = frozenset({"request.yaml", "request.json", "result.json", "answer.txt", "partial.txt", ID_FILE})
T = TypeVar("T")
__all__ = ["FOLDERS", "BadRequest", "Portal", "attachments", "portal_roots", "prompt_text", "read_request"]


def portal_roots(home: Path, config: Mapping[str, Any]) -> list[Path]:
    """The home's portal and those listed in config.toml's ``[node] portals``."""
    extra = config.get("portals", [])
    if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
        raise UserError(f"{home / 'config.toml'}: [node] portals must be a list of folder paths")
    return [home / "portal", *(Path(p).expanduser() for p in extra)]


class Portal:
    """One portal folder, served by the node."""

    def __init__(self, node: Node, root: Path) -> None:
        self.node = node
        self.space: Space = node.space
        self.root = root
        self.folders = {name: root / name for name in FOLDERS}
        self._wake = asyncio.Event()
        self._inbox_seen = True  # list the inbox at the first look
        self._log: Log | None = None
        self._feed: Changes | None = None
        self._waiting: dict[str, Path] = {}  # prompt id -> its folder in queued/
        self._fetching: set[str] = set()  # prompts whose output files are being fetched
        self._retry_at: dict[str, float] = {}  # prompt id -> when to fetch its files again
        self._settling = Settling(settle_s=SETTLE_S, limit=MAX_FOLDER_ENTRIES)
        self._stuck: set[str] = set()  # inbox names that could not even be moved to errors/

    def wake(self) -> None:
        """The log changed: look at the queued requests."""
        self._wake.set()

    async def run(self) -> None:
        """Take requests and deliver results until cancelled. Raises ``OSError`` if a folder
        of the portal itself cannot be read or made (the node restarts the portal)."""
        for folder in self.folders.values():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        watch = FolderWatch(self.folders["inbox"])
        loop = asyncio.get_running_loop()
        fd = watch.fileno()
        if fd is not None:
            loop.add_reader(fd, self._inbox_changed, fd)
        self.node.log.event("portal", path=str(self.root))
        await self._resume()
        listed = -math.inf  # when the inbox was last listed
        try:
            while True:
                # The inbox is listed when inotify saw it change, and at least every SAFETY_S
                # (inotify misses what another host writes to a network mount); not whenever
                # the log changed (every write of the node: an API's chats listed it each time).
                due = time.monotonic() - listed >= SAFETY_S
                if self._inbox_seen or fd is None or self._settling.waiting or due:
                    self._inbox_seen = False
                    listed = time.monotonic()
                    await self._take_inbox()
                self._deliver()
                timeout = max(0.0, listed + SAFETY_S - time.monotonic()) if fd is not None else 0.2
                await wait_event(self._wake, SETTLING_LOOK_S if self._settling.waiting else timeout)
                self._wake.clear()
        finally:
            if fd is not None:
                loop.remove_reader(fd)
            watch.close()

    def _inbox_changed(self, fd: int) -> None:
        """inotify reported changes in the inbox: note which names were renamed in, then look."""
        try:
            while data := os.read(fd, 65536):
                self._settling.events(data)
        except (BlockingIOError, InterruptedError):
            pass
        self._inbox_seen = True
        self._wake.set()

    # -- requests in ----------------------------------------------------------------------------

    async def _resume(self) -> None:
        """After a restart: re-add what was queued but not added, and wait for the rest."""
        for folder in sorted(self.folders["queued"].iterdir()):
            if folder.is_dir() and is_prompt_id(folder.name) and folder.name not in self._waiting:
                await self._guarded(folder, self._add(folder, PromptId(folder.name)))

    async def _take_inbox(self) -> None:
        now = time.monotonic()
        present = sorted(self.folders["inbox"].iterdir())
        self._settling.keep({f.name for f in present})
        self._stuck &= {f.name for f in present}
        for folder in present:
            if folder.name.startswith(".") or folder.name in self._stuck:
                continue  # hidden: a client's work in progress, by convention
            if not folder.is_symlink() and folder.is_dir() and not self._settling.ready(folder, now):
                if self._settling.first_wait(folder.name):
                    self.node.log.event("portal-settling", request=safe_name(folder.name))
                continue  # copied in, maybe still being written (node/portal_settle.py)
            self._settling.taken(folder.name)
            moved = await self._guarded(folder, self._take(folder))
            if moved is not None:
                await self._guarded(moved[0], self._add(*moved))

    async def _guarded(self, folder: Path, work: Awaitable[T]) -> T | None:
        """Run ``work`` on one request folder: whatever it raises sends that folder to errors/
        (and an exception that is not a bad request is our bug: its traceback goes to the node's
        log and to error.txt); no folder can stop the portal."""
        try:
            return await work
        except UserError as exc:
            self._reject(folder, str(exc))
        except OSError as exc:  # unreadable, or removed meanwhile: not our bug, no traceback
            self._reject(folder, f"cannot read the request: {_describe(exc)}")
        except Exception as exc:  # one folder must never stop the portal
            trace, reason = traceback.format_exc(), _describe(exc)
            name = safe_name(folder.name)
            trace = trace.rstrip()
            self.node.log.event("portal-bug", level="error", request=name, reason=reason, traceback=trace)
            self._reject(folder, f"the node failed on this request (a bug in syncq): {reason}\n\n{trace}")
        return None

    async def _take(self, folder: Path) -> tuple[Path, PromptId, dict[str, Any]]:
        """Check the request in the inbox and move it to queued/ID (steps 1 and 2)."""
        request = await self._checked(folder)  # all that can be is checked before: errors/ keeps the name
        recorded = folder / ID_FILE
        prompt_id = _read_id_file(recorded)[0].strip()
        if not is_prompt_id(prompt_id):
            prompt_id = self.space.new_prompt_id()
            _write_durably(recorded, f"{prompt_id}\n{folder.name}\n")  # the id, and the name it came with
        _make_private(folder)
        target = self.folders["queued"] / prompt_id
        os.rename(folder, target)
        return target, PromptId(prompt_id), request

    async def _checked(self, folder: Path) -> dict[str, Any]:
        """The request, checked as far as it can be without adding it."""
        # Reading and parsing (up to 1 MiB of YAML, a walk of the folder) off the loop: a burst
        # of large requests must not stall the node's sync and API.
        request = await asyncio.to_thread(read_request, folder, self._defaults())
        kind = self._kind(request["model"])
        check_params(request["params"], kind)
        files = attachments(folder, request)
        if kind is PromptKind.ASR and len(files) != 1:
            raise BadRequest(f"{request['model']} is a speech model: files: must list exactly one audio file")
        prompt_text(request)
        return request

    async def _add(self, folder: Path, prompt_id: PromptId, request: dict[str, Any] | None = None) -> None:
        """Add the prompt of ``folder`` (in queued/). Raises ``UserError`` for a bad request."""
        if request is None and self.space.log.has_prompt(prompt_id):
            self._queued(folder, prompt_id)  # after a restart: added before the crash
            return
        request = request if request is not None else await self._checked(folder)
        refs = await self._attach(attachments(folder, request))
        self.space.add(
            prompt_text(request),
            model=request["model"],
            kind=self._kind(request["model"]),
            params={**request["params"], **({"mode": "chat"} if "messages" in request else {})},
            priority=request.get("priority", 0),
            max_attempts=request.get("max_attempts", 3),
            prompt_id=prompt_id,
            files=refs,
        )
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
        """Move ``folder`` to errors/ (under a name that is UTF-8) with ``error.txt``; if even
        that fails, say so in the log and leave the folder where it is until the node restarts."""
        try:
            self._move_to_errors(folder, reason)
        except OSError as exc:
            self._stuck.add(folder.name)
            self.node.log.event(
                "portal-failed", level="error", request=safe_name(folder.name), reason=_describe(exc)
            )
            return
        self.node.log.event("portal-rejected", request=safe_name(folder.name), reason=reason.split("\n")[0])

    def _move_to_errors(self, folder: Path, reason: str) -> None:
        is_folder = folder.is_dir() and not folder.is_symlink()
        lines = _read_id_file(folder / ID_FILE) if is_folder else [""]
        name = lines[1] if len(lines) > 1 and lines[1] else folder.name
        if not _one_component(name):
            # The client wrote .syncq-id: an absolute path or ".." would move the folder out.
            name = folder.name
        target = _free(self.folders["errors"] / safe_name(name).removeprefix("."))
        rejected = folder
        if not is_folder:
            # Never write through a link: move the link itself into a folder (hidden meanwhile).
            rejected = folder.with_name(f".{safe_name(folder.name)}.rejected")
            rejected.mkdir(mode=0o700, exist_ok=True)
            os.rename(folder, rejected / folder.name)
        with contextlib.suppress(OSError):  # best effort: the folder goes to errors/ regardless
            _make_private(rejected)
        # error.txt first: a client that sees the folder in errors/ finds it there.
        _replace(rejected / "error.txt", reason + "\n")
        os.rename(rejected, target)
        self._waiting = {p: f for p, f in self._waiting.items() if f != folder}

    def _defaults(self) -> dict[str, Any]:
        path = self.root / "defaults.yaml"
        if not path.exists():
            return {}
        try:
            found = parse(path)
            if not isinstance(found.get("params", {}), dict):
                raise BadRequest("params: must be a mapping")
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
            try:
                self._deliver_one(log, prompt_id)
            except OSError as exc:  # its folder was removed or cannot be written: a restart looks again
                self._waiting.pop(prompt_id, None)
                self.node.log.event("portal-failed", level="error", request=prompt_id, reason=_describe(exc))

    def _deliver_one(self, log: Log, prompt_id: str) -> None:
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
        staging.mkdir(mode=0o700, exist_ok=True)
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
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one), readable
    by this user only."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)


def _write_durably(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _one_component(name: str) -> bool:
    """Whether ``name`` names an entry of a folder, and nothing above or beside it."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _read_id_file(path: Path) -> list[str]:
    """The lines of ``.syncq-id`` (the id, the name the folder came with), or ``[""]``: read
    without following a link and at most 4 KiB of it (the client wrote the folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return [""]
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return [""]
        return f.read(4096).decode("utf-8", "replace").split("\n")


def _make_private(folder: Path) -> None:
    """Folders 0700 and files 0600 in a request folder about to be queued: it lands in the
    home's (private) portal, and its prompt is plaintext. Links are left alone (refused before)."""
    for path in itertools.chain([folder], itertools.islice(folder.rglob("*"), MAX_FOLDER_ENTRIES)):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        wanted = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != wanted:
            os.chmod(path, wanted)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
