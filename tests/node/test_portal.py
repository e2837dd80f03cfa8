"""The file portal with real node processes: folders in, folders out, bad requests, kill -9."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import laptop_and_gpu, wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow


def drop(home: Path, name: str, request: str, *, filename: str = "request.yaml", tmp: Path) -> Path:
    """What a client does: write the folder elsewhere, then rename it into the inbox (shell mv)."""
    staging = tmp / "staging" / name
    staging.mkdir(parents=True)
    (staging / filename).write_text(request)
    inbox = home / "portal" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mv", str(staging), str(inbox / name)], check=True)
    return inbox / name


def outbox(home: Path) -> dict[str, dict]:
    """Delivered results by request: prompt id -> result.json."""
    folder = home / "portal" / "outbox"
    return (
        {d.name: json.loads((d / "result.json").read_text()) for d in folder.iterdir()}
        if folder.exists()
        else {}
    )


def errors(home: Path) -> dict[str, str]:
    folder = home / "portal" / "errors"
    return {d.name: (d / "error.txt").read_text() for d in folder.iterdir()} if folder.exists() else {}


def prompts(home: Path) -> list[str]:
    with Space.open(home) as space:
        return [e.prompt.input for e in space.entries(limit=None)]


def test_a_shell_client_gets_its_answer_from_another_node(tmp_path: Path, nodes) -> None:
    hub, _ = laptop_and_gpu(tmp_path, nodes)
    hub.wait_event("portal")
    drop(tmp_path / "laptop", "ask", "model: echo\nprompt: hello portal\n", tmp=tmp_path)
    drop(
        tmp_path / "laptop",
        "chat",
        json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi as json"}]}),
        filename="request.json",
        tmp=tmp_path,
    )
    delivered = wait_until(lambda: len(outbox(tmp_path / "laptop")) == 2 and outbox(tmp_path / "laptop"))
    by_text = {r["text"]: r for r in delivered.values()}
    assert set(by_text) == {"hello portal", "hi as json"}
    assert all(r["status"] == "done" and r["node_name"] == "gpu" for r in by_text.values())
    for prompt_id, result in delivered.items():
        folder = tmp_path / "laptop" / "portal" / "outbox" / prompt_id
        assert result["id"] == prompt_id
        assert (folder / "request.json").exists() or (folder / "request.yaml").exists()
    assert not list((tmp_path / "laptop" / "portal" / "inbox").iterdir())
    assert not list((tmp_path / "laptop" / "portal" / "queued").iterdir())


def test_requests_dropped_while_the_node_is_down_are_taken_at_start(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "a", name="a").close()
    for i in range(5):
        drop(tmp_path / "a", f"r{i}", f"model: echo\nprompt: early {i}\n", tmp=tmp_path)
    nodes(tmp_path / "a")
    delivered = wait_until(lambda: len(outbox(tmp_path / "a")) == 5 and outbox(tmp_path / "a"))
    assert sorted(r["text"] for r in delivered.values()) == [f"early {i}" for i in range(5)]


def test_every_bad_request_lands_in_errors_with_the_reason(tmp_path: Path, nodes) -> None:
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    node = nodes(home)
    node.wait_event("portal")
    bad = {
        "yaml": ("model: echo\nprompt: [unclosed\n", "request.yaml", "not valid YAML"),
        "json": ('{"model": "echo", ', "request.json", "not valid JSON"),
        "nomodel": ("prompt: hi\n", "request.yaml", "model: is missing"),
        "unknown-model": (
            "model: nobody-has-this\nprompt: hi\n",
            "request.yaml",
            "no node of this space serves",
        ),
        "field": ("model: echo\nprompt: hi\ncolour: red\n", "request.yaml", "unknown field(s) colour"),
        "param": ("model: echo\nprompt: hi\nparams: {max_tokens: -3}\n", "request.yaml", "max_tokens"),
        "nomessages": ("model: echo\nmessages: []\n", "request.yaml", "non-empty list of {role, content}"),
    }
    for name, (text, filename, _) in bad.items():
        drop(home, name, text, filename=filename, tmp=tmp_path)
    empty = tmp_path / "staging" / "empty"
    empty.mkdir(parents=True)
    os.rename(empty, home / "portal" / "inbox" / "empty")
    huge = tmp_path / "staging" / "huge"
    huge.mkdir()
    (huge / "request.yaml").write_text("model: echo\nprompt: hi\n")
    with open(huge / "big.bin", "wb") as f:
        f.truncate(10 << 30)  # a sparse 10 GB file: refused by its size, never read
    os.rename(huge, home / "portal" / "inbox" / "huge")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "request.yaml").write_text("model: echo\nprompt: through a link\n")
    os.symlink(target, home / "portal" / "inbox" / "link")
    found = wait_until(lambda: len(errors(home)) == len(bad) + 3 and errors(home))
    for name, (_, _, reason) in bad.items():
        assert reason in found[name], (name, found[name])
    assert "no request.yaml or request.json" in found["empty"]
    assert "more than 512 MiB" in found["huge"]
    assert "symbolic link" in found["link"]
    assert (home / "portal" / "errors" / "link" / "link").is_symlink()  # moved, not followed
    assert (target / "request.yaml").exists() and not (target / "error.txt").exists()
    drop(home, "good", "model: echo\nprompt: still serving\n", tmp=tmp_path)
    wait_until(lambda: [r["text"] for r in outbox(home).values()] == ["still serving"])
    assert node.alive


def test_a_crash_at_any_step_neither_loses_nor_duplicates_a_request(tmp_path: Path, nodes) -> None:
    """The states a kill -9 can leave, one per step, then a real kill -9 during a burst."""
    home = tmp_path / "a"
    with Space.init(home, name="a") as space:
        ids = [space.new_prompt_id() for _ in range(3)]
        # after step 1: the id is recorded, the folder still in the inbox
        after_id = drop(home, "step1", "model: echo\nprompt: step one\n", tmp=tmp_path)
        (after_id / ".syncq-id").write_text(ids[0])
        # after step 2: moved to queued/ID, never added
        (home / "portal" / "queued").mkdir(parents=True)
        moved = drop(home, "step2", "model: echo\nprompt: step two\n", tmp=tmp_path)
        os.rename(moved, home / "portal" / "queued" / ids[1])
        # after step 3: added, then the crash
        added = drop(home, "step3", "model: echo\nprompt: step three\n", tmp=tmp_path)
        os.rename(added, home / "portal" / "queued" / ids[2])
        space.add("step three", model="echo", prompt_id=ids[2])
    node = nodes(home)
    delivered = wait_until(lambda: len(outbox(home)) == 3 and outbox(home))
    assert sorted(delivered) == sorted(ids)
    assert sorted(prompts(home)) == ["step one", "step three", "step two"]

    for i in range(20):
        drop(home, f"burst{i}", f"model: echo\nprompt: burst {i}\n", tmp=tmp_path)
    node.wait_event("portal-queued", timeout=30)  # the burst is being taken: kill -9 in the middle
    node.kill()
    nodes(home)
    wait_until(lambda: len(outbox(home)) == 23, timeout=60, what="every burst request delivered")
    burst = sorted(p for p in prompts(home) if p.startswith("burst"))
    assert burst == sorted(f"burst {i}" for i in range(20))  # each exactly once
    assert not errors(home)


def test_defaults_cascade_a_second_portal_and_partial_output_while_streaming(tmp_path: Path, nodes) -> None:
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    extra = tmp_path / "app-portal"
    (home / "config.toml").write_text(f'[node]\nportals = ["{extra}"]\n')
    extra.mkdir()
    (extra / "defaults.yaml").write_text("model: echo\nparams: {delay: 1.5}\n")
    node = nodes(home)
    wait_until(lambda: len(node.find("portal")) == 2, what="both portals")
    staging = tmp_path / "staging" / "slow"
    staging.mkdir(parents=True)
    (staging / "request.yaml").write_text(
        "prompt: several words streamed one by one\n"
    )  # no model: the default
    os.rename(staging, extra / "inbox" / "slow")
    queued = wait_until(lambda: list((extra / "queued").iterdir()), what="the request queued")[0]
    partial = wait_until(lambda: (queued / "partial.txt").exists() and (queued / "partial.txt").read_text())
    assert "several words streamed one by one".startswith(partial) and partial != ""
    delivered = wait_until(lambda: list((extra / "outbox").iterdir()), what="the answer")[0]
    result = json.loads((delivered / "result.json").read_text())
    assert result["text"] == "several words streamed one by one" and result["model"] == "echo"
    assert (delivered / "answer.txt").read_text() == result["text"]
