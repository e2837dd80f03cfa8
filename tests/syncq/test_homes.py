"""A home is private: its folders 0700, its files 0600, fixed on open with a notice, and kept so
by the node (the database, the portal's folders and results, work/ files, attachments)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, wait_until

from syncq.space import Space


def run_syncq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    return subprocess.run([SYNCQ, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose(home: Path) -> list[str]:
    """Every folder of the home that is not 0700 and every file that is not 0600."""
    found = []
    for path in [home, *home.rglob("*")]:
        wanted = 0o700 if path.is_dir() else 0o600
        if not path.is_symlink() and mode(path) != wanted:
            found.append(f"{path.relative_to(home)} {mode(path):o}")
    return found


def test_a_home_others_can_read_is_made_private_on_open_with_one_notice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Space.init(home, name="a").close()
    os.chmod(home, 0o755)  # noqa: S103 - the case under test
    os.chmod(home / "syncq.db", 0o644)
    (home / "config.toml").write_text('[node]\napi_token = "secret"\n')
    os.chmod(home / "config.toml", 0o644)
    first = run_syncq(home, "status")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("notice:") == 1 and "made it private" in first.stderr
    assert mode(home) == 0o700 and mode(home / "syncq.db") == 0o600 and mode(home / "config.toml") == 0o600
    again = run_syncq(home, "status")
    assert again.returncode == 0 and "notice" not in again.stderr  # said once: nothing left to fix


def test_a_key_file_others_can_read_is_still_refused_not_fixed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Space.init(home, name="a").close()
    os.chmod(home / "space.key", 0o644)
    refused = run_syncq(home, "status")
    assert refused.returncode == 1 and "chmod 600" in refused.stderr
    assert mode(home / "space.key") == 0o644  # its secret may have leaked: the user decides


@pytest.mark.slow
def test_after_the_node_ran_every_folder_of_the_home_is_0700_and_every_file_0600(
    tmp_path: Path, nodes
) -> None:
    old = os.umask(0o022)  # the client's usual umask: what it writes is 0755 and 0644
    try:
        home = tmp_path / "home"
        Space.init(home, name="a").close()
        os.chmod(home, 0o755)  # noqa: S103 - the case under test
        left = home / "portal" / "outbox" / "from-an-older-node"  # what an older syncq left
        left.mkdir(parents=True)
        (left / "result.json").write_text("{}")
        node = nodes(home)
        node.wait_event("portal")
        assert node.wait_event("home-private")["count"] >= 3
        try:
            staging = tmp_path / "ask"
            staging.mkdir()
            (staging / "request.yaml").write_text("model: echo\nprompt: private\nfiles: [note.txt]\n")
            (staging / "note.txt").write_text("an attachment, copied back by echo")
            os.rename(staging, home / "portal" / "inbox" / "ask")
            outbox = home / "portal" / "outbox"
            done = wait_until(lambda: [d for d in outbox.iterdir() if d != left], what="the answer")
            assert json.loads((done[0] / "result.json").read_text())["status"] == "done"
            bad = tmp_path / "bad"
            bad.mkdir()
            (bad / "request.yaml").write_text("model: echo\nprompt: [unclosed\n")
            os.rename(bad, home / "portal" / "inbox" / "bad")
            wait_until(lambda: (home / "portal" / "errors" / "bad" / "error.txt").exists(), what="errors/bad")
        finally:
            assert node.stop() == 0
        assert (home / "work").is_dir() and (home / "blobs").is_dir()
        assert loose(home) == []
    finally:
        os.umask(old)
