"""The Python API: a space seen from a program, blocking (``Client``) or asyncio (``AsyncClient``).

Blocking::

    import syncq

    space = syncq.open()  # the home: $SYNCQ_HOME, else the user data dir
    p = space.add("Why is the sky blue?", model="smollm2-135m")
    for chunk in space.stream(p.id):  # output as it arrives, from whichever node runs it
        print(chunk, end="", flush=True)
    print(space.result(p.id, timeout=60).node_name)

asyncio::

    async with syncq.aopen() as space:
        outcome = await space.run("Why is the sky blue?", model="smollm2-135m")
        async for chunk in space.stream(other.id): ...

Both write to the local store, as ``syncq add`` does, and wait on it: the node running in this
home is what brings results from other devices, and with no node running a prompt simply stays
queued. Waiting sleeps until the store's files change (``syncq.watch``: inotify, no polling),
then reads the log once and wakes only the waiters whose prompt changed (``Log.follow``), so one
asyncio process can hold thousands of prompts in flight without a thread each. A timeout raises
``WaitTimeout`` and leaves the prompt queued; cancelling an awaiting task leaves the prompt as it
is (``cancel`` is the way to stop it). Every error is a ``SyncqError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from syncq.blobs import BlobRef
from syncq.chat import LlmInput, Message, TokenLogprob, ToolCall
from syncq.errors import WaitTimeout
from syncq.fetching import SAFETY_S, check_fetchable, fetch_checked, fetch_files
from syncq.grouped import Grouped
from syncq.ids import PromptId
from syncq.keys import resolve_home
from syncq.lifecycle import TERMINAL, Status
from syncq.log import Changes, Entry, Log
from syncq.records import NodeInfo, ParamValue, Prompt, PromptKind
from syncq.space import NewPrompt, Space
from syncq.watch import RECHECK_S, FolderWatch, wait_event


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """Where a prompt stands: for ``result``, how it ended (done, failed or cancelled), or that
    it is stuck: still queued, with the error of a node that found it cannot run the model and
    no other node serving it (``stranded``)."""

    prompt_id: PromptId
    status: Status
    text: str = ""  # the answer (the canonical run's output)
    error: str | None = None
    node: str = ""  # id of the node that ran it
    node_name: str = ""
    model: str = ""
    usage: Mapping[str, ParamValue] = field(default_factory=dict)  # tokens, ms_total, ...
    started_at: int | None = None  # wall clock, ms
    finished_at: int | None = None
    runs: int = 0  # runs recorded: more than one after retries or a partition
    attachments: tuple[BlobRef, ...] = ()  # the run's output files, as the log names them
    files: tuple[Path, ...] = ()  # those files saved on this device (``result`` fetches them)
    finish: str = ""  # why generation ended: "stop", "length", "tool_calls"; "" if not said
    tool_calls: tuple[ToolCall, ...] = ()  # the calls the model made (its answer, with tools)
    logprobs: tuple[TokenLogprob, ...] = ()  # per generated token, when the prompt asked

    @property
    def ok(self) -> bool:
        """Whether it is done."""
        return self.status is Status.DONE

    def problem(self) -> str:
        """What went wrong, in one line fit to print (empty when it is done)."""
        if self.ok:
            return ""
        if self.status is Status.QUEUED:
            return (
                f"no node can run {self.model} now: {self.error or 'none serves it'}; the prompt "
                f"stays queued for a device that can (`syncq cancel {self.prompt_id}` drops it)"
            )
        return f"the prompt {self.status}: {self.error or ''}".strip()

    @classmethod
    def of(cls, entry: Entry, stuck: str | None = None) -> Outcome:
        """The outcome an entry of the log tells; ``stuck`` is why it can run nowhere now
        (``stranded``), for a queued one."""
        run = entry.result
        if stuck is None and run is not None and entry.status is not Status.DONE:
            stuck = run.error
        return cls(
            prompt_id=entry.prompt.id,
            status=entry.status,
            text=run.output if run is not None and entry.status is Status.DONE else "",
            error=stuck,
            node=run.node if run is not None else "",
            node_name=run.node_name if run is not None else "",
            model=entry.prompt.model,
            usage=run.usage if run is not None else {},
            started_at=run.started_at if run is not None else None,
            finished_at=run.finished_at if run is not None else None,
            runs=len(entry.results),
            attachments=run.files if run is not None and entry.status is Status.DONE else (),
            finish=run.finish if run is not None and entry.status is Status.DONE else "",
            tool_calls=run.tool_calls if run is not None and entry.status is Status.DONE else (),
            logprobs=run.logprobs if run is not None and entry.status is Status.DONE else (),
        )


def stranded(entry: Entry, nodes: Sequence[NodeInfo]) -> str | None:
    """Why a prompt can run nowhere now, or None while it may still run: it is queued, no node of
    the mesh serves its model, and a node found it cannot run the model (its latest run says so,
    ``Facts.refusal``, or a node lists the model ``unusable``). Waiting for it then ends, with
    that error, instead of waiting for a device that may never come; a model nobody has
    advertised yet is still waited for (offline use)."""
    if entry.status is not Status.QUEUED:
        return None
    model = entry.prompt.model
    ads = [(node, ad) for node in nodes for ad in node.models if ad.name == model]
    if any(not ad.unusable for _, ad in ads):
        return None
    refusal = entry.facts.refusal()
    if refusal is not None:
        return refusal.error or "a node cannot run the model"
    return "; ".join(f"{node.name}: {ad.unusable}" for node, ad in ads) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshModel:
    """A model some node of the mesh serves."""

    name: str
    backend: str
    nodes: tuple[str, ...]  # names of the nodes that serve it
    warm: tuple[str, ...]  # those that have it loaded now


def open(home: str | os.PathLike[str] | None = None) -> Client:
    """The space in ``home`` (default: ``$SYNCQ_HOME``, else the user data dir), blocking.
    Raises ``NotInitialized`` (run ``syncq init``), ``HomeError`` or ``InsecureKeyFile``."""
    return Client(Space.open(resolve_home(home, os.environ)))


def aopen(home: str | os.PathLike[str] | None = None) -> AsyncClient:
    """The space in ``home`` for asyncio: ``async with syncq.aopen() as space``."""
    return AsyncClient(Space.open(resolve_home(home, os.environ)))


class _Verbs:
    """What both faces do without waiting."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self._watch = FolderWatch(space.paths.root)

    def add(
        self,
        prompt: str = "",
        *,
        model: str,
        params: Mapping[str, ParamValue] | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        files: Sequence[str | os.PathLike[str]] = (),
        kind: str | None = None,
        prompt_id: str | None = None,
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        llm: LlmInput | None = None,
    ) -> Prompt:
        """Queue a prompt (stored durably before it returns), with ``files`` attached. ``kind``
        (llm, asr, image) defaults to what the mesh serves the model as; with ``prompt_id``
        (from ``new_prompt_id``) adding it again adds nothing.

        ``messages`` is a whole conversation instead of one text: ``syncq.Message`` turns or
        dicts ``{"role": "system" | "user" | "assistant" | "tool", "content": ...}`` (with
        ``tool_calls``, ``tool_call_id``, ``name`` where they apply); ``llm`` a whole
        ``syncq.LlmInput`` (tools, an output format, stop strings, texts to embed). Raises
        ``InvalidInput`` (``chat.Unable`` where the model's backend cannot do what is asked)."""
        return self.space.add(
            prompt,
            model=model,
            kind=kind,
            params=params,
            priority=priority,
            max_attempts=max_attempts,
            files=files,
            prompt_id=PromptId(prompt_id) if prompt_id is not None else None,
            messages=messages,
            llm=llm,
        )

    def new_prompt_id(self) -> PromptId:
        """A fresh prompt id, to record before ``add(..., prompt_id=)`` (a resumable program)."""
        return self.space.new_prompt_id()

    def files_folder(self, prompt_id: str) -> Path:
        """Where ``result`` saves a prompt's output files by default: ``files/<id>`` in the home."""
        return self.space.paths.root / "files" / prompt_id

    def _files_plan(
        self, outcome: Outcome, files_dir: str | os.PathLike[str] | None, start: float, timeout: float | None
    ) -> tuple[str | os.PathLike[str], float | None]:
        """Where ``result`` saves the outcome's files, and what is left of its timeout."""
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return (files_dir if files_dir is not None else self.files_folder(outcome.prompt_id)), left

    def get(self, prompt_id: str) -> Entry:
        """Everything known about a prompt (an id or a unique prefix). Raises ``UnknownId``."""
        return self.space.show(prompt_id)

    def cancel(self, prompt_id: str) -> Entry:
        """Stop the prompt wherever it runs. Raises ``InvalidState`` if it already ended."""
        return self.space.cancel(prompt_id)

    def retry(self, prompt_id: str) -> Entry:
        """Queue a failed prompt again."""
        return self.space.retry(prompt_id)

    def log(
        self,
        *,
        limit: int | None = 20,
        status: str | None = None,
        model: str | None = None,
        grep: str | None = None,
    ) -> list[Entry]:
        """The latest prompts, oldest first, optionally of one status or model, or mentioning
        ``grep`` in their text, conversation, answers or errors, ignoring case
        (``Space.entries``)."""
        return self.space.entries(limit=limit, status=status, model=model, grep=grep)

    def nodes(self) -> list[NodeInfo]:
        """Every node of the mesh that announced itself."""
        return self.space.log.nodes()

    def models(self) -> list[MeshModel]:
        """Every model of the mesh, with the nodes that serve it (not those that found they
        cannot run it: ``unusable``)."""
        found: dict[str, list[tuple[str, str, bool]]] = {}
        for node in self.nodes():
            for ad in node.serving():
                found.setdefault(ad.name, []).append((node.name, ad.backend, ad.loaded))
        return [
            MeshModel(
                name=name,
                backend=served[0][1],
                nodes=tuple(n for n, _, _ in served),
                warm=tuple(n for n, _, loaded in served if loaded),
            )
            for name, served in sorted(found.items())
        ]

    def close(self) -> None:
        """Close the store and stop watching it (idempotent)."""
        self._watch.close()
        self.space.close()

    def over(self, entry: Entry) -> bool:
        """Whether waiting for the prompt is over: it ended, or it is ``stranded``."""
        return entry.status in TERMINAL or self.stuck(entry) is not None

    def stuck(self, entry: Entry) -> str | None:
        """Why the prompt can run nowhere now (``stranded`` in this mesh), or None; the presence
        records are read for queued prompts only."""
        if entry.status is not Status.QUEUED:
            return None
        return stranded(entry, self.space.log.nodes())

    def outcome(self, entry: Entry) -> Outcome:
        """``Outcome.of`` the entry, with why it is stuck if it is."""
        return Outcome.of(entry, self.stuck(entry))


class Client(_Verbs):
    """A space for a blocking program (``syncq.open``); one thread at a time."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def result(
        self,
        prompt_id: str,
        *,
        timeout: float | None = None,
        files_dir: str | os.PathLike[str] | None = None,
    ) -> Outcome:
        """Wait until the prompt is done, failed or cancelled; output files are fetched and
        saved into ``files_dir`` (default ``files_folder(id)``). Raises ``WaitTimeout``."""
        start = time.monotonic()
        for entry in self._changes(prompt_id, timeout):
            if self.over(entry):
                outcome = self.outcome(entry)
                if not outcome.attachments:
                    return outcome
                folder, left = self._files_plan(outcome, files_dir, start, timeout)
                saved = fetch_files(self.space, outcome.attachments, folder, timeout=left)
                return dataclasses.replace(outcome, files=tuple(saved))
        raise AssertionError("unreachable: _changes ends by raising")

    def stream(self, prompt_id: str, *, timeout: float | None = None) -> Iterator[str]:
        """The output as it arrives, chunk by chunk, ending when the prompt ends (the rest of
        the final answer comes last). Raises ``WaitTimeout``."""
        sent = ""
        for entry in self._changes(prompt_id, timeout):
            chunk, sent, ended = _next_chunk(entry, sent, self.over(entry))
            if chunk:
                yield chunk
            if ended:
                return

    def run(
        self,
        prompt: str = "",
        *,
        model: str,
        params: Mapping[str, ParamValue] | None = None,
        priority: int = 0,
        timeout: float | None = None,
        files: Sequence[str | os.PathLike[str]] = (),
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        llm: LlmInput | None = None,
    ) -> Outcome:
        """``add`` then ``result``."""
        added = self.add(
            prompt, model=model, params=params, priority=priority, files=files, messages=messages, llm=llm
        )
        return self.result(added.id, timeout=timeout)

    def _changes(self, prompt_id: str, timeout: float | None) -> Iterator[Entry]:
        prompt_id = self.space.resolve(prompt_id)
        try:
            for _ in self._watch.moves(self.space.store.data_version, timeout, safety_s=SAFETY_S):
                yield self.space.log.entry(prompt_id)
        except TimeoutError:
            raise WaitTimeout(
                f"gave up waiting for {prompt_id} after {timeout:g} s; it stays queued"
            ) from None


class AsyncClient(_Verbs):
    """A space for an asyncio program (``syncq.aopen``): use it from one event loop. With
    ``announced`` it keeps no file watch: its holder says when the store changed (``announce``),
    as the node serving its HTTP API does, so a commit wakes it at once. A ``borrowed`` space
    (the node's own, which its API shares) stays open when the client closes."""

    def __init__(self, space: Space, *, announced: bool = False, borrowed: bool = False) -> None:
        super().__init__(space)
        if announced:
            self._watch.close()
        self._announced = announced
        self._borrowed = borrowed  # the space is its holder's: ``close`` leaves it open
        self._look_soon: asyncio.TimerHandle | None = None
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._streaming: dict[str, int] = {}  # prompt id: how many ``stream``s follow it
        # Prompt id: the output so far of a job this process's node runs (``live``).
        self._live: dict[str, _Live] = {}
        self._log: Log | None = None
        self._feed: Changes | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._rechecks: list[asyncio.TimerHandle] = []
        self._listeners: set[asyncio.Queue[set[str]]] = set()
        self._served: object = None  # which models the nodes offer, as last seen (``_look``)
        # Set by a holder that runs prompts (the node, for its API): takes a prompt to run on
        # this device before it is stored (``submit``'s ``at_once``), or declines (False).
        self.run_at_once: Callable[[Prompt], Awaitable[bool]] | None = None
        self._adds = {
            durable: Grouped[NewPrompt, Prompt](functools.partial(space.add_many, durable=durable))
            for durable in (True, False)
        }

    async def submit(
        self,
        prompt: str = "",
        *,
        model: str,
        params: Mapping[str, ParamValue] | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        kind: PromptKind | None = None,
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        llm: LlmInput | None = None,
        durable: bool = True,
        at_once: bool = False,
    ) -> Prompt:
        """``add`` (without files), stored in one transaction with every other ``submit`` of
        the same turn of the event loop and the same ``durable``: one fsync for all of them,
        which is what a server adding for many clients at once needs (``syncq.grouped``). With
        ``durable`` false, without an fsync of its own (``Space.add_many``): for a caller whose
        acknowledgement is the result. Raises what ``add`` raises, for this prompt alone.

        ``at_once`` (with ``durable`` false): if this client's holder can run the prompt here
        and now (``run_at_once``: the node whose API this is, with the model free), it does,
        and the prompt is stored with its claim and its result, as one envelope, before this
        returns (or with its claim, as soon as the run takes longer than a moment). A caller
        whose acknowledgement is the result loses nothing by it: a crash before then leaves
        nothing it was told of."""
        new = NewPrompt(
            id=self.space.new_prompt_id(),  # a group run again prompt by prompt adds none twice
            text=prompt,
            model=model,
            kind=kind,
            params=params or {},
            priority=priority,
            max_attempts=max_attempts,
            messages=messages,
            llm=llm,
        )
        if at_once and not durable and self.run_at_once is not None:
            checked = self.space.prepare(new)
            if await self.run_at_once(checked):
                return checked
        return await self._adds[durable](new)

    async def __aenter__(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        fd = self._watch.fileno()
        if fd is not None:
            loop.add_reader(fd, self._changed)
        watched = fd is not None or self._announced
        self._ticker = asyncio.ensure_future(self._tick(SAFETY_S if watched else 0.05))
        self._look()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching and close the store (idempotent)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for handle in self._rechecks:
            handle.cancel()
        if self._look_soon is not None:
            self._look_soon.cancel()
        fd = self._watch.fileno()
        if fd is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(fd)
        if self._borrowed:
            self._watch.close()
        else:
            super().close()

    async def result(
        self,
        prompt_id: str,
        *,
        timeout: float | None = None,
        files_dir: str | os.PathLike[str] | None = None,
    ) -> Outcome:
        """Wait until the prompt is done, failed or cancelled; output files are fetched and
        saved into ``files_dir`` (default ``files_folder(id)``). Raises ``WaitTimeout``."""
        start = time.monotonic()
        async for entry in self._changes(prompt_id, timeout):
            if self.over(entry):
                outcome = self.outcome(entry)
                if not outcome.attachments:
                    return outcome
                folder, left = self._files_plan(outcome, files_dir, start, timeout)
                saved = await self.save_files(outcome.attachments, folder, timeout=left)
                return dataclasses.replace(outcome, files=tuple(saved))
        raise AssertionError("unreachable: _changes ends by raising")

    async def stream(
        self, prompt_id: str, *, timeout: float | None = None, live: bool = True
    ) -> AsyncIterator[str]:
        """The output as it arrives, chunk by chunk, ending when the prompt ends (the rest of
        the final answer comes last). ``live``: someone is shown the output as it comes
        (``streaming``), so output handed over by ``live`` counts; false for a caller that
        only waits for the end. Raises ``WaitTimeout``."""
        sent = ""
        prompt_id = self.space.resolve(prompt_id)
        if live:
            self._streaming[prompt_id] = self._streaming.get(prompt_id, 0) + 1
        try:
            async for entry in self._changes(prompt_id, timeout):
                held = self._live.get(prompt_id) if live else None
                ahead = (held.attempt, held.text()) if held is not None else None
                chunk, sent, ended = _next_chunk(entry, sent, self.over(entry), ahead)
                if chunk:
                    yield chunk
                if ended:
                    return
        finally:
            if live:
                self._streaming[prompt_id] -= 1
                if not self._streaming[prompt_id]:
                    del self._streaming[prompt_id]
                    self._live.pop(prompt_id, None)

    def streaming(self, prompt_id: str) -> bool:
        """Whether someone follows this prompt's output through ``stream`` now."""
        return prompt_id in self._streaming

    def live(self, prompt_id: str, attempt: int, chunks: Sequence[str]) -> None:
        """Output of a run in this process (the node serving its HTTP API runs the prompt), as
        it comes: every chunk of the attempt so far, in a list the runner appends to. A
        ``stream`` shows it at once instead of at the scheduler's next write into the log,
        every 100 ms (a chat's time to first token, and a smooth stream). Kept only while
        someone streams the prompt."""
        if prompt_id not in self._streaming:
            return
        held = self._live.get(prompt_id)
        if held is None or held.attempt != attempt or held.chunks is not chunks:
            self._live[prompt_id] = _Live(attempt, chunks)
        for waiter in self._waiters.get(prompt_id, ()):
            waiter.set()

    async def run(
        self,
        prompt: str = "",
        *,
        model: str,
        params: Mapping[str, ParamValue] | None = None,
        priority: int = 0,
        timeout: float | None = None,
        files: Sequence[str | os.PathLike[str]] = (),
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        llm: LlmInput | None = None,
    ) -> Outcome:
        """``add`` then ``result``."""
        added = self.add(
            prompt, model=model, params=params, priority=priority, files=files, messages=messages, llm=llm
        )
        return await self.result(added.id, timeout=timeout)

    async def save_files(
        self, refs: Sequence[BlobRef], folder: str | os.PathLike[str], *, timeout: float | None = None
    ) -> list[Path]:
        """``fetch_files`` for asyncio: the attachments saved into ``folder``, fetched by this
        home's node where they are not here yet."""
        check_fetchable(self.space, refs)  # reads the store, whose connection is this thread's
        # Rare and mostly disk-bound: a thread keeps the loop free meanwhile.
        return await asyncio.to_thread(
            fetch_checked, self.space, refs, folder, timeout=timeout, progress=None
        )

    def cancel(self, prompt_id: str) -> Entry:
        """Stop the prompt wherever it runs. Raises ``InvalidState`` if it already ended."""
        entry = super().cancel(prompt_id)
        self._look()  # our own write: data_version does not change for it
        return entry

    async def changes(self) -> AsyncIterator[set[str]]:
        """The ids of the prompts that changed (added, claimed, streamed, finished ...), one set
        per look at the store, for as long as the caller iterates."""
        if self._ticker is None:
            raise RuntimeError("use the AsyncClient inside `async with syncq.aopen() as space:`")
        queue: asyncio.Queue[set[str]] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)

    async def _changes(self, prompt_id: str, timeout: float | None) -> AsyncIterator[Entry]:
        if self._ticker is None:
            raise RuntimeError("use the AsyncClient inside `async with syncq.aopen() as space:`")
        prompt_id = self.space.resolve(prompt_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            changed = asyncio.Event()  # registered before the read: no change slips between
            self._waiters.setdefault(prompt_id, set()).add(changed)
            try:
                yield self.space.log.entry(prompt_id)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                # A deadline per wait, not a timeout around the generator: the caller's own
                # awaits between chunks must never receive our cancellation.
                if not await wait_event(changed, left):
                    raise WaitTimeout(f"gave up waiting for {prompt_id} after {timeout:g} s; it stays queued")
            finally:
                self._forget(prompt_id, changed)

    def _forget(self, prompt_id: str, changed: asyncio.Event) -> None:
        waiting = self._waiters.get(prompt_id)
        if waiting is not None:
            waiting.discard(changed)
            if not waiting:
                del self._waiters[prompt_id]

    async def _tick(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self._look()

    def announce(self) -> None:
        """The store changed: look once for all announces of this turn of the loop, after what
        it scheduled already (a node announcing its claims has their jobs started first)."""
        if self._look_soon is None and self._ticker is not None:
            self._look_soon = asyncio.get_running_loop().call_later(0, self._look)

    def _changed(self) -> None:
        self._watch.drain()
        self._look()
        loop = asyncio.get_running_loop()
        # The commit becomes visible a moment after its writes (syncq.watch).
        self._rechecks = [h for h in self._rechecks if not h.cancelled() and h.when() > loop.time()]
        self._rechecks += [loop.call_later(delay, self._look) for delay in RECHECK_S]

    def _look(self) -> None:
        """Read the log once and wake the waiters of every prompt that changed."""
        if self._look_soon is not None:  # this look serves every announce made before it
            self._look_soon.cancel()
            self._look_soon = None
        log = self.space.log
        if log is not self._log or self._feed is None:
            self._log, self._feed = log, log.follow(streams=True)
            changed = self._feed.drain()
            woken: Sequence[str] = list(self._waiters)
        else:
            changed = self._feed.drain()
            woken = [p for p in changed if p in self._waiters]
        served = self._served
        if self._waiters:
            served = tuple((n.id, tuple((m.name, m.unusable) for m in n.models)) for n in log.nodes())
        if served != self._served:
            # A node stopped (or started) serving a model: a queued prompt may be stranded now
            # without a change of its own (``stranded``), so every waiter looks again.
            self._served, woken = served, list(self._waiters)
        for listener in self._listeners if changed else ():
            listener.put_nowait(changed)
        for prompt_id in woken:
            for waiter in self._waiters.get(prompt_id, ()):
                waiter.set()


def _next_chunk(
    entry: Entry, sent: str, ended: bool, live: tuple[int, str] | None = None
) -> tuple[str, str, bool]:
    """What is new in the entry's output since ``sent``: (chunk, output so far, ended). ``live``
    is (attempt, output) handed over by the node running it, ahead of the log's stream: used
    while it is the running attempt's and goes on from what the log holds."""
    if ended:
        output = entry.result.output if entry.result is not None else ""
    else:
        output = entry.stream or ""
        if live is not None and _running_attempt(entry) == live[0] and live[1].startswith(output):
            output = live[1]
    if len(output) > len(sent) and output.startswith(sent):
        return output[len(sent) :], output, ended
    return "", sent, ended


class _Live:
    """A run's output handed over as a growing list of chunks, joined as it grows."""

    def __init__(self, attempt: int, chunks: Sequence[str]) -> None:
        self.attempt, self.chunks = attempt, chunks
        self._joined, self._count = "", 0

    def text(self) -> str:
        if len(self.chunks) > self._count:
            self._joined += "".join(self.chunks[self._count :])
            self._count = len(self.chunks)
        return self._joined


def _running_attempt(entry: Entry) -> int | None:
    """The attempt of the prompt's claim that has no result yet, if one has."""
    claims = entry.facts.open_claims()
    return claims[0].attempt if claims else None


__all__ = ["AsyncClient", "Client", "MeshModel", "Outcome", "aopen", "open"]
