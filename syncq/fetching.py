"""Saving a prompt's attachments on this device: the ones not here yet are fetched by this
home's node (``BlobStore.want``), and waiting for them wakes on the attachment store's writes.
``client`` (``result``, ``save_files``) and the CLI use it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from syncq.blobs import BlobRef
from syncq.blobstore import BlobStore
from syncq.errors import BlobUnavailable, WaitTimeout
from syncq.space import Space
from syncq.watch import FolderWatch

SAFETY_S = 1.0  # a look at the store this often even without a change reported (lost events)


def fetch_files(
    space: Space,
    refs: Sequence[BlobRef],
    folder: str | os.PathLike[str],
    *,
    timeout: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Save attachments into ``folder``, asking this home's node to fetch the ones not here yet
    and waiting for them (``progress(bytes here, bytes in all)`` as chunks arrive).

    Raises ``BlobUnavailable`` when chunks are missing and no node runs in this home,
    ``WaitTimeout`` after ``timeout`` seconds (the node goes on fetching), ``BlobError``."""
    check_fetchable(space, refs)
    return fetch_checked(space, refs, folder, timeout=timeout, progress=progress)


def check_fetchable(space: Space, refs: Sequence[BlobRef]) -> None:
    """Raise ``BlobUnavailable`` if some of ``refs`` are not here and no node runs to fetch them.

    Apart from ``fetch_checked``: this reads the store, whose connection belongs to the caller's thread."""
    pending = [ref for ref in refs if not space.blobs.complete(ref)]
    if pending and space.node_running() is None:
        names = ", ".join(ref.name for ref in pending)
        raise BlobUnavailable(
            f"{names}: not on this device yet, and no node runs in {space.paths.root} to fetch "
            "it: start `syncq node`"
        )


def fetch_checked(
    space: Space,
    refs: Sequence[BlobRef],
    folder: str | os.PathLike[str],
    *,
    timeout: float | None,
    progress: Callable[[int, int], None] | None,
) -> list[Path]:
    """``fetch_files`` once ``check_fetchable`` passed; touches only the attachment store (whose
    connection any thread may use) and the keys, so ``AsyncClient`` runs it in a thread."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    total = sum(ref.size for ref in refs)
    pending = [ref for ref in refs if not space.blobs.complete(ref)]
    if pending:
        # Asked and watched through a connection of its own: SQLite's data_version moves only
        # for other connections' commits, and the node that fetches may hold this very Space
        # (its HTTP API shares it): through its own connection, neither would see the other.
        blobs = BlobStore(space.paths.blobs)
        watch = FolderWatch(space.paths.root)
        try:
            for ref in pending:
                blobs.want(ref)
            for _ in watch.moves(blobs.data_version, timeout, safety_s=SAFETY_S):
                here = sum(blobs.stored_bytes(ref.raw_id) for ref in refs)
                if progress is not None:
                    progress(min(here, total), total)
                if all(blobs.complete(ref) for ref in pending):
                    break
        except TimeoutError:
            raise WaitTimeout(
                f"gave up waiting for {', '.join(r.name for r in pending)} after {timeout:g} s; "
                "the node goes on fetching"
            ) from None
        finally:
            watch.close()
            blobs.close()
    if progress is not None:
        progress(total, total)
    return [space.save_file(ref, target) for ref in refs]
