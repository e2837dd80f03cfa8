"""syncq: run AI prompts across all of one person's devices, end-to-end encrypted.

The library lives here: a pure core (``ids``, ``yjs``, ``crypto``, ``records``, ``lifecycle``,
``log``, ``errors``) beside its local storage (``store``, ``keys``, ``space``). Start with
``syncq.space.Space``. This module imports nothing heavy, so that the CLI starts fast.
"""

__version__ = "0.1.0"
