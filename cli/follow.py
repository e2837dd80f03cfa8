"""Waiting on the log: `add --wait/--follow` and `log --follow`.

Both sleep until the local store's files change (``syncq.watch``), check SQLite's
data_version and re-read the Doc when it moved; the node running in this home is what brings
results and streams from other devices.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from syncq.client import Outcome, stranded
from syncq.entries import Entry
from syncq.errors import UserError
from syncq.lifecycle import TERMINAL, Status


def _changes(space: Any, timeout: float | None) -> Any:
    """Yield each time the store changed (and once at first), until ``timeout``."""
    from syncq.watch import FolderWatch

    watch = FolderWatch(space.paths.root)
    try:
        yield from watch.moves(space.store.data_version, timeout)
    except TimeoutError:
        raise UserError(
            f"gave up waiting after {timeout:g} s; the prompt stays queued (see `syncq log`)"
        ) from None
    finally:
        watch.close()


def result(space: Any, prompt_id: str, *, stream: bool, timeout: float | None, as_json: bool) -> None:
    """Wait for the prompt to finish; with ``stream``, print its output as it arrives."""
    if space.node_running() is None:
        raise UserError(
            f"queued {prompt_id}, but no node runs in this home to bring its result: start "
            "`syncq node` (or wait with `syncq log --follow` later)"
        )
    streamed = ""
    for _ in _changes(space, timeout):
        entry = space.log.entry(prompt_id)
        if stream and not as_json and entry.stream and len(entry.stream) > len(streamed):
            sys.stdout.write(entry.stream[len(streamed) :])
            sys.stdout.flush()
            streamed = entry.stream
        if entry.status in TERMINAL:
            _finish(entry, streamed, as_json)
            return
        stuck = stranded(entry, space.log.nodes()) if entry.status is Status.QUEUED else None
        if stuck is not None:  # no node can run it now
            raise UserError(Outcome.of(entry, stuck).problem())


def _finish(entry: Entry, streamed: str, as_json: bool) -> None:
    from syncq.cli.render import entry_json
    from syncq.node.logs import one_line

    run = entry.result
    if as_json:
        click.echo(json.dumps(entry_json(entry), ensure_ascii=False))
    elif entry.status is Status.DONE and run is not None:
        # Print what the stream has not shown yet (all of it if the stream and the result differ).
        click.echo(run.output[len(streamed) :] if run.output.startswith(streamed) else "\n" + run.output)
        for call in run.tool_calls:  # the model's answer was to call tools (a model's text: escaped)
            click.echo(f"-> {one_line(call.name)}({one_line(call.arguments)})")
        ended = f", finish {one_line(run.finish)}" if run.finish not in ("", "stop") else ""
        click.echo(
            f"[{entry.prompt.model} on {run.node_name}, {run.usage.get('ms_total', '?')} ms{ended}]", err=True
        )
        if run.files:
            from syncq.cli.render import file_line

            for ref in run.files:
                click.echo(f"file {file_line(ref)}", err=True)
            click.echo(f"save them with: syncq get {entry.prompt.id[:10]} -o DIR", err=True)
    if entry.status is not Status.DONE:
        error = run.error if run is not None and run.error else entry.status.value
        raise UserError(f"prompt {entry.prompt.id} {entry.status.value}: {error}")


def log(
    space: Any,
    shown: Sequence[Entry],
    *,
    status: str | None,
    model: str | None,
    grep: str | None = None,
    as_json: bool,
) -> None:
    """After the first listing, print each new prompt (that the filters let through) and each
    status change of those shown, as it happens."""
    from syncq.cli import render

    seen = {e.prompt.id: e.status for e in shown}
    newest = shown[-1].prompt.id if shown else None
    for _ in _changes(space, None):
        fresh = space.entries(limit=None, since=newest, status=status, model=model, grep=grep)
        watching = [space.log.entry(pid) for pid, st in seen.items() if st not in TERMINAL]
        changed = [e for e in watching if e.status != seen[e.prompt.id]] + list(fresh)
        for entry in changed:
            seen[entry.prompt.id] = entry.status
        if fresh:
            newest = fresh[-1].prompt.id
        if changed:
            render.log(changed, as_json)  # one line (or JSON object) per change
