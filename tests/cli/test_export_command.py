"""`syncq export` of a year's worth of prompts, read back by sqlite-utils' own CLI, and
`syncq log --grep`: real homes, real child processes."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from syncq.cli.main import cli

from syncq.ids import PromptId
from syncq.log import Log
from syncq.records import Result, RunStatus
from syncq.space import NewPrompt, Space

from ..conftest import run_syncq
from .test_progress import on_a_terminal

PROMPTS = 10_000
WARNING = "in plaintext, unencrypted"


def answer(space: Space, prompt_id: str, output: str) -> Result:
    """The result a node writes for a run of ``prompt_id`` that ended well."""
    return Result(
        prompt_id=PromptId(prompt_id),
        node=space.device_id,
        node_name="gpu",
        attempt=1,
        status=RunStatus.DONE,
        output=output,
        started_at=1_700_000_000_000,
        finished_at=1_700_000_001_000,
        usage={"completion_tokens": 3},
    )


@pytest.fixture(scope="module")
def big_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home of 10k prompts, added 1000 at a time, most of them answered (1000 per envelope)."""
    home = tmp_path_factory.mktemp("big") / "home"
    with Space.init(home, name="laptop") as space:
        for start in range(0, PROMPTS, 1000):
            texts = [f"question {n} about the weather" for n in range(start, start + 1000)]
            if start == 4000:
                texts[321] = "how heavy is a walrus?"
            space.add_many([NewPrompt(text=text, model="echo") for text in texts])
        ids = space.log.prompt_ids()
        answered = ids[: PROMPTS - 100]  # the newest 100 stay queued
        for start in range(0, len(answered), 1000):
            batch = answered[start : start + 1000]

            def write(log: Log, batch: list[PromptId] = batch) -> None:
                for prompt_id in batch:
                    said = "a narwhal, mostly" if prompt_id == ids[7777] else f"sunny, says {prompt_id}"
                    log.put_result(answer(space, prompt_id, said))

            space.write(write)
        space.checkpoint()  # as a node leaves it: the next open need not replay every envelope
    return home


def search(db: Path, table: str, words: str) -> list[dict[str, object]]:
    """What `sqlite-utils search` (its real CLI, in a child process) prints, as rows."""
    done = subprocess.run(
        [sys.executable, "-m", "sqlite_utils", "search", str(db), table, words],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def test_an_export_of_10k_prompts_is_searched_by_sqlite_utils_and_then_kept_up_to_date(
    big_home: Path, tmp_path: Path
) -> None:
    db = tmp_path / "history.db"
    with Space.open(big_home) as space:
        ids = space.log.prompt_ids()
        walrus = next(e.prompt.id for e in space.entries(limit=None, grep="walrus"))

    # The first export, on a terminal: a bar while it works, the warning, a summary.
    first, screen = on_a_terminal(big_home, "export", str(db))
    assert first.returncode == 0, screen
    assert WARNING in screen and "exporting prompts" in screen
    assert f"Exported {PROMPTS} prompts to {db} ({PROMPTS} written, 0 unchanged)" in first.stdout
    first_s = float(re.search(r"in ([0-9.]+) s", first.stdout).group(1))  # type: ignore[union-attr]
    assert db.stat().st_mode & 0o777 == 0o600

    assert [row["id"] for row in search(db, "prompts", "walrus")] == [walrus]
    assert [row["id"] for row in search(db, "prompts", "narwhal")] == [ids[7777]]  # by its answer
    assert [row["prompt_id"] for row in search(db, "runs", "narwhal")] == [ids[7777]]

    # A second export writes a new prompt and one whose status changed, and nothing else: a
    # row changed in the file behind its back stays as it was.
    with sqlite3.connect(db) as conn:
        conn.execute("update prompts set priority = 999 where id = ?", [ids[0]])
    conn.close()
    with Space.open(big_home) as space:
        space.cancel(ids[-1])
        fresh = space.add("a new question: is a walrus a seal?", model="echo")
    second = run_syncq(big_home, "export", str(db), "--json")
    assert second.returncode == 0, second.stderr
    assert WARNING in second.stderr
    summary = json.loads(second.stdout)
    assert summary | {"seconds": 0} == {
        "path": str(db),
        "prompts": PROMPTS + 1,
        "written": 2,
        "unchanged": PROMPTS - 1,
        "skipped": 0,
        "runs": 0,
        "files": 0,
        "created": False,
        "rebuilt": False,
        "seconds": 0,
    }
    assert summary["seconds"] < first_s
    print(f"\nexport of {PROMPTS} prompts: {first_s:.2f} s; incremental: {summary['seconds']:.2f} s")
    check = sqlite3.connect(db)
    assert check.execute("select priority from prompts where id = ?", [ids[0]]).fetchone() == (999,)
    assert check.execute("select status from prompts where id = ?", [ids[-1]]).fetchone() == ("cancelled",)
    check.close()
    assert {row["id"] for row in search(db, "prompts", "walrus")} == {walrus, fresh.id}


def test_log_grep_finds_a_prompt_by_its_text_and_by_its_answer(big_home: Path) -> None:
    runner = CliRunner()

    def log(*args: str) -> list[str]:
        done = runner.invoke(cli, ["--home", str(big_home), "log", *args], catch_exceptions=False)
        assert done.exit_code == 0, done.output
        return done.output.splitlines()

    by_text = log("--grep", "WALRUS", "--json")
    assert [json.loads(line)["input"] for line in by_text][:1] == ["how heavy is a walrus?"]
    by_answer = log("--grep", "narwhal", "-n", "0", "--json")
    assert [json.loads(line)["result"]["output"] for line in by_answer] == ["a narwhal, mostly"]
    assert len(log("--grep", "about the weather", "-n", "3", "--status", "queued")) == 4  # a header, 3 rows
    assert log("--grep", "no such words anywhere") == ["No prompts match."]


@pytest.fixture
def run(home: Path):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(
            cli, ["--home", str(home), *args], env={"COLUMNS": "200"}, catch_exceptions=False
        )

    return invoke


def test_log_grep_escapes_what_it_prints(run, home: Path) -> None:
    run("init")
    with Space.open(home) as space:
        evil = space.add(
            "find me \x1b]0;owned\x07 [link=https://example.com]click[/link] \x1b[2J", model="echo"
        )
        space.add("do not find this one", model="echo")
        space.put_result(answer(space, evil.id, "found \x1b[31mred\x1b[0m"))
    shown = run("log", "--grep", "FIND ME")
    assert shown.exit_code == 0
    assert "\x1b" not in shown.output and "\x07" not in shown.output
    assert "\\x1b]0;owned\\x07" in shown.output and "[link=https://example.com]click" in shown.output
    assert "\\x1b[31mred" in shown.output and "do not find" not in shown.output
    as_json = run("log", "--grep", "find me", "--json")
    assert [json.loads(line)["id"] for line in as_json.output.splitlines()] == [evil.id]
    assert "\x1b" not in as_json.output  # JSON escapes it


def test_export_mistakes_exit_1_with_a_message_and_no_warning(run, home: Path, tmp_path: Path) -> None:
    run("init")
    run("add", "hello", "-m", "echo")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x)").connection.close()
    for target, message in [
        (tmp_path, "is a folder: name the export's file"),
        (tmp_path / "missing" / "h.db", "is not a folder"),
        (notes, "is not a SQLite database: refusing to overwrite it"),
        (other, "is a SQLite database but not a syncq export"),
    ]:
        result = run("export", str(target))
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert WARNING not in result.output  # nothing was written: nothing to warn of
    assert notes.read_text() == "keep me"
    assert run("export").exit_code == 2  # no FILE: a usage error
