"""``syncq export``'s path handling: a file name is a file name, whatever SQLite makes of it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from syncq.export import export
from syncq.space import Space


def test_an_export_named_like_sqlites_memory_database_goes_into_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Space.init(tmp_path / "home", name="laptop") as space:
        space.add("the walrus", model="echo")
        monkeypatch.chdir(tmp_path)
        summary = export(space, ":memory:")
    assert summary.written == 1
    made = tmp_path / ":memory:"
    assert os.stat(made).st_mode & 0o077 == 0
    with sqlite3.connect(made) as conn:
        assert conn.execute("SELECT input FROM prompts").fetchall() == [("the walrus",)]
