"""Every command through click's runner (in-process), checking output, exit codes and errors."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from syncq.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def run(home: Path):
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)

    return invoke


def test_the_first_minute(run) -> None:
    assert run("init", "--name", "laptop").exit_code == 0
    added = run("add", "hello", "-m", "echo")
    assert added.exit_code == 0
    prompt_id = added.stdout.strip()
    assert re.fullmatch(r"[0-9A-Z]{26}", prompt_id)
    lines = run("log", "--json").stdout.splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["queued"]
    assert json.loads(lines[0])["id"] == prompt_id
    assert json.loads(lines[0])["input"] == "hello"


def test_add_reads_stdin_and_takes_params(run) -> None:
    run("init")
    out = run(
        "add",
        "-",
        "-m",
        "gemma3-270m",
        "--param",
        "max_tokens=32",
        "--param",
        "temperature=0.5",
        "--priority",
        "5",
        "--kind",
        "llm",
        "--json",
        input="from stdin\n",
    )
    assert out.exit_code == 0, out.output
    prompt = json.loads(out.stdout)
    shown = json.loads(run("show", prompt["id"][:22], "--json").stdout)
    assert shown["input"] == "from stdin\n"
    assert shown["params"] == {"max_tokens": 32, "temperature": 0.5}
    assert shown["priority"] == 5


def test_log_filters_and_human_output(run) -> None:
    run("init")
    first = run("add", "one", "-m", "echo").stdout.strip()
    run("add", "two", "-m", "other")
    run("cancel", first)
    assert [
        json.loads(x)["input"] for x in run("log", "--json", "--status", "queued").stdout.splitlines()
    ] == ["two"]
    assert [json.loads(x)["input"] for x in run("log", "--json", "--model", "echo").stdout.splitlines()] == [
        "one"
    ]
    assert [json.loads(x)["input"] for x in run("log", "--json", "--since", first).stdout.splitlines()] == [
        "two"
    ]
    assert [json.loads(x)["input"] for x in run("log", "--json", "-n", "1").stdout.splitlines()] == ["two"]
    human = run("log").output
    assert "cancelled" in human and "queued" in human and first[:10] in human


def test_show_cancel_and_status(run, home: Path) -> None:
    run("init", "--name", "laptop")
    prompt_id = run("add", "x", "-m", "echo").stdout.strip()
    assert "queued" in run("show", prompt_id).output
    assert run("cancel", prompt_id).output.strip() == f"{prompt_id} cancelled"
    again = run("cancel", prompt_id)
    assert again.exit_code == 1 and "cancelled already" in again.output
    status = json.loads(run("status", "--json").stdout)
    assert status["device_name"] == "laptop"
    assert status["counts"]["cancelled"] == 1 and status["prompts"] == 1
    assert status["envelopes"] == 4 and status["store_bytes"] > 0  # device list, device, add, cancel
    assert status["files"] == 0 and status["files_bytes"] == 0
    assert "laptop" in run("status").output
    note = home.parent / "note.txt"
    note.write_text("attached")
    run("add", "y", "-m", "echo", "--file", str(note))
    status = json.loads(run("status", "--json").stdout)
    assert status["files"] == 1 and status["files_bytes"] == len("attached") + 16  # sealed
    assert "1 attachment," in run("status").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "hi", "-m", "echo"], "run `syncq init` first"),
        (["log"], "run `syncq init` first"),
        (["status"], "run `syncq init` first"),
    ],
)
def test_commands_before_init_explain_what_to_do(run, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_user_mistakes_exit_1_with_a_message(run, home: Path) -> None:
    run("init")
    run("add", "one", "-m", "echo")
    run("add", "two", "-m", "echo")
    cases = {
        ("add", "   ", "-m", "echo"): "the prompt is empty",
        ("add", "x", "-m", "bad model"): "is not a model name",
        ("add", "x", "-m", "echo", "--param", "novalue"): "key=value",
        ("add", "x", "-m", "echo", "--priority", "99999"): "out of range",
        ("show", "0"): "ambiguous",
        ("show", "7ZZZZ"): "no prompt id starts with",
        ("show", "!!"): "is not an id",
        ("cancel", "7ZZZZ"): "no prompt id starts with",
        ("log", "--since", "7ZZZZ"): "no prompt id starts with",
        ("init",): "holds a space already",
        ("add", "-m", "echo"): "give the prompt's TEXT (or - to read it from stdin), or a --file",
        ("add", "x", "-m", "echo", "--param", "width=64"): "the kind is a guess",
    }
    for args, message in cases.items():
        result = run(*args)
        assert result.exit_code == 1, args
        assert message in result.output, (args, result.output)


def test_a_prompt_whose_input_is_its_file_needs_no_text(run, home: Path) -> None:
    run("init")
    talk = home.parent / "talk.wav"
    talk.write_bytes(b"RIFF")
    added = run("add", "--file", str(talk), "-m", "echo", "--json")
    assert added.exit_code == 0, added.output
    prompt = json.loads(added.stdout.splitlines()[-1])
    assert [f["name"] for f in prompt["files"]] == ["talk.wav"]
    assert json.loads(run("show", prompt["id"], "--json").stdout)["input"] == ""


def test_a_guessed_kind_says_it_was_guessed_and_suggests_the_right_one(run) -> None:
    # A home whose node never saw tiny-sd cannot know it takes images: llm is a guess.
    run("init")
    refused = run("add", "a red fox", "-m", "tiny-sd", "--param", "width=256")
    assert refused.exit_code == 1
    assert refused.output.strip() == (
        "Error: unknown parameter 'width' for llm prompts: the kind is a guess, as no node here has "
        "advertised model 'tiny-sd' yet; for an image model add --kind image"
    )
    assert run("add", "a red fox", "-m", "tiny-sd", "--param", "width=256", "--kind", "image").exit_code == 0
    unknown = run("add", "x", "-m", "tiny-sd", "--kind", "llm", "--param", "colour=1").output
    assert "known: " in unknown and not any(knob in unknown for knob in ("crash", "hang", "delay", "fail"))


def test_log_reads_well_at_80_columns(home: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["--home", str(home), "init"])
    for text, model in [
        ("a fairly long question about the sea and the stars", "gemma3-270m"),
        ("hi", "echo"),
    ]:
        runner.invoke(cli, ["--home", str(home), "add", text, "-m", model])
    cancelled = runner.invoke(cli, ["--home", str(home), "add", "stop me", "-m", "whisper-tiny.en"])
    runner.invoke(cli, ["--home", str(home), "cancel", cancelled.stdout.strip()])
    shown = runner.invoke(cli, ["--home", str(home), "log"], env={"COLUMNS": "80"}).output.splitlines()
    assert all(len(line) <= 80 for line in shown), shown
    assert shown[0].split() == ["id", "created", "model", "status", "prompt", "result"]
    assert [line.split()[2:4] for line in shown[1:]] == [
        ["gemma3-270m", "queued"],
        ["echo", "queued"],
        ["whisper-tiny.en", "cancelled"],
    ]
    assert "…" in shown[1] and "…" not in "".join(line.split()[3] for line in shown[1:])


def test_usage_errors_exit_2(run) -> None:
    run("init")
    assert run("add", "hi").exit_code == 2
    assert run("log", "--status", "sleeping").exit_code == 2
    assert run("frobnicate").exit_code == 2


def test_loose_key_permissions_are_refused_with_the_fix(run, home: Path) -> None:
    run("init")
    (home / "space.key").chmod(0o644)
    result = run("log")
    assert result.exit_code == 1
    assert f"chmod 600 {home / 'space.key'}" in result.output


def test_corrupt_and_foreign_databases_are_explained(run, home: Path) -> None:
    run("init")
    db = home / "syncq.db"
    for suffix in ("-wal", "-shm"):
        (home / f"syncq.db{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"garbage" * 1000)
    result = run("log")
    assert result.exit_code == 1 and "not a syncq database or is corrupt" in result.output
    db.unlink()
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    result = run("add", "x", "-m", "echo")
    assert result.exit_code == 1 and "another program" in result.output


def test_home_that_is_a_file_is_explained(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = CliRunner().invoke(cli, ["--home", str(a_file), "log"])
    assert result.exit_code == 2  # click refuses a --home that is not a directory
    result = CliRunner().invoke(cli, ["log"], env={"SYNCQ_HOME": str(a_file)})
    assert result.exit_code == 1 and "not a directory" in result.output


def test_init_if_missing_is_idempotent(run) -> None:
    assert run("init", "--if-missing").exit_code == 0
    assert run("init", "--if-missing").exit_code == 0
    assert run("init", "--if-missing", "--json").output == ""


def all_commands() -> list[str]:
    return cli.list_commands(click.Context(cli))


@pytest.mark.parametrize("command", all_commands())
def test_every_command_has_help_with_an_example_and_is_in_the_readme(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"syncq {command}" in README.read_text()
