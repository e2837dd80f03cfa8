"""``llama``: GGUF language models through llama-cpp-python (the ``llm`` extra).

Params: ``mode`` (``chat``, the default, formats the prompt as one user turn with the model's
chat template; ``complete`` continues the raw text), ``max_tokens`` (default 128),
``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ``repeat_penalty``.

Options (models.toml): ``n_ctx`` (2048), ``n_threads`` (the physical cores less one, at least 1:
``cpu.default_threads``), ``n_gpu_layers`` (-1: all, where the build has a GPU), ``n_batch``,
``flash_attn``, ``use_extra_bufts`` (llama.cpp's AMX and weight-repacking buffers; on by
default, off by itself where the CPU lists AMX but cannot run it: ``cpu``).

A GGUF without a chat template (gemma3-270m's, for one) gets the correct template of its model
family, read from ``general.architecture``; llama-cpp-python would otherwise fall back to a
generic format the model was never trained on.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import cpu
from .base import ExecutorError, Job, ModelSpec, Output

# general.architecture -> llama-cpp-python chat format, for GGUFs that carry no template
FAMILY_FORMATS = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "llama": "llama-3",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "phi3": "chatml",
    "mistral": "mistral-instruct",
}
SAMPLING = ("temperature", "top_p", "top_k", "seed", "repeat_penalty")


def model_path(spec: ModelSpec) -> Path:
    """The GGUF file of a spec; a bundled package is assembled into the home first."""
    if not spec.path.startswith("package:"):
        return Path(spec.path)
    module = importlib.import_module(spec.path.split(":", 1)[1])
    target = Path(str(spec.options["cache_dir"])) / module.MODEL_NAME
    return Path(module.assemble(output_path=target))


@contextlib.contextmanager
def model_params(**fields: object) -> Iterator[None]:
    """Set fields of llama.cpp's model params for the ``Llama`` built inside the block.

    ``Llama()`` takes no argument for some of them (``use_extra_bufts``, for one), and it loads
    the model in its constructor from ``llama_model_default_params()``: the defaults are what
    can be changed, for as long as the constructor runs (a worker loads one model, on one
    thread). Raises ``ExecutorError`` if this llama-cpp-python has no such field.
    """
    import llama_cpp.llama_cpp as raw

    known = {name for name, *_ in raw.llama_model_params._fields_}
    missing = sorted(set(fields) - known)
    if missing:
        raise ExecutorError(f"this llama-cpp-python has no model param {', '.join(missing)}: upgrade it")
    original = raw.llama_model_default_params

    def patched() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    raw.llama_model_default_params = patched
    try:
        yield
    finally:
        raw.llama_model_default_params = original


class LlamaExecutor:
    """One GGUF model in llama.cpp."""

    def __init__(self, amx: Callable[[], cpu.AmxCheck] = cpu.check_amx) -> None:
        self.llm: Any = None
        self.notes: list[str] = []  # what the load decided, for the node log (worker.main)
        self._amx = amx  # what this CPU does with AMX (a test gives another CPU's answer)

    def load(self, spec: ModelSpec) -> None:
        """Load the GGUF. Raises ``ExecutorError`` if the file is missing or not a model."""
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ExecutorError("llama-cpp-python is not installed: pip install 'syncq[llm]'") from exc
        path = model_path(spec)
        if not path.is_file():
            raise ExecutorError(f"model file {path} is missing")
        options = {
            k: v
            for k, v in spec.options.items()
            if k in ("n_ctx", "n_threads", "n_gpu_layers", "n_batch", "flash_attn")
        }
        options.setdefault("n_ctx", 2048)
        # Every layer on the GPU when llama-cpp-python was built with one (CUDA, Metal); a CPU
        # build ignores it. A model too big for the card sets a smaller n_gpu_layers.
        options.setdefault("n_gpu_layers", -1)
        options.setdefault("n_threads", cpu.default_threads(cpu.physical_cores()))
        extra = spec.options.get("use_extra_bufts")
        if extra is None:
            extra = self._extra_buffer_types()
        try:
            with model_params(**({} if extra else {"use_extra_bufts": False})):
                self.llm = Llama(model_path=str(path), verbose=False, **options)
        except (ValueError, RuntimeError, OSError) as exc:
            if "llama_context" in str(exc):  # the file is fine: its context did not fit
                raise ExecutorError(
                    f"llama.cpp read {path} but could not allocate a context of {options['n_ctx']} "
                    "tokens: lower n_ctx (or n_gpu_layers, when the GPU is full) in models.toml"
                ) from exc
            raise ExecutorError(f"{path} is not a GGUF model llama.cpp can read: {exc}") from exc
        if "tokenizer.chat_template" not in self.llm.metadata:
            family = self.llm.metadata.get("general.architecture", "")
            self.llm.chat_format = FAMILY_FORMATS.get(family, "chatml")
            self.llm.chat_handler = None

    def _extra_buffer_types(self) -> bool:
        """Whether llama.cpp may use its extra buffer types (AMX, weight repacking): not where
        the CPU lists AMX but traps it (``cpu``), which would kill the first decode."""
        amx = self._amx()
        if amx.traps:
            self.notes.append(f"{amx.detail}: llama.cpp loads without extra buffer types (AMX, repacking)")
        return not amx.traps

    def warm_up(self) -> None:
        """One token, so the first real prompt does not pay for lazy initialisation."""
        self.llm.create_completion("Hi", max_tokens=1)

    def run(self, job: Job, emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Output:
        """Generate, emitting text as it comes; stops early when cancelled."""
        params = job.params
        sampling = {k: params[k] for k in SAMPLING if k in params}
        stop = [str(params["stop"])] if "stop" in params else None
        max_tokens = int(params.get("max_tokens", 128))
        if params.get("mode", "chat") == "chat":
            stream = self.llm.create_chat_completion(
                [{"role": "user", "content": job.input}],
                stream=True,
                max_tokens=max_tokens,
                stop=stop,
                **sampling,
            )
            pieces = (c["choices"][0]["delta"].get("content") or "" for c in stream)
        else:
            stream = self.llm.create_completion(
                job.input, stream=True, max_tokens=max_tokens, stop=stop, **sampling
            )
            pieces = (c["choices"][0]["text"] for c in stream)
        text, chunks = self._collect(pieces, emit, cancelled)
        # A stream chunk is one generated token, except text held back for a possible stop string
        # or a split UTF-8 character, which comes later in one chunk: a slight undercount then.
        # Tokenizing the text again is worse (64 generated tokens came back as 61).
        usage = {"completion_tokens": chunks, "prompt_tokens": self._count(job.input)}
        return Output(text=text, usage=usage)

    def _collect(
        self, pieces: Iterator[str], emit: Callable[[str], None], cancelled: Callable[[], bool]
    ) -> tuple[str, int]:
        out: list[str] = []
        for piece in pieces:
            if cancelled():
                break
            if piece:
                out.append(piece)
                emit(piece)
        return "".join(out), len(out)

    def _count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False))

    def unload(self) -> None:
        """Free the model."""
        if self.llm is not None:
            self.llm.close()
            self.llm = None
