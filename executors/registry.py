"""Executors by backend name, through the entry-point group ``syncq.executors``."""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Executor, ExecutorError

GROUP = "syncq.executors"


def backends() -> list[str]:
    """Every installed backend name."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def create(backend: str) -> Executor:
    """A new executor of ``backend``. Raises ``ExecutorError`` if none is installed or it
    cannot be imported (for example llama without the ``llm`` extra)."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == backend]
    if not found:
        raise ExecutorError(f"no executor {backend!r} is installed (have: {', '.join(backends())})")
    try:
        factory = found[0].load()
    except ImportError as exc:
        raise ExecutorError(f"executor {backend!r} cannot load: {exc}") from exc
    executor: Executor = factory()
    return executor
