"""The model manager: loads models on demand into worker processes and keeps them warm.

Each loaded model lives in its own worker process (``worker.main``): a native crash or an OOM
kill ends the worker, fails the job with ``WorkerDied`` (the scheduler retries it) and never the
node; unloading a model frees its memory for certain. ``died`` says which signal ended a worker,
in words. SIGILL while loading is different from the rest: the backend's native code uses an
instruction this CPU cannot run, so every retry here would die the same way. The manager marks the model
``unusable`` until the node restarts and raises ``ModelUnusable``, for this job and any job
already claimed for it; the scheduler leaves such prompts to other nodes. The manager

- loads on demand (and runs the executor's warm-up once after loading);
- runs one job at a time per worker, and up to ``parallel`` workers per model (the model's
  ``parallel`` option in models.toml, else the node's ``parallel`` setting; default 1). Each
  worker loads its own copy of the model: a second one starts only when a job finds every
  loaded one busy, and counts against the memory budgets like any worker (``max_loaded``
  counts models, not workers). On a CPU the workers share the cores, so two jobs at once take
  longer each, but a short one no longer waits for a long one to finish (a UI's title
  request ahead of the answer someone is waiting for);
- keeps a model warm for ``keep_alive`` seconds after its last job (a prompt may ask for longer);
- evicts the least recently used idle model beyond ``max_loaded`` models, or while the workers
  hold more than ``memory_budget`` bytes of RAM (the sum of their RSS) or, where NVML finds
  NVIDIA GPUs, more than ``gpu_memory_budget`` bytes of GPU memory (``memory``);
- stops a cancelled job within a grace, killing the worker if the backend does not stop by
  itself. Backends look at ``cancelled()`` between chunks, so the grace is ``CANCEL_GRACE_S``
  plus twice the longest gap between the job's chunks so far (at most ``MAX_CANCEL_GRACE_S``):
  a diffusion step or a whisper window on a CPU can take seconds, and killing the worker for
  it would throw away a loaded model that was about to stop by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import multiprocessing
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from syncq.chat import MAX_LOGPROBS_BYTES, TokenLogprob, ToolCall
from syncq.errors import MalformedRecord

from . import memory, worker
from .base import ExecutorError, Job, ModelSpec, Output
from .cpu import signal_name

CANCEL_GRACE_S = 0.8
MAX_CANCEL_GRACE_S = 30.0
MAX_PARALLEL = 16
LOAD_TIMEOUT_S = 600.0
NO_PROBABILITY = -9999.0  # OpenAI's logprob for a token that had none
_SPAWN = multiprocessing.get_context("spawn")  # no fork of an asyncio process with threads


class WorkerDied(ExecutorError):
    """The worker process ended while loading or running (crash, OOM kill, kill -9).

    ``signum`` is the signal that ended it, if one did. ``permanent`` is true for SIGILL while
    loading (llama.cpp's warm-up decode is part of the load): the backend's native code uses an
    instruction this CPU cannot run, so no retry on this node can succeed, and the manager stops
    serving the model until the node restarts. A SIGILL in a run that loaded fine is counted
    like any crash: it may depend on the prompt, and one prompt must not take a model off every
    node that claims it."""

    def __init__(self, message: str, *, signum: int | None = None, loading: bool = False) -> None:
        super().__init__(message)
        self.signum = signum
        self.permanent = loading and signum == signal.SIGILL


# What runs a backend's native code, for the message of a worker that crashed in it.
NATIVE = {"llama": "llama-cpp-python", "whisper": "CTranslate2", "diffusers": "torch"}


def died(spec: ModelSpec, exitcode: int | None, *, loading: bool = False) -> WorkerDied:
    """The error for a worker of ``spec`` that ended with ``exitcode`` (negative: a signal), in
    words: which signal, and what most often sends it."""
    who = f"the worker for {spec.name}"
    if exitcode is None or exitcode >= 0:
        return WorkerDied(f"{who} exited unexpectedly (exit code {exitcode})")
    number = -exitcode
    native = NATIVE.get(spec.backend, f"the {spec.backend} backend")
    if number == signal.SIGILL:
        why = (
            f"SIGILL (illegal instruction): {native} was built for CPU features this machine "
            "cannot run; see README (CPU builds)"
        )
    elif number == signal.SIGKILL:
        why = (
            "SIGKILL: most often the kernel's out-of-memory killer (see `dmesg`); a smaller "
            "model, a smaller n_ctx or a lower max_loaded needs less memory"
        )
    elif number == signal.SIGSEGV:
        why = f"SIGSEGV (segmentation fault): a crash in {native}'s native code, or a damaged model file"
    elif number == signal.SIGBUS:
        why = "SIGBUS (bus error): the model file changed or its disk failed while mapped"
    elif number == signal.SIGABRT:
        why = f"SIGABRT (aborted): {native} gave up on an internal error; its message is in the node's log"
    else:
        why = signal_name(number)
    return WorkerDied(f"{who} was killed by {why}", signum=number, loading=loading)


class ModelUnusable(ExecutorError):
    """This node can never run the model (its worker died by SIGILL): until the node restarts,
    the manager runs nothing on it, and the scheduler leaves its prompts to other nodes."""


class Cancelled(ExecutorError):
    """The job was cancelled."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Limits of the manager (from the node's config)."""

    max_loaded: int = 2
    keep_alive_s: float = 300.0
    parallel: int = 1  # workers per model at most, unless a model's own option says otherwise
    memory_budget: int | None = None  # bytes of RAM
    gpu_memory_budget: int | None = None  # bytes of GPU memory (needs NVML)


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        parent, child = _SPAWN.Pipe()
        self.conn: Connection = parent
        self.process = _SPAWN.Process(target=worker.main, args=(child, spec), daemon=True)
        self._child = child
        self._messages: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self.keep_alive_s = 0.0
        self.notes: tuple[str, ...] = ()  # what the backend said about its load (node log)

    async def start(self) -> None:
        """Start the process and wait until the model is loaded. Raises ``ExecutorError``
        (``WorkerDied`` if it died loading: llama.cpp's first decode is part of the load)."""
        # Ctrl-C in the node's terminal goes to its whole process group. The worker ignores it
        # (worker.main), and SIGINT stays blocked until then, through the interpreter's start:
        # the node stops its workers itself, and a worker printed a KeyboardInterrupt otherwise.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._child.close()
        asyncio.get_running_loop().add_reader(self.conn.fileno(), self._readable)
        try:
            message = await asyncio.wait_for(self._next(loading=True), LOAD_TIMEOUT_S)
        except BaseException:
            self.stop(polite=False)
            raise
        if message[0] != "ready":
            self.stop()
            raise ExecutorError(f"cannot load model {self.spec.name}: {message[1]}")
        self.notes = tuple(message[2])

    def _readable(self) -> None:
        try:
            self._messages.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self._messages.put_nowait(None)

    async def _next(self, *, loading: bool = False) -> tuple[Any, ...]:
        message = await self._messages.get()
        if message is None:
            self.process.join(timeout=1)
            raise died(self.spec, self.process.exitcode, loading=loading)
        return message

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.is_alive()

    def rss(self) -> int:
        """Resident memory of the worker in bytes (0 if unknown)."""
        return memory.ram(self.process.pid) if self.process.pid is not None else 0

    async def run(self, job: Job, on_chunk: Callable[[str], None], cancel: asyncio.Event) -> Output:
        """Run a job; chunks go to ``on_chunk``. Raises ``Cancelled``, ``WorkerDied`` or
        ``ExecutorError``."""
        self.conn.send(("run", job))
        cancel_wait = asyncio.ensure_future(cancel.wait())
        last, longest_gap = time.monotonic(), 0.0
        try:
            while True:
                receive = asyncio.ensure_future(self._next())
                done, _ = await asyncio.wait({receive, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    return await self._cancel(job, on_chunk, grace=_grace(longest_gap))
                message = receive.result()
                if message[0] == "chunk":
                    now = time.monotonic()
                    last, longest_gap = now, max(longest_gap, now - last)
                    on_chunk(message[1])
                elif message[0] == "done":
                    return checked_output(message[1])
                else:
                    raise ExecutorError(message[1])
        finally:
            cancel_wait.cancel()
            self.last_used = time.monotonic()

    async def _cancel(self, job: Job, on_chunk: Callable[[str], None], *, grace: float) -> Output:
        self.conn.send(("cancel", job.prompt_id))
        deadline = time.monotonic() + grace
        with contextlib.suppress(TimeoutError, WorkerDied):
            while (left := deadline - time.monotonic()) > 0:
                message = await asyncio.wait_for(self._next(), left)
                if message[0] in ("done", "failed"):
                    raise Cancelled("cancelled")
                on_chunk(message[1])
        self.stop(polite=False)  # it did not stop in time: the only sure way is to end it
        raise Cancelled("cancelled (worker stopped)")

    def stop(self, *, polite: bool = True) -> None:
        """End the worker: ask it to exit (unless ``polite`` is false), then kill it."""
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
        if polite:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("exit",))
            self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class ModelManager:
    """Workers by model name, least recently used first."""

    def __init__(self, specs: Mapping[str, ModelSpec], settings: Settings | None = None) -> None:
        self.specs = dict(specs)
        self.settings = settings or Settings()
        # By slot, least recently used first: a model's first worker under its name, the
        # others (``parallel``) under "name#2", "name#3" ...
        self.workers: OrderedDict[str, Worker] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}  # by slot
        self._slots: dict[str, asyncio.Semaphore] = {}  # by model: jobs running or loading
        self.gpus = memory.Gpus.find() if self.settings.gpu_memory_budget is not None else None
        self.loads = 0  # how many times a model was loaded (tests and logs read it)
        self.unusable: dict[str, str] = {}  # model -> why this node cannot run it (until restart)
        self.on_load: Callable[[str, tuple[str, ...]], None] = lambda name, notes: None

    def serving(self) -> dict[str, ModelSpec]:
        """The models this node can run: every spec but those found unusable."""
        return {name: spec for name, spec in self.specs.items() if name not in self.unusable}

    def loaded(self, name: str) -> bool:
        """Whether the model is warm."""
        return any(w.alive for w in self._workers_of(name))

    def busy(self, name: str) -> bool:
        """Whether the model is running (or loading for) a job."""
        return any(self._busy_slot(slot) for slot in _slots(name, self.parallel(name)))

    def parallel(self, name: str) -> int:
        """How many jobs of the model may run at once here (its workers at most)."""
        spec = self.specs.get(name)
        return parallel(spec, self.settings) if spec is not None else 1

    def _workers_of(self, name: str) -> list[Worker]:
        return [w for w in self.workers.values() if w.spec.name == name]

    def _busy_slot(self, slot: str) -> bool:
        return self._locks.get(slot, asyncio.Lock()).locked()

    async def run(
        self,
        name: str,
        job: Job,
        on_chunk: Callable[[str], None],
        cancel: asyncio.Event,
        keep_alive_s: float | None = None,
    ) -> Output:
        """Run ``job`` on model ``name``, loading it first if needed. Raises ``ExecutorError``
        (``Cancelled``, ``WorkerDied`` and ``ModelUnusable`` among them)."""
        if name not in self.specs:
            raise ExecutorError(f"this node does not serve model {name!r}")
        async with self._slots.setdefault(name, asyncio.Semaphore(self.parallel(name))):
            slot = self._free_slot(name)
            async with self._locks.setdefault(slot, asyncio.Lock()):
                return await self._run_in(slot, job, on_chunk, cancel, keep_alive_s)

    def _free_slot(self, name: str) -> str:
        """A slot of the model with no job (the semaphore saw to it that one is free): a loaded
        one first, so that a second copy of the model loads only when the first is busy."""
        free = [slot for slot in _slots(name, self.parallel(name)) if not self._busy_slot(slot)]
        warm = [slot for slot in free if slot in self.workers and self.workers[slot].alive]
        return (warm or free)[0]

    async def _run_in(
        self,
        slot: str,
        job: Job,
        on_chunk: Callable[[str], None],
        cancel: asyncio.Event,
        keep_alive_s: float | None,
    ) -> Output:
        name = _model_of(slot)
        if name in self.unusable:  # a job claimed before its model's worker died by SIGILL
            raise ModelUnusable(self.unusable[name])
        try:
            found = await self._worker(slot)
            found.keep_alive_s = keep_alive_s if keep_alive_s is not None else self.settings.keep_alive_s
            try:
                return await found.run(job, on_chunk, cancel)
            finally:
                if not found.alive:
                    self._drop(slot)
        except WorkerDied as exc:  # the dead worker is dropped already (or never stored)
            if not exc.permanent:
                raise
            self.unusable[name] = str(exc)
            raise ModelUnusable(str(exc)) from exc

    async def _worker(self, slot: str) -> Worker:
        found = self.workers.get(slot)
        if found is not None and found.alive:
            self.workers.move_to_end(slot)
            return found
        self._drop(slot)
        name = _model_of(slot)
        self._evict(room_for=0 if self._workers_of(name) else 1)
        fresh = Worker(self.specs[name])
        await fresh.start()
        self.loads += 1
        self.workers[slot] = fresh
        self._evict(room_for=0)
        self.on_load(name, fresh.notes)
        return fresh

    def _evict(self, room_for: int) -> None:
        for slot in list(self.workers):  # least recently used first
            models = len({w.spec.name for w in self.workers.values()})
            over_count = models + room_for > self.settings.max_loaded
            if not (over_count or self._over_memory()):
                return
            if not self._busy_slot(slot) and (self._over_memory() or not self.busy(_model_of(slot))):
                self._drop(slot)

    def _over_memory(self) -> bool:
        ram, gpu = self.settings.memory_budget, self.settings.gpu_memory_budget
        if ram is not None and sum(w.rss() for w in self.workers.values()) > ram:
            return True
        if gpu is None or self.gpus is None:
            return False
        return self.gpus.used_by(w.process.pid for w in self.workers.values() if w.process.pid) > gpu

    def expire(self) -> list[str]:
        """Unload idle models whose keep-alive ran out; returns their names."""
        now = time.monotonic()
        gone = [
            slot
            for slot, w in self.workers.items()
            if not self._busy_slot(slot) and now - w.last_used >= w.keep_alive_s
        ]
        for slot in gone:
            self._drop(slot)
        return sorted({_model_of(slot) for slot in gone} - {w.spec.name for w in self.workers.values()})

    def _drop(self, slot: str) -> None:
        found = self.workers.pop(slot, None)
        if found is not None:
            found.stop()

    def close(self) -> None:
        """Stop every worker."""
        for slot in list(self.workers):
            self._drop(slot)


def parallel(spec: ModelSpec, settings: Settings) -> int:
    """Workers a model may have (its ``parallel`` option, else the node's). Raises
    ``ExecutorError`` for a value that is not a whole number from 1 to ``MAX_PARALLEL``."""
    value = spec.options.get("parallel", settings.parallel)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL:
        raise ExecutorError(
            f"parallel for {spec.name} must be a whole number from 1 to {MAX_PARALLEL}, not {value!r}"
        )
    return value


def _slots(name: str, count: int) -> list[str]:
    return [name, *(f"{name}#{i}" for i in range(2, count + 1))]


def _model_of(slot: str) -> str:
    return slot.split("#", 1)[0]


def checked_output(out: object) -> Output:
    """The ``Output`` a worker sent, checked: a plug-in may return something else, and a tool
    call that breaks the log's rules (an id or name ``ToolCall.from_wire`` refuses: a model
    may invent a tool name) would make the result unreadable on every device. Either fails
    the job, with the reason."""
    if not isinstance(out, Output):
        raise ExecutorError(f"the backend returned a {type(out).__name__}, not an Output")
    try:
        calls = tuple(ToolCall.from_wire(call.to_wire()) for call in out.tool_calls)
        logprobs = _within_budget(TokenLogprob.from_wire(_finite(t).to_wire()) for t in out.logprobs)
    except (AttributeError, TypeError, MalformedRecord) as exc:
        raise ExecutorError(f"the model made tool calls or logprobs the log cannot hold: {exc}") from None
    return dataclasses.replace(out, tool_calls=calls, logprobs=logprobs)


def _within_budget(entries: Iterable[TokenLogprob]) -> tuple[TokenLogprob, ...]:
    """The first tokens' logprobs, as many as ``MAX_LOGPROBS_BYTES`` of the log hold: 32,768
    tokens with 20 alternatives each took 19.6 MiB, a result over the 16 MiB every peer takes
    of one envelope (and the 8 MiB of a frame), so it would never leave the node."""
    kept, size = [], 0
    for entry in entries:
        size += len(json.dumps(entry.to_wire(), separators=(",", ":"), ensure_ascii=False)) + 1
        if size > MAX_LOGPROBS_BYTES:
            break
        kept.append(entry)
    return tuple(kept)


def _finite(entry: TokenLogprob) -> TokenLogprob:
    """A token's logprobs with -inf (a token of no probability, masked out) and NaN written as
    OpenAI writes them, -9999.0: JSON holds no infinity, the log refuses it, and an API answer
    with one is no JSON a client reads (starlette refuses to write it)."""
    top = tuple((t, _finite_value(v)) for t, v in entry.top)
    return dataclasses.replace(entry, logprob=_finite_value(entry.logprob), top=top)


def _finite_value(value: float) -> float:
    return NO_PROBABILITY if isinstance(value, float) and not math.isfinite(value) else value


def _grace(longest_gap: float) -> float:
    """How long a cancelled job may take to stop: one more chunk's work, twice over for noise."""
    return min(CANCEL_GRACE_S + 2 * longest_gap, MAX_CANCEL_GRACE_S)
