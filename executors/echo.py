"""``echo``: a deterministic executor for tests and for checking a mesh end to end.

The output is the input, sent word by word, and a copy of each attachment. It does what a chat
model does with the rest of a request, in a way a test can predict (``answer``):

- a conversation (``Job.llm.messages``): the answer is its last user turn;
- ``response_format`` json_object or json_schema: the answer is ``{"echo": text}`` as JSON (it
  follows no schema: echo has no grammar);
- the earliest of the stop strings (``llm.stop`` and the ``stop`` param) cuts the answer
  (finish "stop"); ``max_tokens`` keeps that many words (finish "length");
- tools: with tool_choice ``required`` or a forced tool, one call to that tool (or the first)
  with arguments ``{"text": text}``, an id ``call_`` + a hash of the prompt id, tool and text,
  finish "tool_calls" and no text; with ``auto``, the same call when the last user turn starts
  with "call " and a tool's name, else the answer in text; ``none``: text;
- ``mode=embed``: one unit vector of 8 floats per text (``llm.inputs``, else the input), from
  a hash of the text, as compact JSON ``[[...], ...]``.

Usage counts whitespace-separated words: ``prompt_tokens`` over every turn's content (or the
input, or the texts to embed), ``completion_tokens`` over the answer. Params: ``delay``
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
import hashlib
import json
import math
import os
import re
import shutil
import signal
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from syncq.chat import LlmInput, Tool, ToolCall, shown_text
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
        """Emit the answer (``answer``) word by word, taking ``delay`` seconds in total; a tool
        call emits nothing. Raises ``ExecutorError`` for a test knob outside the test suite."""
        problem = knob_problem("echo", "echo", job.params, knobs_enabled(os.environ))
        if problem is not None:
            raise ExecutorError(problem)
        if job.params.get("crash"):
            _die(job.params["crash"])
        if job.params.get("fail"):
            raise ExecutorError(str(job.params["fail"]))
        if job.params.get("hang"):
            time.sleep(float(job.params["hang"]))  # ignores cancel: the manager must kill it
        reply = answer(job)
        words = [] if reply.tool_calls else reply.text.split(" ")
        delay = float(job.params.get("delay", 0) or 0)
        step = delay / max(len(words), 1)
        busy = float(job.params.get("busy", 0) or 0)
        for i, word in enumerate(words):
            time.sleep(busy)
            if cancelled():
                break
            emit(word if i == 0 else " " + word)
            _sleep(step, cancelled)
        copies = tuple(
            str(shutil.copy(f, Path(job.out_dir) / Path(f).name)) for f in job.files if job.out_dir
        )
        return Output(
            text=reply.text, usage=reply.usage, files=copies, finish=reply.finish, tool_calls=reply.tool_calls
        )

    def unload(self) -> None:
        """Free the GPU memory, if any (ending the process frees it too)."""
        self._gpu = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """What echo answers a job (``answer``), before it is streamed."""

    text: str
    finish: str
    usage: dict[str, int]
    tool_calls: tuple[ToolCall, ...] = ()


def answer(job: Job) -> Reply:
    """Echo's answer to ``job``, as the module's docstring tells; deterministic."""
    llm = job.llm or LlmInput()
    if job.params.get("mode") == "embed":
        texts = llm.inputs or (job.input,)
        vectors = [_vector(text) for text in texts]
        usage = {"prompt_tokens": _words(texts), "completion_tokens": 0}
        return Reply(text=json.dumps(vectors, separators=(",", ":")), finish="", usage=usage)
    text = shown_text(llm.messages) if llm.messages else job.input
    prompt_tokens = _words([m.content for m in llm.messages] if llm.messages else [job.input])
    tool = _called(llm, text)
    if tool is not None:
        arguments = json.dumps({"text": text})
        digest = hashlib.sha256(f"{job.prompt_id}\0{tool.name}\0{arguments}".encode()).hexdigest()
        call = ToolCall(id=f"call_{digest[:16]}", name=tool.name, arguments=arguments)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _words([arguments])}
        return Reply(text="", finish="tool_calls", usage=usage | _total(usage), tool_calls=(call,))
    if llm.format is not None:
        text = json.dumps({"echo": text})
    text, finish = _cut(text, [*llm.stop, *_param_stop(job)], job.params.get("max_tokens"))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _words([text])}
    return Reply(text=text, finish=finish, usage=usage | _total(usage))


def _called(llm: LlmInput, text: str) -> Tool | None:
    """The tool echo calls, if any: the forced one, the first when one is required, or under
    ``auto`` the one the text names (``call NAME ...``; the longest name that fits)."""
    if not llm.wants_tools:
        return None
    if llm.forced_tool:
        # chat.check saw that it is offered; a Job built by hand may not have been checked.
        return next((t for t in llm.tools if t.name == llm.forced_tool), llm.tools[0])
    if llm.tool_choice == "required":
        return llm.tools[0]
    named = [t for t in llm.tools if re.match(rf"call {re.escape(t.name)}(\s|$)", text)]
    return max(named, key=lambda t: len(t.name), default=None)


def _cut(text: str, stops: Sequence[str], max_tokens: object) -> tuple[str, str]:
    """The text cut at its earliest stop string, then to ``max_tokens`` words, and why it
    ended: "length" when the words ran out first, else "stop"."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    if found:
        text = text[: min(found)]
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        if len(ends) > max_tokens:
            return text[: ends[max_tokens - 1]], "length"
    return text, "stop"


def _param_stop(job: Job) -> list[str]:
    stop = job.params.get("stop")
    return [stop] if isinstance(stop, str) and stop else []


def _words(texts: Sequence[str]) -> int:
    return sum(len(text.split()) for text in texts)


def _total(usage: Mapping[str, int]) -> dict[str, int]:
    return {"total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}


def _vector(text: str) -> list[float]:
    """A unit vector of 8 floats that only ``text`` maps to (a hash: no meaning in it)."""
    raw = struct.unpack("<8I", hashlib.sha256(text.encode()).digest())
    values = [x / 2**31 - 1.0 for x in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


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
