"""The model manager running several jobs of one model at once (``parallel``), real workers."""

from __future__ import annotations

import asyncio

import pytest
from syncq.executors.base import ExecutorError, Job, ModelSpec
from syncq.executors.manager import ModelManager, Settings, parallel

ECHO = {"echo": ModelSpec(name="echo", backend="echo"), "other": ModelSpec(name="other", backend="echo")}


async def timed(manager: ModelManager, text: str, delay: float, model: str = "echo") -> tuple[float, float]:
    """A job's (start, end) on the loop's clock, the echo spread over ``delay`` seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    job = Job(prompt_id=text, input=text, params={"delay": delay})
    out = await manager.run(model, job, lambda _: None, asyncio.Event())
    assert out.text == text
    return started, loop.time()


def test_two_workers_run_two_jobs_of_one_model_at_once() -> None:
    async def scenario() -> None:
        manager = ModelManager(ECHO, Settings(parallel=2))
        try:
            await timed(manager, "warm", 0)  # one worker, loaded
            await asyncio.gather(timed(manager, "one two", 0.6), timed(manager, "three four", 0.6))
            # A second copy loads only for a job that finds the first busy: they ran at once.
            assert manager.loads == 2 and list(manager.workers) == ["echo", "echo#2"]
            pids = {w.process.pid for w in manager.workers.values()}
            assert len(pids) == 2 and manager.loaded("echo")
            await timed(manager, "alone", 0)
            assert manager.loads == 2  # a lone job takes a warm worker: no third load
        finally:
            manager.close()

    asyncio.run(scenario())


def test_one_worker_runs_the_jobs_of_a_model_one_after_the_other() -> None:
    async def scenario() -> None:
        manager = ModelManager(ECHO)  # parallel = 1, the default
        try:
            (_, a1), (_, b1) = await asyncio.gather(
                timed(manager, "one two", 0.3), timed(manager, "three four", 0.3)
            )
            assert abs(a1 - b1) >= 0.3  # the second one's 0.3 s began when the first ended
            assert manager.loads == 1 and list(manager.workers) == ["echo"]
        finally:
            manager.close()

    asyncio.run(scenario())


def test_max_loaded_counts_models_not_workers() -> None:
    async def scenario() -> None:
        manager = ModelManager(ECHO, Settings(parallel=2, max_loaded=2))
        try:
            await asyncio.gather(timed(manager, "a b", 0.3), timed(manager, "c d", 0.3))
            await timed(manager, "e", 0, model="other")
            # Two models in all: both copies of echo stay warm beside the other model.
            assert sorted(manager.workers) == ["echo", "echo#2", "other"]
        finally:
            manager.close()

    asyncio.run(scenario())


def test_a_model_option_overrides_the_node_setting_and_bad_values_are_refused() -> None:
    spec = ModelSpec(name="m", backend="echo", options={"parallel": 3})
    assert parallel(spec, Settings(parallel=1)) == 3
    assert parallel(ModelSpec(name="m", backend="echo"), Settings(parallel=2)) == 2
    for bad in (0, 17, "2", 1.5, True):
        with pytest.raises(ExecutorError, match="parallel for m must be a whole number"):
            parallel(ModelSpec(name="m", backend="echo", options={"parallel": bad}), Settings())
