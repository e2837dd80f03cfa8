"""A node task that crashes is logged with its traceback, restarted with backoff, and shown by
`syncq status` (before, it ended silently and the node ran on without it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow


def run_syncq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([SYNCQ, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_crashed_portal_is_logged_restarted_and_shown_by_status(tmp_path: Path, nodes) -> None:
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    (home / "portal").mkdir()
    (home / "portal" / "inbox").write_text("a file where the inbox folder should be")  # a real fault
    node = nodes(home)
    crashed = node.wait_event("task-crashed", task="portal")
    assert crashed["level"] == "error" and crashed["reason"].startswith("FileExistsError")
    assert "Traceback (most recent call last)" in crashed["traceback"] and "portal.py" in crashed["traceback"]
    wait_until(lambda: len(node.find("task-restarted", task="portal")) >= 2, what="two restarts")
    delays = [e["delay"] for e in node.find("task-crashed", task="portal")]
    assert delays[:3] == sorted(delays[:3]) and delays[1] == 2 * delays[0]  # backing off, not spinning

    status = run_syncq(home, "status")
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if "portal:" in line)
    assert "restarted" in line and "times, last error: FileExistsError" in line, status.stdout
    as_json = json.loads(run_syncq(home, "status", "--json").stdout)
    portal = as_json["node_tasks"]["portal"]
    assert portal["restarts"] >= 2 and portal["last_error"].startswith("FileExistsError")

    # Fix the fault: the next restart serves the portal.
    os.remove(home / "portal" / "inbox")
    node.wait_event("portal", timeout=90)
    staging = tmp_path / "ask"
    staging.mkdir()
    (staging / "request.yaml").write_text("model: echo\nprompt: served again\n")
    os.rename(staging, home / "portal" / "inbox" / "ask")
    outbox = home / "portal" / "outbox"
    delivered = wait_until(lambda: list(outbox.iterdir()), what="the answer")
    assert json.loads((delivered[0] / "result.json").read_text())["text"] == "served again"
    assert node.alive


def test_a_healthy_node_shows_no_restarted_tasks(tmp_path: Path, nodes) -> None:
    home = tmp_path / "a"
    Space.init(home, name="a").close()
    nodes(home).wait_event("portal")
    assert json.loads(run_syncq(home, "status", "--json").stdout)["node_tasks"] == {}
    assert "restarted" not in run_syncq(home, "status").stdout
