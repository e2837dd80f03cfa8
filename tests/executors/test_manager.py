"""The model manager with real worker processes and the echo executor."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import pytest
from syncq.executors.base import ExecutorError, Job, ModelSpec, Output
from syncq.executors.manager import (
    CANCEL_GRACE_S,
    Cancelled,
    ModelManager,
    ModelUnusable,
    Settings,
    WorkerDied,
    checked_output,
    died,
)
from syncq.executors.memory import Gpus, parse_size

from syncq.chat import MAX_LOGPROBS, MAX_LOGPROBS_BYTES, TokenLogprob, ToolCall
from syncq.frames import MAX_FRAME_SIZE

SPECS = {name: ModelSpec(name=name, backend="echo") for name in ("echo", "echo-b")}


def run(coro):
    return asyncio.run(coro)


async def job(manager: ModelManager, text: str, model: str = "echo", **params) -> tuple[str, list[str]]:
    chunks: list[str] = []
    out = await manager.run(
        model, Job(prompt_id="p", input=text, params=params), chunks.append, asyncio.Event()
    )
    return out.text, chunks


def test_a_job_streams_its_chunks_and_the_model_stays_warm() -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            text, chunks = await job(manager, "one two three")
            assert text == "one two three"
            assert "".join(chunks) == "one two three" and len(chunks) == 3
            assert manager.loaded("echo")
            await job(manager, "again")
            assert manager.loads == 1  # warm: not loaded twice
        finally:
            manager.close()

    run(scenario())


def test_keep_alive_expiry_unloads_the_worker() -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS, Settings(keep_alive_s=0.2))
        try:
            await job(manager, "x")
            pid = manager.workers["echo"].process.pid
            assert manager.expire() == []
            await asyncio.sleep(0.25)
            assert manager.expire() == ["echo"]
            assert not manager.loaded("echo")
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # the worker process is gone
        finally:
            manager.close()

    run(scenario())


def test_lru_eviction_with_max_loaded_one() -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS, Settings(max_loaded=1))
        try:
            for model in ("echo", "echo-b", "echo", "echo-b"):
                await job(manager, "x", model)
                assert list(manager.workers) == [model]
            assert manager.loads == 4
        finally:
            manager.close()

    run(scenario())


@pytest.mark.parametrize(
    ("crash", "says"),
    [
        (True, "was killed by SIGKILL: most often the kernel's out-of-memory killer"),
        ("SIGSEGV", "was killed by SIGSEGV (segmentation fault): a crash in the echo backend's native code"),
    ],
)
def test_a_worker_killed_by_a_signal_fails_the_job_in_words_and_is_replaced(crash: object, says: str) -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            with pytest.raises(WorkerDied, match=re.escape(f"the worker for echo {says}")) as died:
                await job(manager, "x", crash=crash)
            assert not died.value.permanent
            assert not manager.loaded("echo")
            assert (await job(manager, "after"))[0] == "after"  # a fresh worker
            assert manager.serving() == SPECS
        finally:
            manager.close()

    run(scenario())


def test_a_sigill_in_a_run_that_loaded_is_counted_like_any_crash() -> None:
    # It may depend on the prompt: one prompt must not take the model off every node.
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            with pytest.raises(
                WorkerDied, match=r"the worker for echo was killed by SIGILL \(illegal"
            ) as died:
                await job(manager, "x", crash="SIGILL")
            assert not died.value.permanent and manager.serving() == SPECS
            assert (await job(manager, "after"))[0] == "after"
        finally:
            manager.close()

    run(scenario())


def test_a_worker_that_dies_by_sigill_while_loading_makes_the_model_unusable_until_restart() -> None:
    # llama.cpp built for another CPU dies at its first decode, which is the warm-up of the load.
    specs = {
        "bad": ModelSpec(name="bad", backend="echo", options={"crash_on_load": "SIGILL"}),
        "echo": SPECS["echo"],
    }

    async def scenario() -> None:
        manager = ModelManager(specs)
        try:
            with pytest.raises(ModelUnusable) as raised:
                await job(manager, "x", model="bad")
            assert str(raised.value) == (
                "the worker for bad was killed by SIGILL (illegal instruction): the echo backend was "
                "built for CPU features this machine cannot run; see README (CPU builds)"
            )
            assert list(manager.serving()) == ["echo"] and "bad" not in manager.workers
            loads = manager.loads
            with pytest.raises(ModelUnusable, match="SIGILL"):  # a job claimed before it died
                await job(manager, "y", model="bad")
            assert manager.loads == loads  # no new worker was started for it
            assert (await job(manager, "other"))[0] == "other"  # other models run
        finally:
            manager.close()

    run(scenario())


def test_the_death_messages_name_the_signal_and_its_usual_cause() -> None:
    llama = ModelSpec(name="gemma3-270m", backend="llama")
    assert str(died(llama, -signal.SIGILL)) == (
        "the worker for gemma3-270m was killed by SIGILL (illegal instruction): llama-cpp-python was "
        "built for CPU features this machine cannot run; see README (CPU builds)"
    )
    assert str(died(llama, -signal.SIGKILL)) == (
        "the worker for gemma3-270m was killed by SIGKILL: most often the kernel's out-of-memory "
        "killer (see `dmesg`); a smaller model, a smaller n_ctx or a lower max_loaded needs less memory"
    )
    assert str(died(llama, -signal.SIGSEGV)) == (
        "the worker for gemma3-270m was killed by SIGSEGV (segmentation fault): a crash in "
        "llama-cpp-python's native code, or a damaged model file"
    )
    assert str(died(llama, -signal.SIGTERM)) == "the worker for gemma3-270m was killed by SIGTERM"
    assert str(died(llama, 1)) == "the worker for gemma3-270m exited unexpectedly (exit code 1)"
    assert died(llama, -signal.SIGILL, loading=True).permanent
    assert (
        not died(llama, -signal.SIGILL).permanent and not died(llama, -signal.SIGSEGV, loading=True).permanent
    )


def test_a_failing_job_reports_its_error_and_keeps_the_worker() -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            with pytest.raises(ExecutorError, match="boom"):
                await job(manager, "x", fail="boom")
            assert manager.loaded("echo") and manager.loads == 1
        finally:
            manager.close()

    run(scenario())


def test_cancel_stops_a_running_job_at_once() -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            await job(manager, "warm")
            cancel = asyncio.Event()
            running = asyncio.ensure_future(
                manager.run(
                    "echo",
                    Job(prompt_id="p", input="a b c d e", params={"delay": 30}),
                    lambda c: None,
                    cancel,
                )
            )
            await asyncio.sleep(0.3)
            started = time.monotonic()
            cancel.set()
            with pytest.raises(Cancelled):
                await running
            assert time.monotonic() - started < 5.0  # not the job's 30 s (the bound is loose for a busy CI)
        finally:
            manager.close()

    run(scenario())


def test_a_job_whose_chunks_come_slowly_gets_time_to_stop_after_a_cancel() -> None:
    """Like a diffusion step on a CPU: each word takes longer than the base grace, deaf to
    cancel; the job still stops by itself and the model stays loaded."""

    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            cancel = asyncio.Event()
            slow = Job(prompt_id="p", input="a b c d", params={"busy": CANCEL_GRACE_S + 0.4})
            with pytest.raises(Cancelled, match=r"^cancelled$"):  # not "(worker stopped)"
                await manager.run("echo", slow, lambda chunk: cancel.set(), cancel)
            assert manager.loaded("echo")
        finally:
            manager.close()

    run(scenario())


def test_a_worker_that_ignores_cancel_is_killed_after_the_grace() -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            cancel = asyncio.Event()
            stuck = Job(prompt_id="p", input="x", params={"hang": 30})
            running = asyncio.ensure_future(manager.run("echo", stuck, lambda c: None, cancel))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            cancel.set()
            with pytest.raises(Cancelled, match="worker stopped"):
                await running
            assert time.monotonic() - started < 5.0  # not the job's 30 s (the bound is loose for a busy CI)
            assert not manager.loaded("echo")
        finally:
            manager.close()

    run(scenario())


def test_an_unknown_model_or_backend_is_a_clear_error() -> None:
    async def scenario() -> None:
        manager = ModelManager({"odd": ModelSpec(name="odd", backend="nope")})
        try:
            with pytest.raises(ExecutorError, match="does not serve"):
                await job(manager, "x", "missing")
            with pytest.raises(ExecutorError, match="no executor 'nope'"):
                await job(manager, "x", "odd")
        finally:
            manager.close()

    run(scenario())


def test_an_idle_worker_killed_from_outside_is_replaced() -> None:
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            await job(manager, "x")
            os.kill(manager.workers["echo"].process.pid, signal.SIGKILL)
            manager.workers["echo"].process.join(5)
            assert (await job(manager, "y"))[0] == "y"  # an idle worker that died is replaced
            assert manager.loads == 2
        finally:
            manager.close()

    run(scenario())


def test_a_ram_budget_evicts_the_least_recently_used_model() -> None:
    async def scenario(budget: int) -> list[str]:
        manager = ModelManager(SPECS, Settings(max_loaded=4, memory_budget=budget))
        try:
            await job(manager, "x", model="echo")
            await job(manager, "y", model="echo-b")
            return [name for name in SPECS if manager.loaded(name)]
        finally:
            manager.close()

    assert run(scenario(1)) == ["echo-b"]  # each worker alone is over budget: only the newest stays
    assert run(scenario(parse_size("64G"))) == ["echo", "echo-b"]


def test_sizes_read_as_users_write_them() -> None:
    assert [parse_size(v) for v in (1024, "2K", "512M", "1.5G", "1GiB", " 3 MB ")] == [
        1024,
        2048,
        512 << 20,
        3 << 29,
        1 << 30,
        3 << 20,
    ]
    for bad in ("lots", "-1G", "1X", True, -5):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)


GPUS = Gpus.find()


@pytest.mark.skipif(GPUS is None, reason="needs an NVIDIA GPU, its driver and nvidia-ml-py (NVML)")
def test_a_gpu_memory_budget_evicts_the_least_recently_used_model() -> None:
    """Two models holding 1 GiB of GPU memory each under a 1.5 GiB budget: loading the second
    unloads the first, as NVML counts it. Run on the lent GPU machine (see the closing note)."""
    specs = {n: ModelSpec(name=n, backend="echo", options={"gpu_memory": "1G"}) for n in ("gpu-a", "gpu-b")}

    async def scenario() -> None:
        manager = ModelManager(specs, Settings(max_loaded=4, gpu_memory_budget=parse_size("1.5G")))
        assert manager.gpus is not None
        try:
            await job(manager, "x", model="gpu-a")
            a = manager.workers["gpu-a"].process.pid
            assert manager.gpus.used_by([a]) >= 1 << 30
            await job(manager, "y", model="gpu-b")
            assert not manager.loaded("gpu-a") and manager.loaded("gpu-b")
            assert manager.gpus.used_by([a]) == 0
        finally:
            manager.close()

    run(scenario())


def test_a_worker_s_whole_output_comes_back_and_bad_tool_calls_fail_the_job() -> None:
    # The worker sends the executor's Output itself: a field added to it needs no IPC change.
    async def scenario() -> None:
        manager = ModelManager(SPECS)
        try:
            out = await manager.run("echo", Job(prompt_id="p", input="a b"), lambda _: None, asyncio.Event())
            assert (out.text, out.finish) == ("a b", "stop")
        finally:
            manager.close()

    run(scenario())
    good = Output(text="", tool_calls=(ToolCall(id="call_1", name="weather", arguments="{}"),))
    assert checked_output(good) == good
    # A model may invent a tool name: recorded, it would make the result unreadable everywhere.
    for bad in (ToolCall(id="call_1", name="no spaces allowed", arguments="{}"), "not a call"):
        with pytest.raises(ExecutorError, match="tool calls or logprobs the log cannot hold"):
            checked_output(Output(text="", tool_calls=(bad,)))  # type: ignore[arg-type]
    with pytest.raises(ExecutorError, match="returned a dict, not an Output"):
        checked_output({"text": "x"})


def test_logprobs_of_no_probability_are_written_as_openai_writes_them() -> None:
    # llama.cpp gives -inf for a masked token: kept, it made the non-streaming answer a 500
    # (starlette writes no Infinity) and a stream's JSON unreadable; the log now refuses it.
    def entry(logprob: float, alternative: float) -> TokenLogprob:
        return TokenLogprob(token="a", logprob=logprob, top=(("b", alternative),))  # noqa: S106

    out = Output(text="a", logprobs=(entry(float("-inf"), float("nan")),))
    assert checked_output(out).logprobs == (entry(-9999.0, -9999.0),)
    fine = Output(text="a", logprobs=(entry(-0.5, -1.0),))
    assert checked_output(fine) == fine


def test_logprobs_are_kept_only_as_far_as_a_result_fits_in_an_envelope() -> None:
    # 32,768 tokens with 20 alternatives each: 19.6 MiB, over the 16 MiB a peer takes of one
    # envelope and the 8 MiB of a frame; such a result could never leave its node.
    def entry(i: int) -> TokenLogprob:
        alternatives = tuple((f" tok{k}", -k - 0.123456789012345) for k in range(20))
        return TokenLogprob(token=f" word{i}", logprob=-0.98765432109876, top=alternatives)

    many = tuple(entry(i) for i in range(MAX_LOGPROBS))
    kept = checked_output(Output(text="x", logprobs=many)).logprobs
    assert 0 < len(kept) < len(many) and kept == many[: len(kept)]  # the first tokens, in order
    encoded = [json.dumps(t.to_wire(), separators=(",", ":"), ensure_ascii=False) for t in kept]
    assert sum(map(len, encoded)) <= MAX_LOGPROBS_BYTES < MAX_FRAME_SIZE // 2
    few = many[:100]
    assert checked_output(Output(text="x", logprobs=few)).logprobs == few
