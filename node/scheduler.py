"""The scheduler: claims prompts for the models this node serves and runs them.

It follows ``syncq.claims`` to the letter: pick candidates, write a claim, wait for the merged
claims to settle (a few round trips to the connected peers), run only if this node won,
heartbeat while running, stream output into ``streams[id]`` about every 100 ms, and write the
result (or record an expired lease and take the prompt over). A cancel seen in the log stops the
job through the model manager within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncq.executors.base import ExecutorError, Job
from syncq.executors.manager import Cancelled, ModelManager

from syncq.claims import Candidate, HeartbeatWatch, Policy, candidate, expiry_record, order, won
from syncq.errors import MalformedRecord, StoreError
from syncq.ids import PromptId
from syncq.lifecycle import Facts, Status
from syncq.records import Claim, Prompt, Result, RunStatus
from syncq.space import wall_clock_ms

if TYPE_CHECKING:
    from syncq.node.daemon import Node

    from syncq.log import Log

FINAL = (Status.DONE, Status.CANCELLED)
TICK_S = 0.5
MIN_TICK_S = 0.02
STREAM_EVERY_S = 0.1
SETTLE_MIN_S = 0.5  # claims must cross the mesh (several hops) before anyone decides
PIPELINE = 8  # prompts per model claimed ahead (settling or waiting) while one runs
COLD_GRACE_S = 0.25  # a node without the model loaded lets a warm one claim first


@dataclass(slots=True)
class Running:
    """A prompt claimed or running here."""

    prompt_id: PromptId
    model: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    beat: int = 0  # the claim's heartbeat; every write of the claim raises it
    running: bool = False


class Scheduler:
    """Claims and runs prompts for one node."""

    def __init__(self, node: Node, manager: ModelManager, policy: Policy | None = None) -> None:
        self.node = node
        self.space = node.space
        self.manager = manager
        self.policy = policy or Policy()
        self.watch = HeartbeatWatch()
        self.jobs: dict[PromptId, Running] = {}
        self._done: set[PromptId] = set()  # done or cancelled: never looked at again
        self._first_seen: dict[PromptId, float] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._model_locks: dict[str, asyncio.Lock] = {}

    def wake(self) -> None:
        """Something changed in the log: look again soon."""
        self._wake.set()

    async def run(self) -> None:
        """Tick until cancelled."""
        last = 0.0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
                self._wake.clear()
                # At most one look every MIN_TICK_S: a burst of changes costs one scan, and a
                # lone prompt on a quiet node is claimed at once.
                await asyncio.sleep(max(0.0, last + MIN_TICK_S - time.monotonic()))
                last = time.monotonic()
                try:
                    self.tick()
                except StoreError as exc:
                    self.node.log.event("store-failed", level="error", reason=str(exc))
                if self.manager.expire():
                    self.node.advertise()
        finally:
            for task in self._tasks:
                task.cancel()
            self.manager.close()

    def tick(self) -> None:
        """Cancel what was cancelled, then claim one prompt for each model with room."""
        log = self.space.log
        for prompt_id, job in self.jobs.items():
            if log.status(prompt_id) is Status.CANCELLED:
                job.cancel.set()
        if all(self._busy(model) for model in self.manager.specs):
            return
        wall, mono = wall_clock_ms(), time.monotonic()
        best: dict[str, Candidate] = {}
        for prompt_id in log.prompt_ids():
            found = self._consider(log, prompt_id, wall, mono)
            if found is not None and (
                found.model not in best or order([found, best[found.model]])[0] is found
            ):
                best[found.model] = found
        for chosen in best.values():
            self._start(chosen, log.prompt(chosen.prompt_id))

    def _consider(self, log: Log, prompt_id: PromptId, wall: int, mono: float) -> Candidate | None:
        # Cheap first: most prompts are finished (cached) or untouched (read the prompt only).
        if prompt_id in self._done or prompt_id in self.jobs:
            return None
        try:
            status = log.status(prompt_id)
            prompt = log.prompt(prompt_id)
        except MalformedRecord:
            self._done.add(prompt_id)
            return None
        if status in FINAL:
            self._done.add(prompt_id)
            return None
        if status is Status.FAILED or prompt.model not in self.manager.specs or self._busy(prompt.model):
            return None  # failed is not final: `syncq retry` may queue it again
        if log.untouched(prompt_id):
            facts = Facts(max_attempts=prompt.max_attempts)
        else:
            facts = log.entry(prompt_id).facts
            self.watch.observe(facts.claims, int(mono * 1000))
        found = candidate(
            prompt_id=prompt_id,
            model=prompt.model,
            priority=prompt.priority,
            status=status,
            facts=facts,
            me=self.space.device_id,
            wall_ms=wall,
            monotonic_ms=int(mono * 1000),
            watch=self.watch,
            policy=self.policy,
        )
        return found if found is not None and self._warm_enough(found, mono) else None

    def _busy(self, model: str) -> bool:
        # Settling takes a few round trips; claiming a few prompts ahead keeps the model busy.
        return sum(job.model == model for job in self.jobs.values()) >= PIPELINE

    def _warm_enough(self, found: Candidate, mono: float) -> bool:
        if self.manager.loaded(found.model):
            return True
        first = self._first_seen.setdefault(found.prompt_id, mono)
        return mono - first >= COLD_GRACE_S

    def _start(self, chosen: Candidate, prompt: Prompt) -> None:
        running = Running(prompt_id=chosen.prompt_id, model=chosen.model)
        self.jobs[chosen.prompt_id] = running
        task = asyncio.ensure_future(self._job(chosen, running, prompt.input, dict(prompt.params)))
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self.node.log.event("job-crashed", level="error", reason=f"{type(error).__name__}: {error}")

    async def _job(self, chosen: Candidate, running: Running, text: str, params: dict[str, object]) -> None:
        me, pid = self.space.device_id, chosen.prompt_id
        try:
            if chosen.expired is not None:
                record = expiry_record(
                    chosen.expired, observer=me, observer_name=self.space.name, now_ms=wall_clock_ms()
                )
                self.space.finish(record)
                self.node.log.event("lease-expired", prompt=pid, node=chosen.expired.node)
            settle = self._settle_s(chosen.model)
            lock = self._model_locks.setdefault(chosen.model, asyncio.Lock())
            # Nothing to settle and the model free: the claim says "running" from the start,
            # which saves one fsync'd write on the way to the first token.
            running.running = settle == 0 and not lock.locked()
            self._put_claim(chosen, running)
            beating = asyncio.ensure_future(self._heartbeat(chosen, running))
            try:
                await asyncio.sleep(settle)
                if settle and not self._still_mine(chosen):
                    return
                async with lock:
                    if self._still_mine(chosen):
                        await self._execute(chosen, running, text, params)
            finally:
                beating.cancel()
        except StoreError as exc:
            self.node.log.event("store-failed", level="error", reason=str(exc))
        finally:
            self.jobs.pop(pid, None)
            self._wake.set()

    def _still_mine(self, chosen: Candidate) -> bool:
        entry = self.space.log.entry(chosen.prompt_id)
        return (
            won(entry.claims, self.space.device_id, chosen.attempt) and entry.status is not Status.CANCELLED
        )

    async def _execute(
        self, chosen: Candidate, running: Running, text: str, params: dict[str, object]
    ) -> None:
        pid = chosen.prompt_id
        if not running.running:
            running.running = True
            self._put_claim(chosen, running)
        self.node.log.event("running", prompt=pid, model=chosen.model, attempt=chosen.attempt)
        buffer: list[str] = []
        arrived = asyncio.Event()
        streaming = asyncio.ensure_future(self._stream(pid, buffer, arrived))
        started, first_token = wall_clock_ms(), 0

        def on_chunk(chunk: str) -> None:
            nonlocal first_token
            first_token = first_token or wall_clock_ms()
            buffer.append(chunk)
            arrived.set()

        keep_alive = params.pop("keep_alive", None)
        job = Job(prompt_id=pid, input=text, params=params)
        result: Result | None
        try:
            out = await self.manager.run(
                chosen.model,
                job,
                on_chunk,
                running.cancel,
                float(keep_alive) if keep_alive is not None else None,
            )
            usage = {
                **out.usage,
                "ms_total": wall_clock_ms() - started,
                "ms_first_token": (first_token or started) - started,
            }
            result = self._result(chosen, RunStatus.DONE, started, output=out.text, usage=usage)
        except Cancelled:
            result = None
        except ExecutorError as exc:
            result = self._result(chosen, RunStatus.FAILED, started, error=str(exc))
        finally:
            streaming.cancel()
        if result is None:
            self.space.drop_stream(pid)
            self.node.log.event("cancelled", prompt=pid)
        else:
            self.space.finish(result)
            self.node.log.event("finished", prompt=pid, status=result.status.value, error=result.error)
        self.node.changed()
        self.node.advertise()

    def _result(
        self,
        chosen: Candidate,
        status: RunStatus,
        started: int,
        *,
        output: str = "",
        error: str | None = None,
        usage: dict[str, object] | None = None,
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
        )

    async def _heartbeat(self, chosen: Candidate, running: Running) -> None:
        # From the claim on, waiting included: a claim held ahead must not look abandoned.
        while True:
            await asyncio.sleep(self.policy.heartbeat_ms / 1000)
            self._put_claim(chosen, running)

    def _put_claim(self, chosen: Candidate, running: Running) -> None:
        """Write this node's claim with a new heartbeat, and offer it to the peers."""
        running.beat += 1
        claim = Claim(
            prompt_id=chosen.prompt_id,
            node=self.space.device_id,
            attempt=chosen.attempt,
            heartbeat=running.beat,
            running=running.running,
        )
        self.space.put_claim(claim)
        self.node.changed()

    async def _stream(self, prompt_id: PromptId, buffer: list[str], arrived: asyncio.Event) -> None:
        # The first chunk goes out at once (time to first token), later ones every 100 ms.
        while True:
            await arrived.wait()
            arrived.clear()
            text = "".join(buffer)
            buffer.clear()
            self.space.append_stream(prompt_id, text)
            self.node.changed()
            await asyncio.sleep(STREAM_EVERY_S)

    def _settle_s(self, model: str) -> float:
        """How long claims need to meet: none if no other node advertises the model (nobody
        else would claim it), else a few round trips to the peers, at least SETTLE_MIN_S."""
        me = self.space.device_id
        rivals = [n for n in self.space.log.nodes() if n.id != me and any(m.name == model for m in n.models)]
        if not rivals:
            return 0.0
        latencies = [c.ws.latency for c in self.node.connections.values()]
        return max(SETTLE_MIN_S, 3 * max(latencies, default=0.0))
