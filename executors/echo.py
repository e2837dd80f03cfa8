"""``echo``: a deterministic executor for tests and for checking a mesh end to end.

The output is the input, sent word by word, and a copy of each attachment. Params: ``delay``
(seconds spent in total, spread over the words; cancellable), ``busy`` (seconds of work deaf to
cancel before each word, like a diffusion step), ``fail`` (raise with this message instead),
``crash`` (end the worker process by a signal: ``true`` for SIGKILL, or a name such as
``"SIGSEGV"``) and ``hang`` (sleep, deaf to cancel): the last two test isolation.

The knobs (``TEST_KNOBS``) are for tests only: they are refused (``knob_problem``) unless the
process runs for tests (``SYNCQ_TEST_KNOBS=1``, which the test suite sets) and the model is an
echo one. The API, `syncq add` and this executor all ask, so that neither a web caller nor a
prompt synced from another device can hang or crash a user's workers.

Options (models.toml): ``gpu_memory`` (bytes, or a size such as ``"1G"``) makes the model hold
that much GPU memory while loaded, allocated through the CUDA driver, so that the manager's GPU
memory budget can be checked on a machine with a GPU without a GPU build of any backend.
``crash_on_load`` (a signal name) ends the worker by that signal while it loads, as llama.cpp
built for another CPU dies by SIGILL at its first decode.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from syncq.records import TEST_KNOBS

from .base import ExecutorError, Job, ModelSpec, Output
from .memory import parse_size

KNOBS_ENV = "SYNCQ_TEST_KNOBS"


def knobs_enabled(environ: Mapping[str, str]) -> bool:
    """Whether this process runs for tests (``SYNCQ_TEST_KNOBS=1``)."""
    return environ.get(KNOBS_ENV, "") == "1"


def knob_problem(model: str, backend: str | None, params: Mapping[str, object], enabled: bool) -> str | None:
    """Why ``params`` may not be used for ``model`` (of ``backend``, None if not known here):
    a test knob outside tests (``enabled`` false), or on a model that is not echo. None if
    they may."""
    knobs = sorted(TEST_KNOBS & set(params))
    if not knobs:
        return None
    said = (
        f"{', '.join(knobs)} {'is a test knob' if len(knobs) == 1 else 'are test knobs'} of the echo executor"
    )
    if not enabled:
        return f"{said}: refused outside the test suite ({KNOBS_ENV}=1)"
    if backend != "echo" and not (backend is None and model == "echo"):
        return f"{said}, and {model!r} is not an echo model"
    return None


class EchoExecutor:
    """Echoes the prompt."""

    def __init__(self) -> None:
        self._gpu: _CudaBlock | None = None

    def load(self, spec: ModelSpec) -> None:
        """Nothing to load, unless the spec asks to hold GPU memory (or to crash)."""
        if spec.options.get("crash_on_load"):
            _die(spec.options["crash_on_load"])
        if spec.options.get("gpu_memory"):
            self._gpu = _CudaBlock(parse_size(spec.options["gpu_memory"]))

    def run(self, job: Job, emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Output:
        """Emit the input word by word, taking ``delay`` seconds in total. Raises
        ``ExecutorError`` for a test knob outside the test suite."""
        problem = knob_problem("echo", "echo", job.params, knobs_enabled(os.environ))
        if problem is not None:
            raise ExecutorError(problem)
        if job.params.get("crash"):
            _die(job.params["crash"])
        if job.params.get("fail"):
            raise ExecutorError(str(job.params["fail"]))
        if job.params.get("hang"):
            time.sleep(float(job.params["hang"]))  # ignores cancel: the manager must kill it
        words = job.input.split(" ")
        delay = float(job.params.get("delay", 0) or 0)
        step = delay / max(len(words), 1)
        busy = float(job.params.get("busy", 0) or 0)
        for i, word in enumerate(words):
            time.sleep(busy)
            if cancelled():
                break
            emit(word if i == 0 else " " + word)
            _sleep(step, cancelled)
        copies = tuple(shutil.copy(f, Path(job.out_dir) / Path(f).name) for f in job.files if job.out_dir)
        return Output(text=job.input, usage={"words": len(words)}, files=copies, finish="stop")

    def unload(self) -> None:
        """Free the GPU memory, if any (ending the process frees it too)."""
        self._gpu = None


def _die(how: object) -> None:
    """End this process by a signal: SIGKILL for ``True``, else the one named."""
    number = signal.SIGKILL if how is True else signal.Signals[str(how).upper()]
    if number is not signal.SIGKILL:
        signal.signal(number, signal.SIG_DFL)  # a handler (faulthandler's) must not catch it
    signal.raise_signal(number)
    os.kill(os.getpid(), signal.SIGKILL)  # a signal that does not kill by default


def _sleep(seconds: float, cancelled: Callable[[], bool]) -> None:
    """Sleep, waking every 20 ms to see whether the job was cancelled."""
    end = time.monotonic() + seconds
    while not cancelled() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.02))


class _CudaBlock:
    """GPU memory held through the CUDA driver API (libcuda, shipped with the NVIDIA driver)."""

    def __init__(self, size: int) -> None:
        try:
            cuda = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise ExecutorError(f"gpu_memory needs an NVIDIA driver: {exc}") from exc
        context, pointer = ctypes.c_void_p(), ctypes.c_uint64()
        for step, status in (
            ("cuInit", lambda: cuda.cuInit(0)),
            ("cuCtxCreate", lambda: cuda.cuCtxCreate_v2(ctypes.byref(context), 0, 0)),
            ("cuMemAlloc", lambda: cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(size))),
        ):
            code = status()
            if code != 0:
                raise ExecutorError(
                    f"cannot hold {size} bytes of GPU memory: {step} returned CUDA error {code}"
                )
        self.size = size
