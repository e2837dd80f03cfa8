"""The executor interface: one backend (echo, llama, ...) that loads a model and runs prompts.

``Executor.run`` is synchronous and blocking; it runs inside a worker subprocess (``worker``),
never on the node's event loop, so a native crash or an out-of-memory kill takes down the worker
and not the node. Executors are found through the entry-point group ``syncq.executors``
(``registry``); the built-ins are registered the same way, in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncq.chat import LlmInput, ToolCall


class ExecutorError(Exception):
    """A job or a model load failed; the message says why (it becomes the result's error)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A model as configured or discovered: what the node advertises and loads."""

    name: str
    backend: str
    path: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    size: int = 0  # bytes on disk, 0 if unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One prompt to run."""

    prompt_id: str
    input: str
    params: Mapping[str, Any] = field(default_factory=dict)
    # The prompt's attachments, decrypted into the job's folder before the run (in order).
    files: tuple[str, ...] = ()
    # An empty folder for output files; the executor returns the paths it wrote in ``Output``.
    out_dir: str = ""
    # An llm prompt's conversation, tools, output format, stop strings, texts to embed.
    llm: LlmInput | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """What a finished job returns."""

    text: str
    usage: Mapping[str, Any] = field(default_factory=dict)
    # Files the run produced, inside ``Job.out_dir``: they become the result's attachments.
    files: tuple[str, ...] = ()
    finish: str = ""  # "stop", "length" (max_tokens reached) or "tool_calls"; "" if unknown
    tool_calls: tuple[ToolCall, ...] = ()
    # With params logprobs (a llama model loaded with logits_all): one entry per generated
    # token, OpenAI's chat shape: {"token", "logprob", "top_logprobs": [{"token", "logprob"}]}.
    logprobs: tuple[Mapping[str, Any], ...] = ()


class Executor(Protocol):
    """A backend. ``load`` once, ``run`` many times (one at a time), ``unload`` at the end."""

    def load(self, spec: ModelSpec) -> None:
        """Load the model. Raises ``ExecutorError`` with a message fit for a user."""
        ...

    def run(self, job: Job, emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Output:
        """Run one job, calling ``emit`` with each chunk of output as it is produced and
        stopping early when ``cancelled()`` turns true. Raises ``ExecutorError``."""
        ...

    def unload(self) -> None:
        """Free the model."""
        ...
