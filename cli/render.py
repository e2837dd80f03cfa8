"""Output of the CLI: rich tables and colours for people, one JSON object per line for scripts."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from syncq.node.logs import one_line, printable

from syncq.blobs import BlobRef
from syncq.chat import LlmInput, ToolCall
from syncq.entries import Entry
from syncq.records import ModelAd, NodeInfo, Result
from syncq.space import Space, SpaceStatus

if TYPE_CHECKING:
    from syncq.export import ExportSummary  # imports sqlite-utils: only `syncq export` pays for it

STATUS_STYLE = {
    "queued": "yellow",
    "claimed": "cyan",
    "running": "bold cyan",
    "done": "green",
    "failed": "bold red",
    "cancelled": "dim",
}


def entry_json(entry: Entry) -> dict[str, Any]:
    """An entry as a JSON-ready dict (the shape of `log --json` and `show --json`)."""
    p = entry.prompt
    result = entry.result
    return {
        "id": p.id,
        "status": entry.status.value,
        "model": p.model,
        "kind": p.kind.value,
        "input": p.input,
        "params": dict(p.params),
        "priority": p.priority,
        "max_attempts": p.max_attempts,
        "files": [f.to_wire() for f in p.files],
        "llm": p.llm.to_wire() if p.llm is not None else None,
        "created_at": _iso(p.created_at),
        "author": p.author,
        "result": _run_json(result) if result else None,
        "runs": [_run_json(r) for r in entry.results],
        "claims": [
            {"node": c.node, "attempt": c.attempt, "heartbeat": c.heartbeat, "running": c.running}
            for c in entry.claims
        ],
        "cancelled": {"by": entry.cancel.by, "at": _iso(entry.cancel.at)} if entry.cancel else None,
    }


def initialised(space: Space, as_json: bool) -> None:
    """`syncq init`."""
    if as_json:
        _json_line(
            {
                "home": str(space.paths.root),
                "space_id": space.keys.space_id,
                "device_id": space.device_id,
                "device_name": space.name,
            }
        )
        return
    click.echo(f"Created space {space.keys.space_id} in {space.paths.root}")
    click.echo(f"This device: {space.name} ({space.device_id[:16]})")
    click.echo('Next: syncq add "hello" -m echo && syncq log')


UNSERVED = "no node serves this model"


def log(
    entries: Sequence[Entry], as_json: bool, served: set[str] | None = None, *, filtered: bool = False
) -> None:
    """`syncq log`; ``served`` (the models the mesh advertises, if known) marks prompts that
    nothing will run; ``filtered`` says the entries are those a filter let through."""
    if as_json:
        for entry in entries:
            _json_line({**entry_json(entry), "note": _note(entry, served)})
        return
    if not entries:
        empty = 'No prompts yet. Add one with: syncq add "hello" -m echo'
        click.echo("No prompts match." if filtered else empty)
        return
    from rich.markup import escape
    from rich.table import Table

    ids = short_ids([e.prompt.id for e in entries])
    noted = [_note(e, served) is not None for e in entries]
    statuses = [e.status.value + "*" * n for e, n in zip(entries, noted, strict=True)]
    created = [_short_time(e.prompt.created_at) for e in entries]
    models = [_one_line(e.prompt.model, 18) for e in entries]
    console = _console()
    # Every column but the texts shows whole; prompt and result share what is left of the
    # terminal's width (at 80 columns, about 15 characters each), cut here with an ellipsis.
    fixed = [max(map(len, column)) for column in (ids, created, models, statuses)]
    text_width = max(8, (console.width - sum(fixed) - 5) // 2)
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1, 0, 0))
    for name, width in zip(("id", "created", "model", "status"), fixed, strict=True):
        table.add_column(name, no_wrap=True, min_width=max(width, len(name)))
    for name in ("prompt", "result"):
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=text_width)
    for entry, row in zip(entries, zip(ids, created, models, statuses, strict=True), strict=True):
        short, when, model, status = row
        result = entry.result
        # A cell is read as markup: a prompt or answer (another device's, or a model's) saying
        # "[link=...]" would plant a hyperlink, "[bold]" restyle the row; and so would a model
        # name (a received prompt's is any text: check_model runs on add only).
        table.add_row(
            short,
            when,
            escape(model),
            _status(entry.status.value) + status.removeprefix(entry.status.value),
            escape(_one_line(entry.prompt.input, text_width)),
            escape(_one_line(_result_text(result), text_width)) if result else "",
        )
    console.print(table)
    if any(noted):
        console.print(f"[dim]* {UNSERVED}[/]")


def short_ids(ids: Sequence[str], least: int = 10) -> list[str]:
    """Each id cut to the shortest prefix (at least ``least`` characters) that no other id of
    the list shares, as git abbreviates hashes; every command takes such a prefix. Ids made in
    one millisecond share their first 10 characters (the time) and stay longer."""
    ordered = sorted(ids)
    length: dict[str, int] = {}
    for before, after in itertools.pairwise(ordered):
        shared = len(os.path.commonprefix([before, after]))  # noqa: RUF071 - characters, not paths
        for one in (before, after):
            length[one] = max(length.get(one, least), shared + 1)
    return [i[: max(length.get(i, least), least)] for i in ids]


def _note(entry: Entry, served: set[str] | None) -> str | None:
    if served is not None and entry.status.value == "queued" and entry.prompt.model not in served:
        return UNSERVED
    return None


def show(entry: Entry, as_json: bool, served: set[str] | None = None) -> None:
    """`syncq show`."""
    if as_json:
        _json_line({**entry_json(entry), "note": _note(entry, served)})
        return
    from rich.markup import escape
    from rich.table import Table

    p = entry.prompt
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("id", p.id)
    note = _note(entry, served)
    facts.add_row("status", _status(entry.status.value) + (f" ({note})" if note else ""))
    facts.add_row("model", escape(f"{p.model} ({p.kind.value})"))
    facts.add_row("created", f"{_iso(p.created_at)} by {p.author[:16]}")
    facts.add_row("priority", f"{p.priority}   max attempts {p.max_attempts}")
    # Cells of a rich table are read as markup: a param's text (a stop string) or a file's name,
    # another member's, could restyle the view or plant a hyperlink ([link=...]).
    if p.params:
        params = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(p.params.items()))
        facts.add_row("params", escape(params))
    for ref in p.files:
        facts.add_row("file", escape(file_line(ref)))
    if entry.cancel:
        facts.add_row("cancelled", f"{_iso(entry.cancel.at)} by {entry.cancel.by[:16]}")
    for claim in entry.claims:
        state = "running" if claim.running else "claimed"
        facts.add_row("claim", f"{claim.node[:16]} attempt {claim.attempt} ({state})")
    if p.llm is not None:
        _llm_facts(facts, p.llm)
    console = _console()
    console.print(facts)
    if p.llm is not None and p.llm.messages:
        console.print("\n[bold]conversation[/bold]")
        for turn in p.llm.messages:
            _print_turn(console, turn.role, turn.content, turn.tool_calls, turn.name or turn.tool_call_id)
    else:
        console.print("\n[bold]prompt[/bold]")
        console.print(printable(p.input), markup=False, highlight=False)
    if entry.stream is not None:
        console.print("\n[bold]output so far[/bold]")
        console.print(printable(entry.stream), markup=False, highlight=False)
    for run in entry.results:
        mark = " (canonical)" if run is entry.result and len(entry.results) > 1 else ""
        if not run.counts:
            mark += " (not counted as an attempt: that node cannot run the model)"
        console.print(  # the node's name is its own choice: text, not markup
            f"\n[bold]run[/bold] attempt {run.attempt} on {escape(printable(run.node_name))} "
            f"({escape(run.node[:16])}): {_status(run.status.value)}{mark}"
        )
        if run.tool_calls:
            _print_turn(console, "assistant", run.output, run.tool_calls, "")
        elif run.output or run.error is not None or not run.finish:
            console.print(printable(_result_text(run)), markup=False, highlight=False)
        if run.finish:
            console.print(printable(f"finish: {run.finish}"), style="dim", markup=False, highlight=False)
        for ref in run.files:
            console.print(f"file {file_line(ref)}", markup=False, highlight=False)
    if any(run.files for run in entry.results):
        console.print(f"\n[dim]save the files with: syncq get {p.id[:10]} -o DIR[/dim]")


def _llm_facts(facts: Any, llm: LlmInput) -> None:
    """The rows of `syncq show` for what an llm prompt carries beside its conversation."""
    from rich.markup import escape

    if llm.tools:
        choice = f"must call {llm.forced_tool}" if llm.forced_tool else llm.tool_choice
        facts.add_row("tools", escape(printable(f"{', '.join(t.name for t in llm.tools)} ({choice})")))
    if llm.format is not None:
        facts.add_row("format", escape(printable(f"{llm.format.type} {llm.format.name}".strip())))
    if llm.stop:
        facts.add_row("stop", escape(printable(" ".join(json.dumps(s) for s in llm.stop))))
    if llm.inputs:
        facts.add_row("embed", f"{len(llm.inputs)} text{'' if len(llm.inputs) == 1 else 's'}")


def _print_turn(console: Any, role: str, text: str, calls: Sequence[ToolCall], name: str) -> None:
    """One turn of a conversation: ``role: text``, then each tool call with its arguments.
    The text is another device's (or a model's): escaped, never read as markup."""
    who = f"{role} ({name})" if name else role
    # Later lines indented: a turn's text cannot pass for the start of another turn.
    said = printable(f"{who}: {text}").replace("\n", "\n  ")
    console.print(said, markup=False, highlight=False)
    for call in calls:
        console.print(
            f"  -> {one_line(call.name)}({one_line(call.arguments)})  [{one_line(call.id)}]",
            markup=False,
            highlight=False,
        )


def file_line(ref: BlobRef) -> str:
    """An attachment in one line: name, size, id prefix."""
    return f"{one_line(ref.name)} ({_size(ref.size)}, {ref.id[:12]})"  # a name may hold \x1b


def saved(paths: Sequence[Path], as_json: bool) -> None:
    """`syncq get` and `show --save`: where the files went."""
    for path in paths:
        if as_json:
            _json_line({"path": str(path), "size": path.stat().st_size})
        else:
            click.echo(str(path))


def changed(entry: Entry, as_json: bool) -> None:
    """`syncq cancel` and `syncq retry`: the prompt's new status."""
    if as_json:
        _json_line({"id": entry.prompt.id, "status": entry.status.value})
    else:
        click.echo(f"{entry.prompt.id} {entry.status.value}")


def exported(summary: ExportSummary, as_json: bool) -> None:
    """`syncq export`: what was written, and how to browse it."""
    if as_json:
        _json_line(
            {
                "path": str(summary.path),
                "prompts": summary.prompts,
                "written": summary.written,
                "unchanged": summary.unchanged,
                "skipped": summary.skipped,
                "runs": summary.runs,
                "files": summary.files,
                "created": summary.created,
                "rebuilt": summary.rebuilt,
                "seconds": round(summary.seconds, 3),
            }
        )
        return
    how = "rebuilt, " if summary.rebuilt else ""
    click.echo(
        f"Exported {summary.prompts} prompts to {summary.path} ({how}{summary.written} written, "
        f"{summary.unchanged} unchanged) in {summary.seconds:.1f} s"
    )
    if summary.skipped:
        click.echo(f"{summary.skipped} malformed prompts left out (as `syncq log` leaves them out)")
    import shlex

    path = shlex.quote(str(summary.path))
    click.echo(f'Browse it with: datasette {path}  or: sqlite-utils search {path} prompts "some words"')


def models(nodes: Sequence[NodeInfo], as_json: bool) -> None:
    """`syncq models`: one row per model, with the nodes that serve it."""
    by_model: dict[str, list[tuple[NodeInfo, ModelAd]]] = {}
    for node in nodes:
        for ad in node.models:
            by_model.setdefault(ad.name, []).append((node, ad))
    rows = [
        {
            "model": name,
            "backend": served[0][1].backend,
            "size": served[0][1].size,
            "nodes": [
                {
                    "node": n.id,
                    "name": n.name,
                    "loaded": ad.loaded,
                    "unusable": ad.unusable or None,
                    "last_seen": _iso(n.last_seen),
                }
                for n, ad in served
            ],
        }
        for name, served in sorted(by_model.items())
    ]
    if as_json:
        for row in rows:
            _json_line(row)
        return
    if not rows:
        click.echo("No node has advertised a model yet (start one with `syncq node`).")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("model", "backend", "size", "served by"):
        table.add_column(column, no_wrap=column != "served by")
    for row in rows:
        where = ", ".join(_served_by(n) for n in row["nodes"])
        table.add_row(row["model"], row["backend"], _size(row["size"]) if row["size"] else "", where)
    console = _console()
    console.print(table)
    for row in rows:
        for n in row["nodes"]:
            if n["unusable"]:
                console.print(
                    printable(f"{row['model']} on {n['name']}: {n['unusable']}"),
                    markup=False,
                    highlight=False,
                )


def _served_by(node: dict[str, Any]) -> str:
    from rich.markup import escape

    name = escape(printable(node["name"]))
    if node["unusable"]:
        return f"{name} ([bold red]unusable[/]: until it restarts)"
    return f"{name} ({'[green]warm[/]' if node['loaded'] else 'cold'})"


def status(st: SpaceStatus, as_json: bool) -> None:
    """`syncq status`."""
    counts = {s: st.counts.get(s, 0) for s in STATUS_STYLE}
    if as_json:
        _json_line(
            {
                "home": str(st.home),
                "device_id": st.device_id,
                "device_name": st.device_name,
                "space_id": st.space_id,
                "relay": st.relay,
                "prompts": st.prompts,
                "counts": counts,
                "devices": st.devices,
                "envelopes": st.envelopes,
                "store_bytes": st.store_bytes,
                "snapshots": st.snapshots,
                "snapshot_covers": st.snapshot_covers,
                "rejected": dict(st.rejected),
                "quarantined": dict(st.quarantined),
                "files": st.files,
                "files_bytes": st.files_bytes,
                "node": st.node,
                "peers": st.peers,
                "peers_connected": st.peers_connected,
                "peers_behind": st.peers_behind,
                "node_tasks": dict(st.node_tasks),
            }
        )
        return
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("device", f"{st.device_name} ({st.device_id[:16]})")
    grid.add_row("space", st.space_id)
    grid.add_row("home", str(st.home))
    if st.relay:
        grid.add_row("role", "relay: stores and forwards ciphertext, cannot read prompts")
    else:
        grid.add_row("prompts", f"{st.prompts}: " + ", ".join(f"{_status(s)} {n}" for s, n in counts.items()))
        grid.add_row("devices", str(st.devices))
    held = f", {st.snapshots} snapshot{'' if st.snapshots == 1 else 's'} covering {st.snapshot_covers}"
    grid.add_row("store", f"{st.envelopes} envelopes{held if st.snapshots else ''}, {_size(st.store_bytes)}")
    grid.add_row("files", f"{st.files} attachment{'' if st.files == 1 else 's'}, {_size(st.files_bytes)}")
    grid.add_row("node", f"[green]running[/] at {st.node}" if st.node else "[dim]not running (syncq node)[/]")
    sync = "in sync" if st.peers_behind == 0 else f"{st.peers_behind} envelopes to send"
    grid.add_row(
        "peers",
        f"{st.peers_connected} connected of {st.peers} known" + (f", {sync}" if st.peers_connected else ""),
    )
    if st.rejected:
        grid.add_row("rejected", ", ".join(f"{r} {n}" for r, n in sorted(st.rejected.items())))
    if st.node_tasks:
        grid.add_row("tasks", _node_tasks(st.node_tasks))
    if st.quarantined:
        kept = ", ".join(f"{r} {n}" for r, n in sorted(st.quarantined.items()))
        grid.add_row("quarantined", f"{kept} (stored, never applied)")
    _console().print(grid)


def _node_tasks(tasks: Mapping[str, Mapping[str, Any]]) -> str:
    """The node's restarted tasks, one per line: ``portal: restarted 2 times, last error: ...``."""
    from rich.markup import escape

    lines = []
    for name, health in sorted(tasks.items()):
        n = health.get("restarts", 0)
        error = escape(printable(str(health.get("last_error", ""))))
        times = "time" if n == 1 else "times"
        lines.append(f"{escape(printable(name))}: [yellow]restarted {n} {times}[/], last error: {error}")
    return "\n".join(lines)


def peers(rows: Sequence[dict[str, Any]], running: bool) -> None:
    """`syncq peers`."""
    if not rows:
        click.echo("No peers yet. Add one with: syncq peers add ws://HOST:7330 (or syncq join CODE)")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1, 0, 0))
    for column in ("peer", "name", "state", "last seen", "behind", "source"):
        table.add_column(
            column, no_wrap=True, overflow="ellipsis", max_width=30 if column == "peer" else None
        )
    errors = []
    for row in rows:
        state = "[green]connected[/]" if row["connected"] else "[dim]offline[/]"
        if row["error"] and not row["connected"]:
            errors.append(f"{row['url']}: {_one_line(row['error'], 200)}")
            state += f" [red]({len(errors)})[/]"
        table.add_row(
            escape(printable("dialled in" if row["url"].startswith("inbound:") else row["url"])),
            escape(printable(row["name"] or "")),
            state,
            _seen(row["last_seen"]) if row["last_seen"] else "never",
            "" if row["behind"] is None else str(row["behind"]),
            row["source"],
        )
    console = _console()
    console.print(table)
    for i, error in enumerate(errors, 1):  # below the table: an error would crowd 80 columns
        console.print(f"[red]({i})[/] {escape(printable(error))}")
    if not running:
        console.print("[dim]No node is running in this home: start one with `syncq node`.[/]")


def _run_json(run: Result) -> dict[str, Any]:
    return {
        "node": run.node,
        "node_name": run.node_name,
        "attempt": run.attempt,
        "status": run.status.value,
        "output": run.output,
        "error": run.error,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "usage": dict(run.usage),
        "files": [f.to_wire() for f in run.files],
        "counts": run.counts,
        "finish": run.finish or None,
        "tool_calls": [c.to_wire() for c in run.tool_calls],
    }


def _result_text(run: Result) -> str:
    return run.output if run.error is None else f"error: {run.error}"


def _json_line(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False))


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _status(status: str) -> str:
    return f"[{STATUS_STYLE[status]}]{status}[/]"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(_held(ms) / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _seen(ms: int) -> str:
    """When a peer was last seen, to the minute, in local time."""
    return dt.datetime.fromtimestamp(_held(ms) / 1000).strftime("%Y-%m-%d %H:%M")


def _short_time(ms: int) -> str:
    """The local time of day for today, else the date and the minute (at most 11 characters)."""
    when = dt.datetime.fromtimestamp(_held(ms) / 1000)
    return when.strftime("%H:%M:%S") if when.date() == dt.date.today() else when.strftime("%m-%d %H:%M")


def _one_line(text: str, width: int) -> str:
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _held(ms: int) -> int:
    # A record's times are any whole number another device wrote: one past datetime's range
    # (created_at 10**18) raised ValueError out of `syncq log` and `show` on every device.
    # Held to 1970-01-02 and 9999-01-01 (local time may move it a day either way).
    return min(max(ms, 86_400_000), _LATEST_MS)


_LATEST_MS = 253_370_764_800_000  # 9999-01-01 UTC


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
