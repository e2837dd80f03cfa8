"""Splitting a run of writes so each fits one envelope (``grouped`` gathers them, ``Space``
adds them); apart from ``grouped`` so that a cold `syncq add` does not import asyncio."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def by_size(items: Sequence[T], size: Callable[[T], int], budget: int) -> Iterator[list[T]]:
    """``items`` in order, in runs of at most ``budget`` bytes by ``size`` (an item larger than
    that alone): a group must still fit an envelope a peer takes (``PROTOCOL.md``'s frame cap)."""
    batch: list[T] = []
    used = 0
    for item in items:
        cost = size(item)
        if batch and used + cost > budget:
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += cost
    if batch:
        yield batch
