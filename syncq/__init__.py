"""syncq: run AI prompts across all of one person's devices, end-to-end encrypted.

The Python API (``syncq.client``), blocking and asyncio::

    import syncq

    space = syncq.open()
    p = space.add("Why is the sky blue?", model="smollm2-135m")
    print(space.result(p.id, timeout=60).text)

    async with syncq.aopen() as space:
        print((await space.run("Why is the sky blue?", model="smollm2-135m")).text)

    key = syncq.api_key()  # the local HTTP API's key, for OpenAI(api_key=...)

A whole conversation, with ``syncq.Message`` turns or plain dicts::

    p = space.add(model="smollm2-135m", messages=[
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ])

Beneath it, the library: a pure core (``ids``, ``yjs``, ``crypto``, ``records``, ``lifecycle``,
``log``, ``claims``, ``protocol``, ``errors``) beside its local storage (``store``, ``keys``,
``space``). The names below are imported on first use, so that ``import syncq`` (and the CLI)
stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "open": "syncq.client",
    "aopen": "syncq.client",
    "Client": "syncq.client",
    "AsyncClient": "syncq.client",
    "Outcome": "syncq.client",
    "MeshModel": "syncq.client",
    "Status": "syncq.lifecycle",
    "SyncqError": "syncq.errors",
    "UserError": "syncq.errors",
    "WaitTimeout": "syncq.errors",
    "api_key": "syncq.keys",
    "Message": "syncq.chat",
    "ToolCall": "syncq.chat",
    "Tool": "syncq.chat",
    "OutputFormat": "syncq.chat",
    "LlmInput": "syncq.chat",
}

__all__ = [
    "AsyncClient",
    "Client",
    "LlmInput",
    "MeshModel",
    "Message",
    "Outcome",
    "OutputFormat",
    "Status",
    "SyncqError",
    "Tool",
    "ToolCall",
    "UserError",
    "WaitTimeout",
    "__version__",
    "aopen",
    "api_key",
    "open",
]

if TYPE_CHECKING:
    from syncq.chat import LlmInput, Message, OutputFormat, Tool, ToolCall
    from syncq.client import AsyncClient, Client, MeshModel, Outcome, aopen, open
    from syncq.errors import SyncqError, UserError, WaitTimeout
    from syncq.keys import api_key
    from syncq.lifecycle import Status


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'syncq' has no attribute {name!r}")
