"""The decrypted history in a plain SQLite database, for Datasette and sqlite-utils (`syncq export`).

The export is plaintext: everything the space keeps encrypted, readable by whoever reads the
file. It is created 0600 (SQLite gives the journal it makes beside it the same mode), and the
CLI says so on every run. Its tables (``FORMAT``)::

    devices               id (pk), name, role (member | relay | removed | "" when not listed)
    prompts               id (pk), created_at, model, kind, status, author -> devices, priority,
                          max_attempts, input, conversation, params, llm, answer, error,
                          answered_by -> devices, finished_at, runs, cancelled_at,
                          cancelled_by -> devices
    runs                  id (pk: prompt/node/attempt, a lease expiry's with /lease-observer),
                          prompt_id -> prompts, node -> devices, node_name, attempt, status
                          (done | failed | running | claimed | lost), canonical, started_at,
                          finished_at, seconds, output, error, finish, usage, tool_calls,
                          counted, observer -> devices
    files                 id (pk), prompt_id -> prompts, run_id -> runs (an output's), direction
                          (input | output), name, size, digest, epoch
    syncq_export          key (pk), value: format, space_id, exported_at
    syncq_export_prompts  prompt_id (pk) -> prompts, fingerprint

Times are ISO 8601 text in UTC (they sort as text); params, llm, usage and tool_calls are JSON
text (SQLite's json_extract reads them; Datasette shows them). A run is a result, or a claim
whose run has not ended: the claim holding the prompt (running or claimed), or one that lost.
``digest`` is the attachment's content id (``syncq.blobs``: a keyed HMAC of its bytes, equal for
equal files of one space, not a SHA-256 anyone can recompute).

Full-text search (FTS5, porter stemming) covers prompts (input, conversation, answer) and runs
(output, error); sqlite-utils' triggers keep it in step with every write. The canonical answer
is stored twice, on its prompt and on its run: it costs the bytes of the answers again, and buys
one table (and one search) that shows each prompt with its answer.

A second export into the same file is incremental: ``syncq_export_prompts`` holds each exported
prompt's ``Log.fingerprint`` (a digest of its stored facts), and only prompts whose fingerprint
moved, or that are new, are written again (their rows upserted by primary key, their runs and
files replaced). A file of another format is rebuilt whole; a file of another space, or any other
database, is refused, never written into.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from syncq.errors import ExportRefused, MalformedRecord
from syncq.lifecycle import winner
from syncq.records import Prompt, Result

if TYPE_CHECKING:
    from syncq.log import Entry, Log
    from syncq.space import Space

FORMAT = "syncq-export-1"
BATCH = 500  # prompts per transaction: progress moves, and an interrupted export keeps its batches
META = "syncq_export"
EXPORTED = "syncq_export_prompts"
_SQLITE_HEADER = b"SQLite format 3\x00"
_LATEST_MS = 253_370_764_800_000  # 9999-01-01 UTC: any later time another device wrote is held there

Row = dict[str, Any]

TABLES: dict[str, dict[str, type]] = {
    "devices": {"id": str, "name": str, "role": str},
    "prompts": {
        "id": str,
        "created_at": str,
        "model": str,
        "kind": str,
        "status": str,
        "author": str,
        "priority": int,
        "max_attempts": int,
        "input": str,
        "conversation": str,
        "params": str,
        "llm": str,
        "answer": str,
        "error": str,
        "answered_by": str,
        "finished_at": str,
        "runs": int,
        "cancelled_at": str,
        "cancelled_by": str,
    },
    "runs": {
        "id": str,
        "prompt_id": str,
        "node": str,
        "node_name": str,
        "attempt": int,
        "status": str,
        "canonical": int,
        "started_at": str,
        "finished_at": str,
        "seconds": float,
        "output": str,
        "error": str,
        "finish": str,
        "usage": str,
        "tool_calls": str,
        "counted": int,
        "observer": str,
    },
    "files": {
        "id": str,
        "prompt_id": str,
        "run_id": str,
        "direction": str,
        "name": str,
        "size": int,
        "digest": str,
        "epoch": int,
    },
    META: {"key": str, "value": str},
    EXPORTED: {"prompt_id": str, "fingerprint": str},
}
FOREIGN_KEYS: dict[str, list[tuple[str, str, str]]] = {
    "prompts": [
        ("author", "devices", "id"),
        ("answered_by", "devices", "id"),
        ("cancelled_by", "devices", "id"),
    ],
    "runs": [("prompt_id", "prompts", "id"), ("node", "devices", "id"), ("observer", "devices", "id")],
    "files": [("prompt_id", "prompts", "id"), ("run_id", "runs", "id")],
    EXPORTED: [("prompt_id", "prompts", "id")],
}
SEARCHED = {"prompts": ["input", "conversation", "answer"], "runs": ["output", "error"]}
INDEXES = {
    "prompts": [["created_at"], ["status"], ["model"]],
    "runs": [["prompt_id"]],
    "files": [["prompt_id"]],
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSummary:
    """What one export did (`syncq export --json` prints it)."""

    path: Path
    prompts: int  # in the space (and so in the export)
    written: int  # new or changed since the last export, written now
    unchanged: int  # exported before and unchanged: not touched
    skipped: int = 0  # malformed records another device wrote (left out, as `syncq log` does)
    runs: int = 0  # run rows written
    files: int = 0  # file rows written
    created: bool = False  # the file is new
    rebuilt: bool = False  # an export of another format, written again whole
    seconds: float = 0.0


def export(
    space: Space, path: str | os.PathLike[str], *, progress: Callable[[int, int], None] | None = None
) -> ExportSummary:
    """Write the space's decrypted history into the SQLite database at ``path`` (made 0600 if
    new), or bring an earlier export there up to date. ``progress(done, total)`` is called
    first with (0, prompts to write) once the file is known to take the export (its tables
    made), before any prompt is written, then after each batch. Raises ``RelayOnly`` (a relay reads nothing),
    ``ExportRefused`` (a folder, not writable, not SQLite, not a syncq export, another space's)
    or ``StoreBroken``."""
    started = time.perf_counter()
    target = Path(path)
    log = space.log  # a relay is refused here, before any file is made
    created = _prepare(target)
    try:
        # Absolute: sqlite-utils and SQLite read ":memory:" (and, built so, "file:...") as no file.
        db = Database(target.absolute(), execute_plugins=False)
    except sqlite3.Error as exc:
        raise ExportRefused(f"cannot open {target}: {exc}") from None
    try:
        rebuilt = _check(db, target, space.keys.space_id)
        summary = _write(db, target, space, log, progress=progress)
    except sqlite3.Error as exc:
        raise ExportRefused(f"cannot write the export into {target}: {exc}") from None
    finally:
        db.close()
    took = time.perf_counter() - started
    return dataclasses.replace(summary, created=created, rebuilt=rebuilt, seconds=took)


# -- the file ----------------------------------------------------------------------------------


def _prepare(path: Path) -> bool:
    """Refuse a path that cannot hold an export; create it 0600 if missing. Whether it was made."""
    if path.is_dir():
        raise ExportRefused(f"{path} is a folder: name the export's file, such as {path / 'history.db'}")
    if not path.parent.is_dir():
        raise ExportRefused(f"{path.parent} is not a folder: cannot create {path.name} in it")
    if path.exists():
        _check_header(path)
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _check_header(path)  # made since we looked: take it as any existing file
        return False
    except OSError as exc:
        raise ExportRefused(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)
    return True


def _check_header(path: Path) -> None:
    """Refuse what is not a SQLite database (an empty file is one: a new export), or not
    writable; a file that will take its first export is made 0600."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise ExportRefused(f"cannot read {path}: {exc.strerror}") from None
    if head and head != _SQLITE_HEADER:
        raise ExportRefused(f"{path} is not a SQLite database: refusing to overwrite it")
    if not os.access(path, os.W_OK):
        raise ExportRefused(f"{path} is not writable")
    if not head:
        os.chmod(path, 0o600)  # about to hold plaintext; ours from now on


def _check(db: Database, path: Path, space_id: str) -> bool:
    """Create the tables of a new export, or check an old one's; whether it was rebuilt."""
    try:
        tables = set(db.table_names())
    except sqlite3.DatabaseError:
        raise ExportRefused(
            f"{path} is not a SQLite database, or is corrupt: refusing to write into it"
        ) from None
    if tables and META not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ExportRefused(
            f"{path} is a SQLite database but not a syncq export (it holds {shown}): refusing to "
            "write into it; name a new file"
        )
    meta = _meta(db) if tables else {}
    if tables and meta.get("space_id") != space_id:
        raise ExportRefused(
            f"{path} is an export of another space ({meta.get('space_id') or 'unknown'}), not of "
            f"{space_id}: name a new file"
        )
    rebuild = bool(tables) and meta.get("format") != FORMAT
    with db.atomic():
        if rebuild:
            _drop(db)
        _create(db, space_id)
    return rebuild


def _meta(db: Database) -> dict[str, str]:
    return {str(k): str(v) for k, v in db.execute("select key, value from syncq_export").fetchall()}


def _drop(db: Database) -> None:
    for name in reversed(TABLES):
        table = db.table(name)
        if table.exists():
            if table.detect_fts():
                table.disable_fts()
            table.drop()


def _create(db: Database, space_id: str) -> None:
    for name, columns in TABLES.items():
        pk = "key" if name == META else "prompt_id" if name == EXPORTED else "id"
        table = db.table(name)
        if table.exists():
            continue
        table.create(columns, pk=pk, foreign_keys=FOREIGN_KEYS.get(name, []))
        for columns_of in INDEXES.get(name, []):
            table.create_index(columns_of)
        if name in SEARCHED:
            table.enable_fts(SEARCHED[name], create_triggers=True, tokenize="porter")
    db.table(META).upsert_all(
        [{"key": "format", "value": FORMAT}, {"key": "space_id", "value": space_id}], pk="key"
    )


# -- the rows ----------------------------------------------------------------------------------


def _write(
    db: Database, path: Path, space: Space, log: Log, *, progress: Callable[[int, int], None] | None
) -> ExportSummary:
    with space.lock:
        devices = _Devices(space)  # first: it reads ``space.log``, which takes in new envelopes
        ids = log.prompt_ids()
        prints = log.fingerprints()
    stored = dict(db.execute("select prompt_id, fingerprint from syncq_export_prompts").fetchall())
    todo = [prompt_id for prompt_id in ids if stored.get(prompt_id) != prints[prompt_id]]
    written = skipped = runs = files = 0
    if progress is not None:
        progress(0, len(todo))
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        with space.lock:
            entries, bad = _entries(log, batch)
        rows = [_rows(entry, devices) for entry in entries]
        with db.atomic():
            _replace_prompts(db, batch, rows, devices.rows())
            db.table(EXPORTED).upsert_all(
                [{"prompt_id": e.prompt.id, "fingerprint": prints[e.prompt.id]} for e in entries],
                pk="prompt_id",
                batch_size=BATCH,
            )
        written, skipped = written + len(entries), skipped + bad
        runs += sum(len(r[1]) for r in rows)
        files += sum(len(r[2]) for r in rows)
        if progress is not None:
            progress(start + len(batch), len(todo))
    with db.atomic():
        db.table("devices").upsert_all(devices.rows(), pk="id")  # renames since the last export
        db.table(META).upsert_all([{"key": "exported_at", "value": _iso(space.clock())}], pk="key")
    return ExportSummary(
        path=path,
        prompts=len(ids),
        written=written,
        unchanged=len(ids) - len(todo),
        skipped=skipped,
        runs=runs,
        files=files,
    )


def _entries(log: Log, ids: Sequence[str]) -> tuple[list[Entry], int]:
    """The entries of ``ids`` (without streams: an export holds what ended), and how many
    records were malformed."""
    entries = []
    for prompt_id in ids:
        try:
            entries.append(log.entry(prompt_id, stream=False))
        except MalformedRecord:
            continue
    return entries, len(ids) - len(entries)


def _replace_prompts(
    db: Database, ids: Sequence[str], rows: Sequence[tuple[Row, list[Row], list[Row]]], devices: list[Row]
) -> None:
    """Upsert the prompts; their runs and files are replaced (a claim's row may have become a
    result's, or gone with a new attempt)."""
    marks = ",".join("?" * len(ids))
    db.execute(f"delete from files where prompt_id in ({marks})", list(ids))  # noqa: S608 - marks only
    db.execute(f"delete from runs where prompt_id in ({marks})", list(ids))  # noqa: S608 - marks only
    db.table("devices").upsert_all(devices, pk="id")
    db.table("prompts").upsert_all([r[0] for r in rows], pk="id", batch_size=BATCH)
    db.table("runs").insert_all([run for r in rows for run in r[1]], pk="id", batch_size=BATCH)
    db.table("files").insert_all([f for r in rows for f in r[2]], pk="id", batch_size=BATCH)


class _Devices:
    """The devices rows name, with the names the space gives them."""

    def __init__(self, space: Space) -> None:
        self._rows: dict[str, Row] = {}
        log = space.log
        for record in log.devices():
            self._rows[record.id] = {"id": record.id, "name": record.name, "role": ""}
        for node in log.nodes():
            self._rows.setdefault(node.id, {"id": node.id, "name": node.name, "role": ""})
        for view in space.devices():
            self._rows[view.id] = {"id": view.id, "name": view.name, "role": view.role}

    def ref(self, device: str | None, name: str = "") -> str | None:
        """``device``, noted so that its row is written with the rows that name it."""
        if device and device not in self._rows:
            self._rows[device] = {"id": device, "name": name, "role": ""}
        return device or None

    def name(self, device: str) -> str:
        """The device's name ("" if the space never named it)."""
        row = self._rows.get(device)
        return str(row["name"]) if row is not None else ""

    def rows(self) -> list[Row]:
        """Every device known or named so far."""
        return list(self._rows.values())


def _rows(entry: Entry, devices: _Devices) -> tuple[Row, list[Row], list[Row]]:
    """The prompt's row, its runs' and its files'."""
    p = entry.prompt
    answer = entry.result
    runs = list(_run_rows(entry, devices))
    files = [_file_row(p.id, None, i, ref) for i, ref in enumerate(p.files)]
    for run in entry.results:
        files += [_file_row(p.id, run.key, i, ref) for i, ref in enumerate(run.files)]
    prompt = {
        "id": p.id,
        "created_at": _iso(p.created_at),
        "model": p.model,
        "kind": p.kind.value,
        "status": entry.status.value,
        "author": devices.ref(p.author),
        "priority": p.priority,
        "max_attempts": entry.facts.max_attempts,
        "input": p.input,
        "conversation": _conversation(p),
        "params": _json(dict(p.params)),
        "llm": _json(p.llm.to_wire()) if p.llm is not None else None,
        "answer": answer.output if answer is not None else None,
        "error": answer.error if answer is not None else None,
        "answered_by": devices.ref(answer.node, answer.node_name) if answer is not None else None,
        "finished_at": _iso(answer.finished_at) if answer is not None else None,
        "runs": len(runs),
        "cancelled_at": _iso(entry.cancel.at) if entry.cancel else None,
        "cancelled_by": devices.ref(entry.cancel.by) if entry.cancel else None,
    }
    return prompt, runs, files


def _run_rows(entry: Entry, devices: _Devices) -> Iterator[Row]:
    answer = entry.result
    for run in entry.results:
        yield _result_row(run, run is answer, devices)
    ended = {(run.node, run.attempt) for run in entry.results}
    holder = winner(entry.claims)
    for claim in entry.claims:
        if (claim.node, claim.attempt) in ended:
            continue
        status = ("running" if claim.running else "claimed") if claim == holder else "lost"
        yield {
            "id": f"{claim.prompt_id}/{claim.node}/{claim.attempt}",
            "prompt_id": claim.prompt_id,
            "node": devices.ref(claim.node),
            "node_name": devices.name(claim.node),
            "attempt": claim.attempt,
            "status": status,
            "canonical": 0,
            "counted": 1,
        }


def _result_row(run: Result, canonical: bool, devices: _Devices) -> Row:
    took = (run.finished_at - run.started_at) / 1000 if 0 < run.started_at <= run.finished_at else None
    return {
        "id": run.key,
        "prompt_id": run.prompt_id,
        "node": devices.ref(run.node, run.node_name),
        "node_name": run.node_name,
        "attempt": run.attempt,
        "status": run.status.value,
        "canonical": int(canonical),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "seconds": took,
        "output": run.output,
        "error": run.error,
        "finish": run.finish or None,
        "usage": _json(dict(run.usage)),
        "tool_calls": _json([c.to_wire() for c in run.tool_calls]) if run.tool_calls else None,
        "counted": int(run.counts),
        "observer": devices.ref(run.observer),
    }


def _file_row(prompt_id: str, run_id: str | None, index: int, ref: Any) -> Row:
    direction = "input" if run_id is None else "output"
    return {
        "id": f"{run_id or prompt_id}/{direction}/{index}",
        "prompt_id": prompt_id,
        "run_id": run_id,
        "direction": direction,
        "name": ref.name,
        "size": ref.size,
        "digest": ref.id,
        "epoch": ref.epoch,
    }


def _conversation(prompt: Prompt) -> str | None:
    """An llm prompt's turns as ``role: text`` lines (tool calls as ``-> name(arguments)``),
    and the texts it asks to embed; None for a prompt that is its text alone."""
    llm = prompt.llm
    if llm is None or not (llm.messages or llm.inputs):
        return None
    lines = []
    for turn in llm.messages:
        lines.append(f"{turn.role}: {turn.content}")
        lines += [f"  -> {call.name}({call.arguments})" for call in turn.tool_calls]
    lines += [f"embed: {text}" for text in llm.inputs]
    return "\n".join(lines)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 in UTC, held within what datetime can show (a
    record's times are whatever whole number another device wrote)."""
    held = min(max(ms, 0), _LATEST_MS)
    return dt.datetime.fromtimestamp(held / 1000, dt.UTC).isoformat(timespec="milliseconds")
