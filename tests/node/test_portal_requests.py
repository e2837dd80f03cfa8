"""The portal's request reader and its settling rule, without a node: any bytes either give a
checked request or raise ``BadRequest`` (the fuzz contract), and a copied-in folder is whole
only once it stopped changing (clock given in, no sleeps)."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from syncq.node.portal_requests import MAX_DEPTH, BadRequest, parse, read_request
from syncq.node.portal_settle import Settling, renamed_names

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
DOCS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(["model", "prompt", "messages", "params", "priority", "max_attempts", "files", "x"])


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / name).write_bytes(data)
    return folder


def read_or_refuse(folder: Path) -> None:
    try:
        request = read_request(folder, {})
    except BadRequest as exc:
        message = str(exc)
        assert message, "a message fit for error.txt"
        return
    # What got through is what the portal can use: typed fields, nothing deep.
    assert isinstance(request["model"], str) and isinstance(request["params"], dict)
    assert all(isinstance(v, str | int | float | bool) or v is None for v in request["params"].values())
    for field in ("priority", "max_attempts"):
        assert field not in request or (
            isinstance(request[field], int) and not isinstance(request[field], bool)
        )


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.binary(max_size=300), json_file=st.booleans())
def test_any_bytes_give_a_checked_request_or_bad_request(
    tmp_path: Path, data: bytes, json_file: bool
) -> None:
    read_or_refuse(write(tmp_path / "r", "request.json" if json_file else "request.yaml", data))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(doc=st.dictionaries(FIELDS, DOCS, max_size=6), json_file=st.booleans())
def test_any_document_gives_a_checked_request_or_bad_request(
    tmp_path: Path, doc: dict, json_file: bool
) -> None:
    text = json.dumps(doc) if json_file else yaml.safe_dump(doc)
    read_or_refuse(write(tmp_path / "r", "request.json" if json_file else "request.yaml", text.encode()))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_nesting_is_capped_quickly_however_deep(tmp_path: Path, suffix: str) -> None:
    deep = (1 << 20) // 2 - 10
    path = tmp_path / f"request{suffix}"
    path.write_bytes(b'{"x": ' + b"[" * deep + b"]" * deep + b"}")
    started = time.monotonic()
    with pytest.raises(BadRequest, match=f"nested more than {MAX_DEPTH} levels"):
        parse(path)
    assert time.monotonic() - started < 10  # no quadratic scan, no stack blown
    path.write_bytes(b'{"x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}")
    assert parse(path) == json.loads(path.read_bytes())  # at the cap: fine


def test_unterminated_escapes_are_refused_in_linear_time(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_bytes(b'{"x": "' + b'\\"' * 400_000)
    started = time.monotonic()
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse(path)
    assert time.monotonic() - started < 10


def test_a_copied_folder_is_whole_once_unchanged_for_the_settle_time(tmp_path: Path) -> None:
    folder = tmp_path / "copied"
    folder.mkdir()
    (folder / "big.bin").write_bytes(b"x" * 10)
    settling = Settling(settle_s=2.0)
    assert not settling.ready(folder, now=100.0)  # first look
    assert not settling.ready(folder, now=101.0)  # unchanged, not yet long enough
    with open(folder / "big.bin", "ab") as f:
        f.write(b"more")  # still being written
    assert not settling.ready(folder, now=102.5)  # changed: the wait starts again
    assert not settling.ready(folder, now=104.0)
    assert settling.ready(folder, now=104.5)
    (folder / "sub").mkdir()
    assert not settling.ready(folder, now=104.6)  # a new folder inside: changed


def test_a_renamed_folder_is_whole_at_once_and_a_created_one_is_not(tmp_path: Path) -> None:
    def event(mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name) % 16)
        return struct.pack("iIII", 1, mask, 0, len(padded)) + padded

    data = event(0x80, b"renamed") + event(0x100, b"copied") + event(0x80, b"\xff\xfe")
    moved, created = renamed_names(data)
    assert moved == {"renamed", os.fsdecode(b"\xff\xfe")} and created == {"copied"}
    settling = Settling()
    settling.events(data)
    (tmp_path / "renamed").mkdir()
    (tmp_path / "copied").mkdir()
    assert settling.ready(tmp_path / "renamed", now=0.0)
    assert not settling.ready(tmp_path / "copied", now=0.0)
    settling.keep({"copied"})  # renamed went away
    assert not settling.ready(tmp_path / "renamed", now=0.0)
