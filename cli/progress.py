"""Attachments in the CLI: sealing files with a progress bar, and saving (fetching) them.

The bar is drawn on stderr when it is a terminal and the file is big enough to take a moment;
scripts (``--json``, a pipe) get no bar and the same result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from syncq.blobs import BlobRef
from syncq.errors import UserError

BAR_FROM_BYTES = 8 * 1024 * 1024
BAR_FROM_COUNT = 2000  # prompts to export: about a second's work


@contextlib.contextmanager
def bar(label: str, total: int, *, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a rich bar, or None when none is wanted."""
    if quiet or total < BAR_FROM_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done, all_: progress.update(task, completed=done, total=all_)


@contextlib.contextmanager
def counter(
    label: str, *, quiet: bool, least: int = BAR_FROM_COUNT
) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback of counted things (prompts exported) that draws a
    rich bar once the total reaches ``least``, or None when none is wanted."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    with contextlib.ExitStack() as stack:
        task: list[Any] = []  # the bar, once a total worth one is known

        def update(done: int, total: int) -> None:
            if not task and total >= least:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

                progress = stack.enter_context(
                    Progress(
                        "{task.description}",
                        BarColumn(),
                        MofNCompleteColumn(),
                        TimeRemainingColumn(),
                        console=Console(stderr=True),
                        transient=True,
                    )
                )
                task.extend([progress, progress.add_task(label, total=total)])
            if task:
                task[0].update(task[1], completed=done, total=total)

        yield update


def attach(space: Any, path: Path, *, quiet: bool) -> BlobRef:
    """Seal a file into the home's attachment store."""
    size = path.stat().st_size if path.is_file() else 0
    with bar(f"sealing {path.name}", size, quiet=quiet) as progress:
        ref: BlobRef = space.attach(path, progress=progress)
    return ref


def save(
    space: Any, refs: Sequence[BlobRef], folder: Path, *, timeout: float | None, quiet: bool, force: bool
) -> list[Path]:
    """Fetch (through the home's node) and save attachments into ``folder``; returns the paths.
    Refuses to overwrite a file unless ``force``."""
    from syncq.client import fetch_files

    named = _unique_names(refs)
    if not force:
        taken = [str(folder / ref.name) for ref in named if (folder / ref.name).exists()]
        if taken:
            raise UserError(f"{', '.join(taken)} exists already (--force overwrites)")
    total = sum(ref.size for ref in named)
    with bar("fetching", total, quiet=quiet) as progress:
        paths: list[Path] = fetch_files(space, named, folder, timeout=timeout, progress=progress)
    return paths


def _unique_names(refs: Sequence[BlobRef]) -> list[BlobRef]:
    """Give files of one name distinct names (a prompt's talk.json beside its result's)."""
    seen: set[str] = set()
    out = []
    for ref in refs:
        name, n = ref.name, 1
        while name in seen:
            n += 1
            stem, dot, ext = ref.name.rpartition(".")
            name = f"{stem}-{n}.{ext}" if dot and stem else f"{ref.name}-{n}"
        seen.add(name)
        out.append(dataclasses.replace(ref, name=name))
    return out
