"""The local view against interleavings, hostile members and local tampering: whenever
``Replica.reader`` answers, it answers as a freshly loaded Doc would."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from syncq.errors import AmbiguousId
from syncq.records import Claim
from syncq.space import Space
from tests.syncq.test_view import answers, done, from_doc, from_view


def test_a_writer_overtaken_between_reading_and_writing_never_leaves_older_rows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as first:
        prompt = first.add("hello", model="echo")
    node, other = Space.open(home), Space.open(home)  # two processes, each with its Doc loaded
    try:
        node.log  # noqa: B018
        other.log  # noqa: B018
        node.put_claim(Claim(prompt_id=prompt.id, node=node.device_id, attempt=1, heartbeat=1, running=True))
        # The other process brings its Doc and then the view up to the claim; between working
        # out its rows and writing them, the node cancels the prompt (and writes its row).
        write = other.store.view.write

        def overtaken(*args: Any, **kwargs: Any) -> bool:
            node.cancel(prompt.id)
            return write(*args, **kwargs)

        other.store.view.write = overtaken  # type: ignore[method-assign]
        other.log  # noqa: B018
        other.store.view.write = write  # type: ignore[method-assign]
    finally:
        node.close()
        other.close()
    viewed = from_view(home)
    assert viewed is None or viewed == from_doc(home)
