"""Hostile portal folders against a real node: each lands in errors/ with error.txt, and the
portal goes on serving (before, any one of them ended the portal task for good, silently)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow

DEEP = 50_000
HOSTILE = {
    "params-list": (
        "request.yaml",
        b"model: echo\nprompt: hi\nparams: [1, 2]\n",
        "params: must be a mapping",
    ),
    "not-utf8": ("request.yaml", b"model: echo\nprompt: caf\xe9 \xff\n", "not UTF-8"),
    "infinite-priority": ("request.yaml", b"model: echo\nprompt: hi\npriority: .inf\n", "priority: must be"),
    "deep-json": (
        "request.json",
        b'{"model": "echo", "prompt": "hi", "params": {"x": ' + b"[" * DEEP + b"]" * DEEP + b"}}",
        "nested more than 32 levels",
    ),
    "deep-yaml": (
        "request.yaml",
        b"model: echo\nprompt: hi\nparams: {x: " + b"[" * DEEP + b"]" * DEEP + b"}\n",
        "nested more than 32 levels",
    ),
}


def drop(inbox: Path | bytes, name: str | bytes, filename: str, data: bytes, tmp: Path) -> None:
    """Write a request folder elsewhere, then rename it into the inbox (names may be bytes)."""
    staging = tmp / "staging" / os.fsdecode(name)
    staging.mkdir(parents=True)
    (staging / filename).write_bytes(data)
    os.rename(os.fsencode(staging), os.path.join(os.fsencode(inbox), os.fsencode(name)))


def results(home: Path) -> list[dict]:
    folder = home / "portal" / "outbox"
    return [json.loads((d / "result.json").read_text()) for d in folder.iterdir()] if folder.exists() else []


def errors(home: Path) -> dict[bytes, str]:
    """error.txt of each folder in errors/, by its name as bytes (as it is on disk)."""
    folder = os.fsencode(home / "portal" / "errors")
    if not os.path.isdir(folder):
        return {}
    return {
        name: Path(os.fsdecode(os.path.join(folder, name, b"error.txt"))).read_text()
        for name in os.listdir(folder)
    }


def served(home: Path, node, text: str) -> None:
    """A good request dropped now is still taken and done."""
    drop(
        home / "portal" / "inbox",
        "good",
        "request.yaml",
        f"model: echo\nprompt: {text}\n".encode(),
        home.parent,
    )
    wait_until(lambda: [r["text"] for r in results(home)] == [text], what="the good request's answer")
    assert results(home)[0]["status"] == "done"
    assert node.alive


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_request_lands_in_errors_and_the_next_one_is_served(
    tmp_path: Path, nodes, case: str
) -> None:
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    node = nodes(home)
    node.wait_event("portal")
    filename, data, reason = HOSTILE[case]
    drop(home / "portal" / "inbox", case, filename, data, tmp_path)
    found = wait_until(lambda: errors(home), what="the hostile request in errors/")
    assert list(found) == [case.encode()]
    assert reason in found[case.encode()], found
    assert "Traceback" not in found[case.encode()]  # the request's fault, not ours
    served(home, node, "still serving")
    assert not node.find("portal-bug")


def test_a_folder_named_in_bytes_that_are_not_utf8_goes_to_errors_under_a_safe_name(
    tmp_path: Path, nodes
) -> None:
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    node = nodes(home)
    node.wait_event("portal")
    drop(home / "portal" / "inbox", b"\xff\xfe", "request.yaml", b"model: echo\nprompt: hi\n", tmp_path)
    found = wait_until(lambda: errors(home), what="the folder in errors/")
    assert list(found) == [b"\\xff\\xfe"]  # the escaped name, in UTF-8
    assert "not valid UTF-8" in found[b"\\xff\\xfe"]
    served(home, node, "still serving")


def test_a_bad_folder_left_in_queued_does_not_stop_the_portal_after_a_restart(tmp_path: Path, nodes) -> None:
    """What the old node left behind: a request moved to queued/ID whose add then crashed."""
    home = tmp_path / "a"
    with Space.init(home, name="a") as space:
        prompt_id = space.new_prompt_id()
    queued = home / "portal" / "queued"
    queued.mkdir(parents=True)
    drop(queued, prompt_id, "request.yaml", b"model: echo\nprompt: hi\npriority: .inf\n", tmp_path)
    (queued / prompt_id / ".syncq-id").write_text(f"{prompt_id}\nforever\n")
    node = nodes(home)
    found = wait_until(lambda: errors(home), what="the queued folder in errors/")
    assert list(found) == [b"forever"] and "priority: must be a whole number" in found[b"forever"]
    served(home, node, "served after the restart")


def test_a_copied_in_folder_is_taken_only_once_its_files_stop_changing(tmp_path: Path, nodes) -> None:
    """A real writer process makes the folder in the inbox and appends a 20 MiB file in chunks
    while the node watches; the prompt gets the whole file. A renamed folder is taken at once."""
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    node = nodes(home)
    node.wait_event("portal")
    size, chunk = 20 << 20, 256 << 10
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home / "portal" / "inbox" / "copied"), str(size), str(chunk)]
    )
    drop(home / "portal" / "inbox", "renamed", "request.yaml", b"model: echo\nprompt: renamed\n", tmp_path)
    assert writer.wait(timeout=120) == 0
    done = wait_until(lambda: len(results(home)) == 2 or errors(home), timeout=60, what="both requests")
    assert done is True, errors(home)
    by_text = {r["text"]: r for r in results(home)}
    assert by_text["the whole file"]["status"] == "done"
    assert by_text["the whole file"]["files"] == ["big.bin"]  # echo's copy: the very same bytes
    with Space.open(home) as space:
        entry = space.log.entry(by_text["the whole file"]["id"])
        assert [f.size for f in entry.prompt.files] == [size]
    outbox = home / "portal" / "outbox" / by_text["the whole file"]["id"]
    assert (outbox / "big.bin").read_bytes() == b"".join(
        bytes([i % 251]) * chunk for i in range(size // chunk)
    )
    assert node.find("portal-settling", request="copied")
    assert not node.find("portal-settling", request="renamed")  # a rename is whole: no waiting


WRITER = """
import os, sys, time
folder, size, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.mkdir(folder)
with open(os.path.join(folder, "request.yaml"), "w") as f:
    f.write("model: echo\\nprompt: the whole file\\nfiles: [big.bin]\\n")
with open(os.path.join(folder, "big.bin"), "wb") as f:
    for i in range(size // chunk):
        f.write(bytes([i % 251]) * chunk)
        f.flush()
        time.sleep(0.02)  # a slow writer (a download, a recorder): the case under test
"""


@pytest.mark.parametrize("recorded", ["absolute", "dotdot"])
def test_a_recorded_name_cannot_move_a_rejected_folder_out_of_errors(
    tmp_path: Path, nodes, recorded: str
) -> None:
    # .syncq-id is written by the portal, but a client may ship one: its second line (the name
    # the folder came with) must not make a path outside errors/.
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    node = nodes(home)
    node.wait_event("portal")
    outside = tmp_path / "escaped"
    name = str(outside) if recorded == "absolute" else "../../../escaped"
    staging = tmp_path / "staging" / "sneaky"
    staging.mkdir(parents=True)
    (staging / "request.yaml").write_bytes(b"model: echo\nprompt: hi\nparams: [1, 2]\n")
    (staging / ".syncq-id").write_text(f"\n{name}\n")
    os.rename(staging, home / "portal" / "inbox" / "sneaky")
    found = wait_until(lambda: errors(home), what="the request in errors/")
    assert list(found) == [b"sneaky"]
    assert not outside.exists()
    served(home, node, "still serving")


def test_a_folder_that_turns_into_a_file_while_it_settles_is_looked_at_again(tmp_path: Path) -> None:
    from syncq.node.portal_settle import snapshot

    thing = tmp_path / "was-a-folder"
    thing.write_bytes(b"x")
    assert snapshot(thing, 10) == ((".", True, -1, -1),)  # no NotADirectoryError out of the portal
