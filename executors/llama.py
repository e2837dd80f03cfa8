"""``llama``: GGUF language models through llama-cpp-python (the ``llm`` extra).

Params: ``mode`` (``chat``, the default, renders the prompt's conversation, or its text as one
user turn, through the model's chat template: ``llama_chat``; ``complete`` continues the raw
text; ``embed`` gives one normalized vector per text), ``max_tokens`` (default 128; reaching it
ends with finish "length"), ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed``,
``stop`` (with the prompt's ``llm.stop`` strings), ``repeat_penalty``, ``frequency_penalty``,
``presence_penalty``, ``logprobs`` and ``top_logprobs`` (only for a model loaded with
``logits_all = true``). The prompt's ``llm`` field adds tools and a JSON output format,
enforced with llama.cpp grammars (``llama_chat``).

Options (models.toml): ``n_ctx`` (2048), ``n_threads`` (the physical cores less one, at least 1:
``cpu.default_threads``), ``n_gpu_layers`` (-1: all, where the build has a GPU), ``n_batch``,
``flash_attn``, ``use_extra_bufts`` (llama.cpp's AMX and weight-repacking buffers; on by
default, off by itself where the CPU lists AMX but cannot run it: ``cpu``), ``logits_all``
(keep every token's logits, which logprobs need: n_ctx x vocabulary floats of memory, 2 GiB
for gemma3-270m at n_ctx 2048, so off by default), and defaults for any sampling param
(``temperature = 0.7``...), used where a prompt sets none.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncq.chat import LlmInput, ToolCall

from . import cpu, llama_chat, llama_sampling
from .base import ExecutorError, Job, ModelSpec, Output
from .llama_chat import FAMILY_FORMATS  # noqa: F401 - where it lived before llama_chat

SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
)
LOAD_OPTIONS = ("n_ctx", "n_threads", "n_gpu_layers", "n_batch", "flash_attn", "logits_all")
EMBED_BATCH = 512  # tokens per text at most for embeddings (longer texts are cut)


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


@dataclass(slots=True, kw_only=True)
class _Stream:
    """What came out of one generation."""

    text: list[str] = field(default_factory=list)
    chunks: int = 0
    finish: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    streamed: bool = True  # the text went out through emit (not held back as a tool call)


class LlamaExecutor:
    """One GGUF model in llama.cpp."""

    def __init__(self, amx: Callable[[], cpu.AmxCheck] = cpu.check_amx) -> None:
        self.llm: Any = None
        self.embedder: Any = None  # the same GGUF in embedding mode, loaded on the first embed job
        self.notes: list[str] = []  # what the load decided, for the node log (worker.main)
        self._amx = amx  # what this CPU does with AMX (a test gives another CPU's answer)
        self.template: llama_chat.Template | None = None
        self._load: dict[str, Any] = {}  # how the model was loaded, for the embedder
        self._defaults: dict[str, Any] = {}  # sampling params of the spec's options

    def load(self, spec: ModelSpec) -> None:
        """Load the GGUF. Raises ``ExecutorError`` if the file is missing or not a model."""
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ExecutorError("llama-cpp-python is not installed: pip install 'syncq[llm]'") from exc
        path = model_path(spec)
        if not path.is_file():
            raise ExecutorError(f"model file {path} is missing")
        options = {k: v for k, v in spec.options.items() if k in LOAD_OPTIONS}
        options.setdefault("n_ctx", 2048)
        # Every layer on the GPU when llama-cpp-python was built with one (CUDA, Metal); a CPU
        # build ignores it. A model too big for the card sets a smaller n_gpu_layers.
        options.setdefault("n_gpu_layers", -1)
        options.setdefault("n_threads", cpu.default_threads(cpu.physical_cores()))
        extra = spec.options.get("use_extra_bufts")
        if extra is None:
            extra = self._extra_buffer_types()
        self._load = {"path": path, "options": options, "extra": bool(extra)}
        self._defaults = {k: spec.options[k] for k in SAMPLING if k in spec.options}
        self.llm = self._open(Llama, path, options, bool(extra))
        llama_sampling.lazy(self.llm)  # grammars checked on the chosen token first: 3x faster
        model = self.llm._model
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self.template = llama_chat.template_of(
            self.llm.metadata,
            eos=model.token_get_text(eos) if eos != -1 else "",
            bos=model.token_get_text(bos) if bos != -1 else "",
            eos_id=eos,
        )

    @staticmethod
    def _open(llama: Any, path: Path, options: Mapping[str, Any], extra: bool) -> Any:
        try:
            with model_params(**({} if extra else {"use_extra_bufts": False})):
                return llama(model_path=str(path), verbose=False, **options)
        except (ValueError, RuntimeError, OSError) as exc:
            if "llama_context" in str(exc):  # the file is fine: its context did not fit
                raise ExecutorError(
                    f"llama.cpp read {path} but could not allocate a context of {options['n_ctx']} "
                    "tokens: lower n_ctx (or n_gpu_layers, when the GPU is full) in models.toml"
                ) from exc
            raise ExecutorError(f"{path} is not a GGUF model llama.cpp can read: {exc}") from exc

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
        """Generate, emitting text as it comes; stops early when cancelled. A tool call is
        returned in ``Output.tool_calls`` and never emitted as text."""
        params = job.params
        mode = params.get("mode", "chat")
        if mode == "embed":
            return self._embed(job)
        top = self._logprobs(params)
        sampling = self._defaults | {k: params[k] for k in SAMPLING if k in params}
        stop = stops(params, job.llm)
        plan, tokens = self._prompt(job, mode)
        stop += [s for s in plan.stop if s not in stop]
        grammar, calls = plan.grammar, plan.calls
        tools = job.llm.tools if job.llm is not None else ()
        if "seed" in params:
            # Reusing the evaluated prefix of the last prompt gives logits that differ from a
            # whole evaluation in the last bits, enough to change a sample: a seed repeats only
            # from a clean state.
            self.llm.reset()
        max_tokens = int(params.get("max_tokens", 128))
        head, prompt = "", tokens
        if plan.first is not None:  # tool_choice auto: the first token decides call or text
            head = self._first(tokens, plan.first, sampling)
            if head.startswith("{"):
                grammar, calls = plan.call, "always"
            else:  # a text answer: it goes on from its first token, with no grammar
                calls = "never"
                emit(head)
                if max_tokens == 1:
                    return Output(
                        text=head,
                        usage={"completion_tokens": 1, "prompt_tokens": len(tokens)},
                        finish="length",
                    )
                prompt = tokens + self.llm.tokenize(head.encode(), add_bos=False, special=False)
                max_tokens -= 1
        stream = self.llm.create_completion(
            prompt,
            stream=True,
            max_tokens=max_tokens,
            stop=stop or None,
            grammar=self._grammar(grammar),
            logprobs=top,
            **sampling,
        )
        out = self._collect(stream, emit, cancelled, calls, self.template is not None and self.template.tools)
        if prompt is not tokens:
            out.text.insert(0, head)
            out.chunks += 1
        text = "".join(out.text)
        # A stream chunk is one generated token, except text held back for a possible stop string
        # or a split UTF-8 character, which comes later in one chunk: a slight undercount then.
        # Tokenizing the text again is worse (64 generated tokens came back as 61).
        usage = {"completion_tokens": out.chunks, "prompt_tokens": len(tokens)}
        logprobs = tuple(out.logprobs)
        call = None if out.streamed else llama_chat.parse_call(text, tools)
        if call is not None:
            tool_call = ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=call[0], arguments=call[1])
            return Output(
                text="", usage=usage, finish="tool_calls", tool_calls=(tool_call,), logprobs=logprobs
            )
        if not out.streamed and text:
            emit(text)  # held back as a possible call, and it was not one (cut by max_tokens)
        return Output(text=text, usage=usage, finish=out.finish, logprobs=logprobs)

    def _prompt(self, job: Job, mode: str) -> tuple[llama_chat.Plan, list[int]]:
        """The plan (stops, grammar, tool calls) and the prompt's tokens. Raises
        ``ExecutorError`` for a prompt longer than the context."""
        if mode == "chat":
            assert self.template is not None
            plan = llama_chat.plan(self.template, job.input, job.llm)
            tokens = self.llm.tokenize(plan.prompt.encode(), add_bos=not plan.added_special, special=True)
        else:
            # As create_completion tokenizes a text prompt, so prompt_tokens counts what it reads.
            plan = llama_chat.Plan(prompt=job.input, added_special=False)
            tokens = self.llm.tokenize(
                job.input.encode(), add_bos=self.llm._model.add_bos_token(), special=True
            )
        if len(tokens) >= self.llm.n_ctx():
            raise ExecutorError(
                f"the prompt takes {len(tokens)} tokens and the model's context holds {self.llm.n_ctx()}: "
                "shorten the conversation, or raise n_ctx in models.toml"
            )
        return plan, tokens

    def _collect(
        self,
        stream: Iterator[Mapping[str, Any]],
        emit: Callable[[str], None],
        cancelled: Callable[[], bool],
        calls: str,
        template_tools: bool,
    ) -> _Stream:
        """Read the stream. Text that is, or may still turn into, a tool call is held back
        (``calls``: always, maybe); once it cannot, it streams. ``finish`` is llama.cpp's
        ("stop", "length"), or "" when cancelled."""
        holding = calls != "never"
        out = _Stream(streamed=not holding)
        for chunk in stream:
            if cancelled():
                out.finish = ""
                break
            choice = chunk["choices"][0]
            piece = choice["text"]
            if choice.get("logprobs"):
                out.logprobs.extend(_token_logprobs(choice["logprobs"]))
            if choice["finish_reason"] is not None:
                out.finish = choice["finish_reason"]
            if not piece:
                continue
            out.chunks += 1
            out.text.append(piece)
            if holding and (calls == "always" or llama_chat.may_be_call("".join(out.text), template_tools)):
                continue
            emit("".join(out.text) if holding else piece)
            holding, out.streamed = False, True
        return out

    def _first(self, tokens: list[int], gbnf: str, sampling: Mapping[str, Any]) -> str:
        """The text of the first token of an answer, sampled under ``gbnf``."""
        first = self.llm.create_completion(tokens, max_tokens=1, grammar=self._grammar(gbnf), **sampling)
        return str(first["choices"][0]["text"])

    def _grammar(self, gbnf: str | None) -> Any:
        if gbnf is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            return LlamaGrammar.from_string(gbnf, verbose=False)
        except ValueError as exc:
            raise ExecutorError(f"llama.cpp could not parse the output grammar: {exc}") from exc

    def _logprobs(self, params: Mapping[str, Any]) -> int | None:
        """create_completion's ``logprobs`` (how many alternatives per token), or None."""
        if not params.get("logprobs"):
            return None
        if not self._load.get("options", {}).get("logits_all"):
            raise ExecutorError(
                "logprobs need the model loaded with every token's logits: set logits_all = true "
                "in its [models.NAME] table of models.toml (it costs n_ctx x vocabulary floats of memory)"
            )
        return int(params.get("top_logprobs", 0))

    def _embed(self, job: Job) -> Output:
        """One normalized vector per text (``llm.inputs``, else the prompt's text), as compact
        JSON. The embedding context is a second ``Llama`` over the same file, made on the first
        embed job: llama.cpp fixes embedding mode when it makes a context, and the weights are
        mapped from the file once for both (mmap), so only the context costs memory, and only
        on a node that is asked for embeddings."""
        texts = list(job.llm.inputs) if job.llm is not None and job.llm.inputs else [job.input]
        if self.embedder is None:
            from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

            load = self._load
            options = dict(load["options"]) | {"embedding": True, "pooling_type": LLAMA_POOLING_TYPE_MEAN}
            options |= {"n_batch": EMBED_BATCH, "n_ubatch": EMBED_BATCH, "logits_all": False}
            self.embedder = self._open(Llama, load["path"], options, load["extra"])
        vectors, count = self.embedder.embed(texts, normalize=True, truncate=True, return_count=True)
        text = json.dumps([[round(float(x), 7) for x in v] for v in vectors], separators=(",", ":"))
        return Output(text=text, usage={"prompt_tokens": int(count), "completion_tokens": 0}, finish="stop")

    def unload(self) -> None:
        """Free the model."""
        for llm in (self.llm, self.embedder):
            if llm is not None:
                llm.close()
        self.llm = self.embedder = None


def stops(params: Mapping[str, Any], llm: LlmInput | None) -> list[str]:
    """Every stop string of a prompt: its ``stop`` param (one string) and ``llm.stop``."""
    found = [str(params["stop"])] if params.get("stop") else []
    return found + [s for s in (llm.stop if llm is not None else ()) if s not in found]


def _token_logprobs(logprobs: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    # llama-cpp-python gives completion-style logprobs (tokens, token_logprobs, top_logprobs
    # dicts); this is OpenAI's chat shape, one entry per token.
    return [
        {
            "token": token,
            "logprob": logprob,
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in (top or {}).items()],
        }
        for token, logprob, top in zip(
            logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=False
        )
    ]
