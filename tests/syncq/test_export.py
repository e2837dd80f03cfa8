"""The export of a space's history into a plain SQLite database (``syncq.export``), read back
with sqlite-utils as Datasette would read it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from syncq.errors import ExportRefused
from syncq.export import FORMAT, export
from syncq.ids import PromptId
from syncq.records import Claim, Result, RunStatus
from syncq.space import Space


def run(space: Space, prompt_id: str, *, attempt: int = 1, output: str = "", error: str | None = None, **kw):
    """A run's result, as a node writes it."""
    return Result(
        prompt_id=PromptId(prompt_id),
        node=space.device_id,
        node_name="gpu",
        attempt=attempt,
        status=RunStatus.FAILED if error else RunStatus.DONE,
        output=output,
        error=error,
        started_at=1_700_000_000_000,
        finished_at=1_700_000_002_500,
        **kw,
    )


@pytest.fixture
def history(space: Space, tmp_path: Path) -> dict[str, str]:
    """A small history: a done chat with files, a failed prompt, a claimed one, a cancelled one."""
    talk = tmp_path / "talk.txt"
    talk.write_text("the minutes of the meeting")
    chat = space.add(
        "",
        model="echo",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        files=[talk],
    )
    out = tmp_path / "answer.txt"
    out.write_text("Rayleigh")
    space.put_result(
        run(
            space,
            chat.id,
            output="Rayleigh scattering of sunlight",
            usage={"prompt_tokens": 7, "completion_tokens": 4},
            finish="stop",
            files=(space.attach(out),),
        )
    )
    failed = space.add("divide by zero", model="echo", max_attempts=1)
    space.put_result(run(space, failed.id, error="ZeroDivisionError: the walrus objects"))
    claimed = space.add("wait for me", model="echo")
    space.put_claim(Claim(prompt_id=claimed.id, node=space.device_id, attempt=1, heartbeat=1, running=True))
    cancelled = space.add("never mind", model="echo")
    space.cancel(cancelled.id)
    return {"chat": chat.id, "failed": failed.id, "claimed": claimed.id, "cancelled": cancelled.id}


def test_the_export_holds_prompts_runs_files_and_devices(
    space: Space, history: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "history.db"
    summary = export(space, target)
    assert (summary.prompts, summary.written, summary.unchanged, summary.created) == (4, 4, 0, True)
    assert (summary.runs, summary.files) == (3, 2)
    db = Database(target)
    prompts = {row["id"]: row for row in db["prompts"].rows}
    chat = prompts[history["chat"]]
    assert chat["status"] == "done" and chat["answer"] == "Rayleigh scattering of sunlight"
    assert chat["conversation"] == "system: Be brief.\nuser: Why is the sky blue?"
    assert chat["input"] == "Why is the sky blue?" and chat["answered_by"] == space.device_id
    assert chat["created_at"].endswith("+00:00") and chat["finished_at"] == "2023-11-14T22:13:22.500+00:00"
    assert prompts[history["failed"]]["status"] == "failed"
    assert prompts[history["claimed"]]["status"] == "running"
    cancelled = prompts[history["cancelled"]]
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_by"] == space.device_id

    runs = {row["prompt_id"]: row for row in db["runs"].rows}
    done = runs[history["chat"]]
    assert done["id"] == f"{history['chat']}/{space.device_id}/1" and done["canonical"] == 1
    assert (done["status"], done["seconds"], done["finish"]) == ("done", 2.5, "stop")
    assert db.execute(
        "select json_extract(usage, '$.completion_tokens') from runs where id = ?", [done["id"]]
    ).fetchone() == (4,)
    assert runs[history["failed"]]["error"] == "ZeroDivisionError: the walrus objects"
    assert runs[history["claimed"]]["status"] == "running" and runs[history["claimed"]]["output"] is None

    files = sorted(db["files"].rows, key=lambda f: f["direction"])
    assert [(f["direction"], f["name"], f["size"]) for f in files] == [
        ("input", "talk.txt", 26),
        ("output", "answer.txt", 8),
    ]
    assert files[1]["run_id"] == done["id"] and len(files[0]["digest"]) == 64
    assert [d["name"] for d in db["devices"].rows] == ["laptop"]

    # What Datasette reads: foreign keys to follow, full-text search on prompts and answers.
    assert {(fk.column, fk.other_table) for fk in db["runs"].foreign_keys} == {
        ("prompt_id", "prompts"),
        ("node", "devices"),
        ("observer", "devices"),
    }
    assert {fk.other_table for fk in db["files"].foreign_keys} == {"prompts", "runs"}
    assert [r["id"] for r in db["prompts"].search("sky")] == [history["chat"]]
    assert [r["id"] for r in db["prompts"].search("scattering")] == [history["chat"]]  # its answer
    assert [r["prompt_id"] for r in db["runs"].search("walrus")] == [history["failed"]]
    assert db["syncq_export"].get("format")["value"] == FORMAT
    assert db["syncq_export"].get("space_id")["value"] == space.keys.space_id


def test_claims_that_hold_or_lost_a_prompt_are_runs_too(space: Space, member, tmp_path: Path) -> None:
    gpu = member("gpu")
    prompt = space.add("who runs me?", model="echo")
    gpu.receive(list(space.envelopes(gpu.version_vector())))
    gpu.put_claim(Claim(prompt_id=prompt.id, node=gpu.device_id, attempt=1, heartbeat=1))
    space.put_claim(Claim(prompt_id=prompt.id, node=space.device_id, attempt=1, heartbeat=1))
    space.receive(list(gpu.envelopes(space.version_vector())))
    target = tmp_path / "history.db"
    assert export(space, target).runs == 2
    db = Database(target)
    runs = {row["node_name"]: row["status"] for row in db["runs"].rows}
    assert sorted(runs.values()) == ["claimed", "lost"] and set(runs) == {"laptop", "gpu"}
    assert db["prompts"].get(prompt.id)["status"] == "claimed"
    assert {d["name"] for d in db["devices"].rows} == {"laptop", "gpu"}


def test_the_file_is_made_private_and_nothing_else_is_left_beside_it(space: Space, tmp_path: Path) -> None:
    space.add("hello", model="echo")
    target = tmp_path / "history.db"
    export(space, target)
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.db", "home"]
    empty = tmp_path / "made-by-touch.db"
    empty.touch(mode=0o644)
    assert not export(space, empty).created
    assert empty.stat().st_mode & 0o777 == 0o600  # an empty file about to hold plaintext


def test_a_second_export_writes_what_changed_and_search_follows(
    space: Space, history: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "history.db"
    export(space, target)
    assert export(space, target).written == 0
    # The running prompt ends, with a claim row becoming its result's row; one prompt is new.
    space.put_result(run(space, history["claimed"], output="a narwhal appeared"))
    fresh = space.add("tell me about zebras", model="echo")
    summary = export(space, target)
    assert (summary.written, summary.unchanged, summary.prompts) == (2, 3, 5)
    db = Database(target)
    assert db["prompts"].get(history["claimed"])["status"] == "done"
    assert [
        (r["status"], r["output"]) for r in db["runs"].rows_where("prompt_id = ?", [history["claimed"]])
    ] == [("done", "a narwhal appeared")]
    assert [r["id"] for r in db["prompts"].search("narwhal")] == [history["claimed"]]
    assert [r["id"] for r in db["runs"].search("narwhal")] == [f"{history['claimed']}/{space.device_id}/1"]
    assert [r["id"] for r in db["prompts"].search("zebra")] == [fresh.id]  # porter: zebras
    assert db["runs"].count == 3 and db["prompts_fts"].count == 5


def test_an_export_of_another_format_is_rebuilt(space: Space, tmp_path: Path) -> None:
    space.add("hello", model="echo")
    target = tmp_path / "history.db"
    export(space, target)
    with sqlite3.connect(target) as conn:
        conn.execute("update syncq_export set value = 'syncq-export-0' where key = 'format'")
        conn.execute("update prompts set input = 'stale'")
    conn.close()
    summary = export(space, target)
    assert summary.rebuilt and summary.written == 1
    db = Database(target)
    assert [r["input"] for r in db["prompts"].rows] == ["hello"]
    assert [r["input"] for r in db["prompts"].search("hello")] == ["hello"]


def test_files_that_cannot_take_an_export_are_refused(space: Space, tmp_path: Path) -> None:
    space.add("hello", model="echo")
    with pytest.raises(ExportRefused, match="is a folder"):
        export(space, tmp_path)
    with pytest.raises(ExportRefused, match="is not a folder"):
        export(space, tmp_path / "missing" / "history.db")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(ExportRefused, match="not a SQLite database"):
        export(space, notes)
    assert notes.read_text() == "my notes"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table photos (id)")
    conn.close()
    with pytest.raises(ExportRefused, match=r"not a syncq export \(it holds photos\)"):
        export(space, other)
    assert Database(other).table_names() == ["photos"]
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(ExportRefused, match="is not a SQLite database, or is corrupt"):
        export(space, broken)
    if Path("/proc/self").is_dir():  # a folder where no file can be made, even by root
        with pytest.raises(ExportRefused, match=r"cannot create /proc/history\.db"):
            export(space, Path("/proc/history.db"))


def test_an_export_of_another_space_is_never_written_into(space: Space, tmp_path: Path) -> None:
    target = tmp_path / "history.db"
    with Space.init(tmp_path / "elsewhere", name="other") as elsewhere:
        elsewhere.add("from another space", model="echo")
        export(elsewhere, target)
    with pytest.raises(ExportRefused, match="an export of another space"):
        export(space, target)
    assert [r["input"] for r in Database(target)["prompts"].rows] == ["from another space"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only files")
def test_a_read_only_export_is_refused(space: Space, tmp_path: Path) -> None:
    target = tmp_path / "history.db"
    export(space, target)
    target.chmod(0o400)
    with pytest.raises(ExportRefused, match="not writable"):
        export(space, target)


def test_progress_is_told_before_and_after_each_batch(space: Space, tmp_path: Path) -> None:
    from syncq.space import NewPrompt

    space.add_many([NewPrompt(text=f"question {i}", model="echo") for i in range(1200)])
    seen: list[tuple[int, int]] = []
    export(space, tmp_path / "history.db", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 1200), (500, 1200), (1000, 1200), (1200, 1200)]
    seen.clear()
    export(space, tmp_path / "history.db", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 0)]
