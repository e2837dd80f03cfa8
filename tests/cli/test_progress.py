"""The progress bar of big attachments, drawn only when stderr is a terminal (a real pty)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
from pathlib import Path

from syncq.space import Space

from ..conftest import SYNCQ, run_syncq

BIG = 24 * 1024 * 1024  # over the CLI's 8 MiB threshold


def on_a_terminal(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `syncq` with stderr on a pseudo-terminal; returns the result and what the terminal got."""
    main, child = pty.openpty()
    env = {**os.environ, "SYNCQ_HOME": str(home), "COLUMNS": "120", "TERM": "xterm"}
    screen = bytearray()

    def drain() -> None:  # a full pty buffer would block the child
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO once the child side is closed
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [*SYNCQ, *args],
            stdout=subprocess.PIPE,
            stderr=child,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        os.close(child)
        reader.join(timeout=10)
        os.close(main)
    return done, screen.decode(errors="replace")


def test_a_big_file_shows_a_bar_while_sealing_and_saving_and_scripts_get_none(
    tmp_path: Path, space: Space, home: Path
) -> None:
    big = tmp_path / "talk.bin"
    big.write_bytes(os.urandom(BIG))

    added, screen = on_a_terminal(home, "add", "hello", "-m", "echo", "--file", str(big))
    assert added.returncode == 0, screen
    assert "sealing talk.bin" in screen and "24.0 MiB" in screen
    prompt_id = added.stdout.strip()

    saved, screen = on_a_terminal(home, "get", prompt_id, "--input", "-o", str(tmp_path / "out"))
    assert saved.returncode == 0, screen
    assert "fetching" in screen and "24.0 MiB" in screen
    assert (tmp_path / "out" / "talk.bin").read_bytes() == big.read_bytes()

    scripted, screen = on_a_terminal(home, "add", "again", "-m", "echo", "--file", str(big), "--json")
    assert scripted.returncode == 0 and json.loads(scripted.stdout)["files"][0]["name"] == "talk.bin"
    assert screen == ""  # --json: no bar, even on a terminal


def test_a_small_file_or_a_pipe_shows_no_bar(tmp_path: Path, space: Space, home: Path) -> None:
    small = tmp_path / "note.txt"
    small.write_text("short")
    added, screen = on_a_terminal(home, "add", "hello", "-m", "echo", "--file", str(small))
    assert added.returncode == 0 and screen == ""
    big = tmp_path / "talk.bin"
    big.write_bytes(os.urandom(BIG))
    piped = run_syncq(home, "add", "hello", "-m", "echo", "--file", str(big))
    assert piped.returncode == 0 and piped.stderr == ""
