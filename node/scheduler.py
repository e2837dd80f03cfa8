"""The scheduler: claims prompts for the models this node serves and runs them.

It follows ``syncq.claims`` to the letter: pick candidates, write claims, wait for the merged
claims to settle (a few round trips to the connected peers), run only if this node won,
heartbeat while running, stream output into ``streams[id]`` about every 100 ms, and write the
result (or record an expired lease and take the prompt over). A cancel seen in the log stops the
job through the model manager within a second.

What each job costs the mesh is what bounds throughput (every envelope is signed, stored and
applied on every node), so: claims go out in batches (``_choose``, ``_depth``), heartbeats of all
claims share one envelope, the "running" mark rides with the first output, and a run shorter
than ``QUIET_START_S`` writes nothing but its result.

A request to this node's API whose answer is its acknowledgement may skip the queue
(``run_at_once``): the prompt runs before it is stored, and a short run stores prompt, claim
and result as one envelope.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from syncq.executors.base import ExecutorError, Job
from syncq.executors.manager import Cancelled, ModelManager, ModelUnusable

from syncq.blobs import BlobRef
from syncq.chat import MAX_LOGPROBS, TokenLogprob, ToolCall
from syncq.claims import Candidate, HeartbeatWatch, Policy, candidate, expiry_record, first_choice, won
from syncq.errors import BlobError, InvalidInput, MalformedRecord, StoreError
from syncq.grouped import Grouped, by_size
from syncq.ids import PromptId
from syncq.lifecycle import Facts, Status
from syncq.records import (
    FINISHES,
    MAX_CALLS,
    Claim,
    NodeInfo,
    Prompt,
    PromptKind,
    Result,
    RunStatus,
    encode,
)
from syncq.space import MAX_UPDATE_BYTES, prompt_bytes, wall_clock_ms
from syncq.watch import wait_event

from .gate import Gate

if TYPE_CHECKING:
    from syncq.node.daemon import Node

    from syncq.log import Changes, Log

ENDED = (Status.DONE, Status.CANCELLED, Status.FAILED)  # failed comes back through a retry record
TICK_S = 0.5
MIN_TICK_S = 0.005  # a burst of changes costs one look per 5 ms (a look costs what changed)
STREAM_EVERY_S = 0.1
QUIET_START_S = 0.05  # nothing is streamed this early in a run (see _stream)
SHOW_WAITING_S = 1.0  # a run at once that waits this long for its model shows its claim
RESULTS_HOLD_S = 0.02  # a result waits at most this long for others to share its envelope
SETTLE_MIN_S = 0.25  # claims must cross the mesh (several hops; ms under load) before anyone decides
DEPTH_MAX = 48  # prompts per model claimed ahead at most
COLD_GRACE_S = 0.25  # a node without the model loaded lets a node that has it claim first


@dataclass(slots=True)
class Running:
    """A prompt claimed or running here."""

    chosen: Candidate
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    beat: int = 0  # the claim's heartbeat; every write of the claim raises it
    running: bool = False
    at_once: bool = False  # run before it was stored (``Scheduler.run_at_once``)
    unlogged: Prompt | None = None  # that prompt, until it goes out with the claim or result

    @property
    def model(self) -> str:
        return self.chosen.model

    def next_claim(self, node: str) -> Claim:
        """The claim to write now, by ``node`` (this one), with a new heartbeat."""
        self.beat += 1
        chosen = self.chosen
        return Claim(
            prompt_id=chosen.prompt_id,
            node=node,
            attempt=chosen.attempt,
            heartbeat=self.beat,
            running=self.running,
        )


@dataclass(frozen=True, slots=True)
class Open:
    """A prompt that may still need a run, as the log said when it last changed."""

    prompt: Prompt
    status: Status
    facts: Facts

    @property
    def order(self) -> tuple[int, str]:
        """Where it stands in the queue: highest priority first, then oldest."""
        return (-self.prompt.priority, self.prompt.id)


class Scheduler:
    """Claims and runs prompts for one node.

    It keeps the open prompts (not done, cancelled or failed) in queue order per model, updated
    from the log's feed of changed prompts, so a tick costs what changed plus the head of the
    queue, not a scan of the whole log.
    """

    def __init__(self, node: Node, manager: ModelManager, policy: Policy | None = None) -> None:
        self.node = node
        self.space = node.space
        self.manager = manager
        manager.on_load = self._loaded
        self.policy = policy or Policy()
        self.watch = HeartbeatWatch()
        self.jobs: dict[PromptId, Running] = {}
        self._log: Log | None = None
        self._feed: Changes | None = None
        self._open: dict[PromptId, Open] = {}
        self._queues: dict[str, list[tuple[int, str]]] = {}  # per model, sorted by Open.order
        self._first_seen: dict[PromptId, float] = {}
        self._run_s: dict[str, float] = {}  # per model: a moving average of run times
        self._rivals: dict[str, list[str]] = {}  # per model: the other nodes that serve it
        self._warm_elsewhere: set[str] = set()  # models another node has loaded
        self._void: frozenset[str] = frozenset()  # devices removed from the space (claims.py step 7)
        self._nodes_seen: tuple[list[NodeInfo], list[str]] | None = None  # what _see_nodes saw
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        # Per model: held jobs take it by priority, as many at once as the manager runs
        # (``parallel``, its workers).
        self._gates: dict[str, Gate] = {}
        # Under load, results wait a few ms for the runs at once still to end (they end every
        # few ms), so that many share one envelope: one write per answer was a fifth of an echo
        # chat's cost with 50 clients.
        self._finished: Grouped[tuple[Running, Result], None] = Grouped(
            self._write_results, hold=self._more_soon, hold_s=RESULTS_HOLD_S
        )
        self._at_once_running: Counter[str] = Counter()  # per model: runs at once not ended
        # Prompts run at once and stored done with their result: never open here, so the look
        # after that write need not read them back (a third of a look's cost, per chat).
        self._done_whole: set[str] = set()

    def _loaded(self, model: str, notes: tuple[str, ...]) -> None:
        for note in notes:  # what a backend decided while loading (no AMX here, say)
            self.node.log.event("model-loaded", model=model, note=note)

    def wake(self) -> None:
        """Something changed in the log: look again soon."""
        self._wake.set()

    async def run(self) -> None:
        """Tick until cancelled."""
        last = 0.0
        from syncq.executors.models import UNREACHABLE

        for server, reason in UNREACHABLE.items():
            self.node.log.event("server-unreachable", level="error", server=server, reason=reason)
        # Decrypted attachments of jobs a crash interrupted: plaintext is never left behind.
        shutil.rmtree(self.space.paths.root / "work" / "jobs", ignore_errors=True)
        beating = asyncio.ensure_future(self._heartbeats())
        try:
            while True:
                await wait_event(self._wake, TICK_S)
                self._wake.clear()
                # At most one claiming look every MIN_TICK_S: a burst of prompts costs one look
                # (and one envelope of claims), and a lone prompt on a quiet node is claimed at
                # once. A look that claimed nothing does not count: the one after a job ended
                # made the next prompt wait its 5 ms (an echo chat through the API took 17).
                pause = last + MIN_TICK_S - time.monotonic()
                if pause > 0:  # not a sleep(0): what it would let run first can run after
                    await asyncio.sleep(pause)
                looked = time.monotonic()
                try:
                    if self.tick():
                        last = looked
                except StoreError as exc:
                    self.node.log.event("store-failed", level="error", reason=str(exc))
                if self.manager.expire():
                    self.node.advertise()
        finally:
            beating.cancel()
            for task in self._tasks:
                task.cancel()
            self.manager.close()

    def tick(self) -> bool:
        """Take in what changed, then claim what there is room for, in one envelope; whether
        it claimed any."""
        mono = time.monotonic()
        self._take_changes(self.space.log, mono)
        serving = self.manager.serving()
        self._see_nodes(self.space.log.nodes(), serving)
        self._void = self.space.void_devices()
        if not self._open:
            return False  # nothing to claim (a look after this node's own writes, mostly)
        wall = wall_clock_ms()
        chosen = [found for model in serving for found in self._choose(model, wall, mono)]
        if chosen:
            self._claim(chosen)
        return bool(chosen)

    def _see_nodes(self, nodes: list[NodeInfo], serving: Mapping[str, object]) -> None:
        """Which other nodes serve (and have warm) the models served here; worked out again
        only when the presence records or the models served here changed."""
        seen = (nodes, sorted(serving))
        if self._nodes_seen is not None and _same(seen, self._nodes_seen):
            return
        self._nodes_seen = seen
        me = self.space.device_id
        self._rivals = {
            model: [n.id for n in nodes if n.id != me and any(m.name == model for m in n.serving())]
            for model in serving
        }
        self._warm_elsewhere = {
            m.name for n in nodes if n.id != me for m in n.serving() if m.loaded and m.name in serving
        }

    # -- what is open --------------------------------------------------------------------------

    def _take_changes(self, log: Log, mono: float) -> None:
        if log is not self._log or self._feed is None:
            # A new Doc (first tick, or rebuilt after a failed write): start from everything.
            self._log, self._feed = log, log.follow()
            self._open.clear()
            self._queues.clear()
        changed = self._feed.drain()
        for prompt_id in changed - self._done_whole:
            self._update(log, PromptId(prompt_id), mono)
        self._done_whole -= changed

    def _update(self, log: Log, prompt_id: PromptId, mono: float) -> None:
        self._close(prompt_id)
        try:
            if log.untouched(prompt_id):
                prompt = log.prompt(prompt_id)
                state = Open(prompt, Status.QUEUED, Facts(max_attempts=prompt.max_attempts))
            else:
                entry = log.entry(prompt_id, stream=False)
                state = Open(entry.prompt, entry.status, entry.facts)
        except (KeyError, MalformedRecord):
            return
        if state.status is Status.CANCELLED and prompt_id in self.jobs:
            self.jobs[prompt_id].cancel.set()
        if state.status in ENDED:
            self.watch.forget(prompt_id)
            self._first_seen.pop(prompt_id, None)
            return
        self.watch.observe(state.facts.claims, int(mono * 1000))
        self._open[prompt_id] = state
        bisect.insort(self._queues.setdefault(state.prompt.model, []), state.order)

    def _close(self, prompt_id: PromptId) -> None:
        state = self._open.pop(prompt_id, None)
        if state is not None:
            queue = self._queues[state.prompt.model]
            del queue[bisect.bisect_left(queue, state.order)]

    # -- choosing and claiming -----------------------------------------------------------------

    def _choose(self, model: str, wall: int, mono: float) -> list[Candidate]:
        """Up to ``room`` prompts of the model to claim, first choices (``first_choice``) first
        among the head of the queue."""
        # Runs at once do not count: they are not claimed ahead, and a streamed chat queued
        # behind many of them must still be claimed, to meet them at the gate by priority.
        held = sum(job.model == model and not job.at_once for job in self.jobs.values())
        need, batch = self._depth(model)
        room = need + batch - held
        if room < batch and held:
            return []  # claims go out in batches: one envelope for many prompts
        rivals = self._rivals.get(model, [])
        window = room * (1 + len(rivals))
        found: list[Candidate] = []
        for _, prompt_id in self._queues.get(model, ()):
            if prompt_id in self.jobs:
                continue
            state = self._open[PromptId(prompt_id)]
            option = candidate(
                prompt_id=state.prompt.id,
                model=model,
                priority=state.prompt.priority,
                status=state.status,
                facts=state.facts,
                me=self.space.device_id,
                wall_ms=wall,
                monotonic_ms=int(mono * 1000),
                watch=self.watch,
                policy=self.policy,
                holding=False,  # jobs held here were skipped above
                void=self._void,
            )
            if option is not None and self._warm_enough(option, mono):
                found.append(option)
                if len(found) >= window:
                    break
        me = self.space.device_id
        found.sort(key=lambda option: not first_choice(option.prompt_id, me, rivals))
        return found[:room]

    def _depth(self, model: str) -> tuple[int, int]:
        """How many prompts of a model to hold claimed, and in batches of how many.

        Enough that the model never waits for a claim to settle (the settle time over the
        average run time, plus one), two at first: a long job must not hoard the queue. More
        are claimed once a batch's worth is free (half as many again), so that claims share
        envelopes. A model that runs several jobs at once (``parallel``) holds one for each,
        and one more.
        """
        run_s = self._run_s.get(model)
        at_once = self.manager.parallel(model)
        if run_s is None:
            return max(2, at_once), 1
        need = max(2, math.ceil((self._settle_s(model) + MIN_TICK_S) / max(run_s, 1e-3)) + at_once)
        batch = max(1, need // 2)
        return min(need, DEPTH_MAX - batch), batch

    def _warm_enough(self, found: Candidate, mono: float) -> bool:
        if self.manager.loaded(found.model) or found.model not in self._warm_elsewhere:
            return True
        first = self._first_seen.setdefault(found.prompt_id, mono)
        return mono - first >= COLD_GRACE_S

    def _claim(self, chosen: list[Candidate]) -> None:
        me = self.space.device_id
        for option in chosen:
            if option.expired is not None:
                record = expiry_record(
                    option.expired,
                    observer=me,
                    observer_name=self.space.name,
                    now_ms=wall_clock_ms(),
                    void=self._void,
                )
                self.space.finish(record)
                event = "claim-void" if option.expired.node in self._void else "lease-expired"
                self.node.log.event(event, prompt=option.prompt_id, node=option.expired.node)
        claimed = [Running(chosen=option) for option in chosen]
        self._put_claims(claimed)
        for running in claimed:
            self.jobs[running.chosen.prompt_id] = running
            prompt = self._open[running.chosen.prompt_id].prompt
            task = asyncio.ensure_future(self._job(running, prompt))
            self._tasks.add(task)
            task.add_done_callback(self._ended)

    def _put_claims(self, claimed: list[Running], text: str = "") -> None:
        """Write this node's claims with new heartbeats (and output of the first one, if any) as
        one envelope, and offer it to the peers; as several if the prompts of runs at once
        that show with them make it large."""
        for batch in by_size(claimed, _claim_bytes, MAX_UPDATE_BYTES):
            self._put_claim_batch(batch, text)
            text = ""

    def _put_claim_batch(self, claimed: list[Running], text: str) -> None:
        me = self.space.device_id

        def changes(log: Log) -> None:
            for running in claimed:
                if running.unlogged is not None:
                    log.put_prompt(running.unlogged)  # a run at once that runs long: now it shows
                log.put_claim(running.next_claim(me))
            if text:
                log.append_stream(claimed[0].chosen.prompt_id, text)

        # No fsync of its own: lost with the power, a claim only lets the prompt run again, and
        # the store syncs before any envelope leaves for a peer. An fsync was a third of an echo
        # chat's time through the API on a busy disk (issue 15).
        self.space.write(changes, durable=False)
        for running in claimed:
            running.unlogged = None
        self.node.changed()

    async def _heartbeats(self) -> None:
        # Every claim held, waiting ones included (a claim held ahead must not look abandoned),
        # in one envelope per period.
        while True:
            await asyncio.sleep(self.policy.heartbeat_ms / 1000)
            if self.jobs:
                try:
                    self._put_claims(list(self.jobs.values()))
                except StoreError as exc:
                    self.node.log.event("store-failed", level="error", reason=str(exc))

    def _ended(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, StoreError):  # that is logged where it is met
            self.node.log.event("job-crashed", level="error", reason=f"{type(error).__name__}: {error}")

    async def _job(self, running: Running, prompt: Prompt) -> None:
        chosen = running.chosen
        folder: Path | None = None
        inputs: tuple[str, ...] = ()
        try:
            settle = self._settle_s(chosen.model)
            if settle:
                await asyncio.sleep(settle)
                if not self._still_mine(chosen):
                    return
            if prompt.files or prompt.kind is not PromptKind.LLM:
                # Fetched before the model is taken, so that another job can use it meanwhile.
                folder = self.space.paths.root / "work" / "jobs" / f"{prompt.id}.{chosen.attempt}"
                started = wall_clock_ms()
                try:
                    inputs = await self._inputs(prompt, folder)
                except (BlobError, InvalidInput) as exc:
                    await self._record(
                        running, self._result(chosen, RunStatus.FAILED, started, error=str(exc))
                    )
                    return
            async with self._gate(chosen.model).enter((-prompt.priority, chosen.prompt_id)):
                if not self._still_mine(chosen):
                    return
                result = await self._execute(running, prompt, inputs, folder)
            # Written at the loop's next turn, with the results of every job that ended by then
            # (``_finished``); the next job reaches the model first.
            await self._record(running, result)
        except StoreError as exc:
            self.node.log.event("store-failed", level="error", reason=str(exc))
        finally:
            self.jobs.pop(chosen.prompt_id, None)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)  # plaintext of attachments: not kept
            self._wake.set()

    def _more_soon(self) -> bool:
        """Whether a run at once is likely to end within ``RESULTS_HOLD_S``: one is going of a
        model whose runs take less than that (echo, an embedding; not a long answer)."""
        return any(
            count and self._run_s.get(model, math.inf) < RESULTS_HOLD_S
            for model, count in self._at_once_running.items()
        )

    def _gate(self, model: str) -> Gate:
        return self._gates.setdefault(model, Gate(self.manager.parallel(model)))

    async def run_at_once(self, prompt: Prompt) -> bool:
        """Run a prompt not yet stored, here and now, if this node can: a request to this
        node's API whose answer is its acknowledgement (``AsyncClient.submit``'s ``at_once``).

        Nobody else can claim what is not in the log, so there is nothing to settle: the run
        starts at once, and a short one goes out as one envelope of prompt, claim and result
        instead of three (an echo chat through the API cost three writes and two looks of
        the scheduler, issue 15). A run that goes on past ``QUIET_START_S``, or waits for
        the model longer than ``SHOW_WAITING_S``, shows the prompt with its claim, as any run
        shows its claim, so that every device sees it and can cancel it.

        Declines (False: queue it) for a model this node does not serve, or has cold while
        another node has it warm, for a prompt with files (they are fetched first), and while
        a prompt for the model waits in the queue here: a request must not jump it. The run
        is a task of its own: a client that leaves does not stop it, and its result is
        stored whatever happens to the request."""
        model = prompt.model
        if (
            self._log is None  # not ticking yet (starting, or a relay)
            or prompt.files
            or prompt.kind is not PromptKind.LLM
            or model not in self.manager.serving()
            or (model in self._warm_elsewhere and not self.manager.loaded(model))
            or any(
                self._open[PromptId(pid)].status is Status.QUEUED and pid not in self.jobs
                for _, pid in self._queues.get(model, ())
            )
        ):
            return False
        chosen = Candidate(prompt_id=prompt.id, model=model, priority=prompt.priority, attempt=1)
        running = Running(chosen=chosen, at_once=True, unlogged=prompt)
        task = asyncio.ensure_future(self._at_once(running, prompt))
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return await asyncio.shield(task)

    async def _at_once(self, running: Running, prompt: Prompt) -> bool:
        # In ``jobs`` from the task's first step: a task cancelled before it (the scheduler
        # stopping) leaves nothing behind to heartbeat for ever.
        self.jobs[prompt.id] = running
        # Shown once it runs past its quiet start (``_stream``), or has waited for the model
        # for a while: under load, runs at once wait their turn at the gate for many ms each.
        showing = asyncio.get_running_loop().call_later(SHOW_WAITING_S, self._show, running)
        self._at_once_running[prompt.model] += 1
        try:
            try:
                async with self._gate(prompt.model).enter((-prompt.priority, prompt.id)):
                    cancelled = running.cancel.is_set()  # while it waited, shown
                    result = None if cancelled else await self._execute(running, prompt, (), None)
            finally:
                self._at_once_running[prompt.model] -= 1
            if result is None and running.unlogged is not None:
                return False  # stopped before anyone saw it (the node is stopping): queue it
            await self._record(running, result)
            return True
        except StoreError as exc:
            self.node.log.event("store-failed", level="error", reason=str(exc))
            raise  # the request fails: its answer was not stored
        finally:
            showing.cancel()
            self.jobs.pop(prompt.id, None)
            self._wake.set()

    def _show(self, running: Running) -> None:
        if running.unlogged is not None and self.jobs.get(running.chosen.prompt_id) is running:
            try:
                self._put_claims([running])
            except StoreError as exc:  # the result's write tries again, and says so if it fails
                self.node.log.event("store-failed", level="error", reason=str(exc))

    async def _inputs(self, prompt: Prompt, folder: Path) -> tuple[str, ...]:
        """Fetch the prompt's attachments and decrypt them into ``folder/in``."""
        (folder / "out").mkdir(parents=True, exist_ok=True)
        (folder / "in").mkdir(exist_ok=True)
        paths: list[str] = []
        for i, ref in enumerate(prompt.files):
            await self.node.transfers.fetch(ref)
            taken = any(Path(p).name == ref.name for p in paths)
            name = f"{i}-{ref.name}" if taken else ref.name  # two attachments of one name
            # Decrypting (and sealing outputs, below) reads whole files: off the event loop.
            saved = await asyncio.to_thread(self.space.save_file, ref, folder / "in", name=name)
            paths.append(str(saved))
        return tuple(paths)

    def _still_mine(self, chosen: Candidate) -> bool:
        try:
            entry = self.space.log.entry(chosen.prompt_id, stream=False)
        except (KeyError, MalformedRecord):
            # Gone from the log: written by a device whose removal voids it (found by the
            # simulation, tests/sim: the job task died with a KeyError, logged as a crash).
            return False
        return (
            won(entry.claims, self.space.device_id, chosen.attempt) and entry.status is not Status.CANCELLED
        )

    async def _execute(
        self, running: Running, prompt: Prompt, inputs: tuple[str, ...], folder: Path | None
    ) -> Result | None:
        """Run the prompt; its result, or None if it was cancelled."""
        chosen = running.chosen
        pid = chosen.prompt_id
        self.node.log.event("running", prompt=pid, model=chosen.model, attempt=chosen.attempt)
        buffer: list[str] = []
        said: list[str] = []  # every chunk of this run, for this node's API (``Node.live``)
        arrived = asyncio.Event()
        streaming = asyncio.ensure_future(self._stream(running, buffer, arrived))
        started, first_token = wall_clock_ms(), 0
        clock, warm = time.monotonic(), self.manager.loaded(chosen.model)

        def on_chunk(chunk: str) -> None:
            nonlocal first_token
            first_token = first_token or wall_clock_ms()
            said.append(chunk)
            self.node.live(pid, chosen.attempt, said)  # first: a chat's client sees it at once
            buffer.append(chunk)
            arrived.set()

        params: dict[str, object] = dict(prompt.params)
        keep_alive = params.pop("keep_alive", None)
        out_dir = str(folder / "out") if folder is not None else ""
        job = Job(
            prompt_id=pid, input=prompt.input, params=params, files=inputs, out_dir=out_dir, llm=prompt.llm
        )
        result: Result | None
        try:
            out = await self.manager.run(
                chosen.model,
                job,
                on_chunk,
                running.cancel,
                float(keep_alive) if keep_alive is not None else None,
            )
            if warm:  # a load is not a run: it would make the model look slow for a while
                self._note_run(chosen.model, time.monotonic() - clock)
            usage = {
                **out.usage,
                "ms_total": wall_clock_ms() - started,
                "ms_first_token": (first_token or started) - started,
            }
            files = tuple([await asyncio.to_thread(self._attach, path, folder) for path in out.files])
            if files:
                self.node.transfers.offer_to_relays()
            result = self._result(
                chosen,
                RunStatus.DONE,
                started,
                output=out.text,
                usage=usage,
                files=files,
                finish=out.finish if out.finish in FINISHES else "",
                tool_calls=out.tool_calls[:MAX_CALLS],
                logprobs=out.logprobs[:MAX_LOGPROBS],
            )
        except Cancelled:
            result = None
        except ModelUnusable as exc:
            # Not one of the prompt's attempts: another node that serves the model may take it.
            # The model leaves this node's presence first, so nobody who reads the result sees
            # the model still offered here.
            self.node.log.event("model-unusable", level="error", model=chosen.model, reason=str(exc))
            self.node.advertise()
            result = self._result(chosen, RunStatus.FAILED, started, error=str(exc), counts=False)
        except (ExecutorError, InvalidInput) as exc:
            result = self._result(chosen, RunStatus.FAILED, started, error=str(exc))
        finally:
            streaming.cancel()
            # Awaited, so that a job cancelled at shutdown leaves no task pending on a closed
            # loop (this hung when the stream task's wait could swallow the cancel: wait_event).
            await asyncio.gather(streaming, return_exceptions=True)
        return result

    def _attach(self, path: str, folder: Path | None) -> BlobRef:
        """Seal an output file; only files inside the job's folder count (a backend's bug must
        not publish the node's other files)."""
        if folder is None or not Path(path).resolve().is_relative_to(folder.resolve()):
            raise InvalidInput(f"the executor returned a file outside its output folder: {path}")
        return self.space.attach(path)

    async def _record(self, running: Running, result: Result | None) -> None:
        """Write how a job ended; it stays in ``jobs`` until it is written."""
        if result is not None:
            await self._finished((running, result))
            return
        prompt_id = running.chosen.prompt_id
        self.space.drop_stream(prompt_id)
        self.node.log.event("cancelled", prompt=prompt_id)
        self.node.changed()
        self.node.advertise()

    def _write_results(self, ended: Sequence[tuple[Running, Result]]) -> list[None]:
        """The results of the jobs that ended in one turn of the loop (or while ``_finished``
        held them), as one envelope, or as several of at most ``MAX_UPDATE_BYTES``: under
        load, one fsync for many answers. A run at once that never showed goes out whole: its
        prompt, its claim and its result."""
        for batch in by_size(ended, _result_bytes, MAX_UPDATE_BYTES):
            self._write_result_batch(batch)
        for _, result in ended:
            self.node.log.event(
                "finished", prompt=result.prompt_id, status=result.status.value, error=result.error
            )
        self.node.changed()
        self.node.advertise()
        return [None] * len(ended)

    def _write_result_batch(self, ended: list[tuple[Running, Result]]) -> None:
        me = self.space.device_id
        whole: set[str] = set()

        def finish(log: Log) -> None:
            for running, result in ended:
                if running.unlogged is not None:
                    if result.status is RunStatus.DONE:
                        whole.add(result.prompt_id)
                    log.put_prompt(running.unlogged)
                    log.put_claim(running.next_claim(me))  # who ran it, as for any run
                log.finish(result)

        # No fsync when every run in it is a run at once that never showed: its answer is its
        # acknowledgement, and the store syncs before any envelope leaves for a peer. One that
        # showed has a claim other devices may hold: its result is synced, as any result is.
        self.space.write(finish, durable=not all(r.at_once and r.unlogged is not None for r, _ in ended))
        self._done_whole |= whole
        for running, _ in ended:
            running.unlogged = None

    def _note_run(self, model: str, seconds: float) -> None:
        previous = self._run_s.get(model)
        self._run_s[model] = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    def _result(
        self,
        chosen: Candidate,
        status: RunStatus,
        started: int,
        *,
        output: str = "",
        error: str | None = None,
        usage: dict[str, object] | None = None,
        files: tuple[BlobRef, ...] = (),
        counts: bool = True,
        finish: str = "",
        tool_calls: tuple[ToolCall, ...] = (),
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> Result:
        return Result(
            prompt_id=chosen.prompt_id,
            node=self.space.device_id,
            node_name=self.space.name,
            attempt=chosen.attempt,
            status=status,
            output=output,
            error=error,
            started_at=started,
            finished_at=wall_clock_ms(),
            usage=usage or {},  # type: ignore[arg-type]
            files=files,
            counts=counts,
            finish=finish,
            tool_calls=tool_calls,
            logprobs=logprobs,
        )

    async def _stream(self, running: Running, buffer: list[str], arrived: asyncio.Event) -> None:
        # The claim is marked running together with the first output (one envelope on the way
        # to the first token, not two), or alone after STREAM_EVERY_S without output (a model
        # still loading); later output goes out every STREAM_EVERY_S. Nothing goes out in the
        # first QUIET_START_S of a run: a run that short is told by its result alone (half the
        # envelopes of a short job). This node's own API does not wait for these writes: it is
        # handed each chunk as it comes (``on_chunk``, ``Node.live``).
        await asyncio.sleep(QUIET_START_S)
        await wait_event(arrived, STREAM_EVERY_S - QUIET_START_S)
        while True:
            arrived.clear()
            text = "".join(buffer)
            buffer.clear()
            if not running.running:
                running.running = True
                self._put_claims([running], text)
            elif text:
                self.space.append_stream(running.chosen.prompt_id, text, durable=False)
                self.node.changed()
            await asyncio.sleep(STREAM_EVERY_S)
            await arrived.wait()

    def _settle_s(self, model: str) -> float:
        """How long claims need to meet: none if no other node advertises the model (nobody
        else would claim it), else a few round trips to the peers, at least SETTLE_MIN_S."""
        if not self._rivals.get(model):
            return 0.0
        latencies = [c.ws.latency for c in self.node.connections.values()]
        return max(SETTLE_MIN_S, 3 * max(latencies, default=0.0))


def _same(a: tuple[list[NodeInfo], list[str]], b: tuple[list[NodeInfo], list[str]]) -> bool:
    """The same presence records (the Log hands out the same objects until they change) and
    the same models."""
    return a[1] == b[1] and len(a[0]) == len(b[0]) and all(x is y for x, y in zip(a[0], b[0], strict=True))


def _claim_bytes(running: Running) -> int:
    return 200 + (prompt_bytes(running.unlogged) if running.unlogged is not None else 0)


def _result_bytes(ended: tuple[Running, Result]) -> int:
    running, result = ended
    size = len(encode(result.to_wire()).encode())
    return size + (_claim_bytes(running) if running.unlogged is not None else 0)
