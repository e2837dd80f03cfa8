"""The local view (syncq.view): `syncq log`, `show` and `status` read a few sealed rows instead
of loading the Doc, and answer exactly as the Doc does, whatever happened to the store."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncq.errors import InvalidState, UserError
from syncq.ids import PromptId
from syncq.records import Claim, Result, RunStatus
from syncq.space import Space

MODELS = ("echo", "gemma")


def answers(space: Space) -> tuple[Any, ...]:
    """Everything the CLI's reading commands ask of a space."""
    every = space.entries(limit=None)
    status = space.status()
    return (
        every,
        space.entries(limit=3),
        space.entries(limit=2, status="queued"),
        space.entries(limit=None, status="done"),
        space.entries(limit=None, model="gemma"),
        space.entries(limit=None, grep="ANSWER to"),
        space.entries(limit=2, grep="cli", status="queued"),
        space.entries(limit=None, since=every[len(every) // 2].prompt.id) if every else [],
        [space.show(e.prompt.id[:12]) for e in every],
        (status.prompts, dict(status.counts), status.devices),
    )


def from_doc(home: Path) -> tuple[Any, ...]:
    with Space.open(home) as space:
        space.log  # noqa: B018 - loaded: every read below is the Doc's
        return answers(space)


def from_view(home: Path) -> tuple[Any, ...] | None:
    """The answers read from the view, or None if it does not cover the store now."""
    with Space.open(home) as space:
        if space.replica.reader() is None:
            return None
        found = answers(space)
        assert space.replica.reader() is not None, "answering loaded the Doc"
        return found


def done(node: Space, prompt_id: str, attempt: int, status: RunStatus = RunStatus.DONE) -> Result:
    return Result(
        prompt_id=PromptId(prompt_id),
        node=node.device_id,
        node_name=node.name,
        attempt=attempt,
        status=status,
        output=f"answer to {prompt_id[-4:]}",
        error=None if status is RunStatus.DONE else "it broke",
        started_at=1,
        finished_at=2,
    )


STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "add",
                "cli_add",
                "sync",
                "claim",
                "finish",
                "fail",
                "stream",
                "cancel",
                "retry",
                "reopen",
                "checkpoint",
                "flush",
            ]
        ),
        st.integers(0, 50),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_the_view_answers_as_the_doc_does_after_any_history(
    tmp_path_factory: Any, steps: list[tuple[str, int]]
) -> None:
    root = tmp_path_factory.mktemp("view")
    laptop = Space.init(root / "laptop", name="laptop")
    gpu = Space.init(root / "gpu", name="gpu", secret=laptop.keys.secrets[0])
    gpu.log  # noqa: B018 - the gpu is a node: its Doc stays loaded, as a running node's does
    try:
        for op, n in steps:
            known = gpu.log.prompt_ids()
            target = known[n % len(known)] if known else None
            with contextlib.suppress(InvalidState, UserError):
                if op == "add":  # the laptop's own process (blind unless its Doc is loaded)
                    laptop.add(f"prompt {n}", model=MODELS[n % 2])
                elif op == "cli_add":  # another process of the laptop's home: `syncq add`
                    with Space.open(root / "laptop") as cli:
                        cli.add(f"cli {n}", model=MODELS[n % 2])
                elif op == "gpu_add":  # a prompt of the node's own API
                    gpu.add(f"api {n}", model=MODELS[n % 2])
                elif op == "sync":
                    gpu.receive(list(laptop.envelopes(gpu.version_vector())))
                    laptop.receive(list(gpu.envelopes(laptop.version_vector())))
                elif op == "claim" and target:
                    gpu.put_claim(
                        Claim(prompt_id=target, node=gpu.device_id, attempt=1, heartbeat=n, running=True)
                    )
                elif op in ("finish", "fail") and target:
                    gpu.finish(
                        done(gpu, target, 1 + n % 2, RunStatus.DONE if op == "finish" else RunStatus.FAILED)
                    )
                elif op == "stream" and target:
                    gpu.append_stream(target, f"word{n} ")
                elif op == "cancel" and laptop.log.prompt_ids():
                    laptop.cancel(laptop.log.prompt_ids()[n % len(laptop.log.prompt_ids())])
                elif op == "retry" and laptop.log.prompt_ids():
                    laptop.retry(laptop.log.prompt_ids()[n % len(laptop.log.prompt_ids())])
                elif op == "reopen":  # the laptop's process ends; the next one starts cold
                    laptop.close()
                    laptop = Space.open(root / "laptop")
                elif op == "checkpoint":
                    gpu.checkpoint()
                elif op == "flush":  # the node's timer (node/daemon.py, _keep_view)
                    gpu.replica.flush_view()
            for home in (root / "laptop", root / "gpu"):
                viewed = from_view(home)
                if viewed is not None:
                    assert viewed == from_doc(home), (op, home.name)
        # Once a process with the Doc flushed (a node's timer, or its close), the view covers
        # the store: the next reads need no Doc.
        for space, home in ((laptop, root / "laptop"), (gpu, root / "gpu")):
            space.log  # noqa: B018
            space.replica.flush_view()
            viewed = from_view(home)
            assert viewed is not None, f"the view of {home.name} does not cover its store"
            assert viewed == from_doc(home)
    finally:
        laptop.close()
        gpu.close()


def test_adds_from_cold_processes_keep_the_view_current(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Space.init(home, name="laptop").close()
    for i in range(5):  # each a fresh process's blind add, as `syncq add` is
        with Space.open(home) as cli:
            cli.add(f"question {i}", model="echo")
    viewed = from_view(home)
    assert viewed is not None, "blind adds into a fresh home left the view behind"
    assert [e.prompt.input for e in viewed[0]] == [f"question {i}" for i in range(5)]
    assert viewed == from_doc(home)


def test_envelopes_stored_behind_the_views_back_make_readers_load_the_doc(tmp_path: Path) -> None:
    with Space.init(tmp_path / "laptop", name="laptop") as laptop:
        gpu = Space.init(tmp_path / "gpu", name="gpu", secret=laptop.keys.secrets[0])
        prompt = laptop.add("first", model="echo")
        gpu.receive(list(laptop.envelopes()))
        gpu.put_claim(Claim(prompt_id=prompt.id, node=gpu.device_id, attempt=1, heartbeat=1, running=True))
        claim = list(gpu.store.rows(gpu.device.public_key))
        gpu.close()
        laptop.log  # noqa: B018
    assert from_view(tmp_path / "laptop") is not None
    # Stored without the Doc or the view seeing it (a process killed between the two writes).
    with Space.open(tmp_path / "laptop") as raw:
        assert raw.store.put(claim).added
    assert from_view(tmp_path / "laptop") is None
    assert from_doc(tmp_path / "laptop")[0][0].status.value == "running"
    assert from_view(tmp_path / "laptop") == from_doc(tmp_path / "laptop")  # the Doc's load caught it up


def test_no_prompt_text_is_on_disk_in_the_clear(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = "the walrus sings at midnight"  # noqa: S105 - a prompt, not a password
    with Space.init(home, name="laptop") as space:
        prompt = space.add(secret, model="echo")
        space.finish(done(space, prompt.id, 1))
        space.log  # noqa: B018
    assert from_view(home) is not None
    with Space.open(home) as space:
        space.store.sync()
    data = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert secret.encode() not in data and b"answer to" not in data
    with sqlite3.connect(home / "syncq.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM view").fetchone()[0] == 1


def test_a_damaged_row_is_never_shown_and_the_view_is_rebuilt(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
        space.log  # noqa: B018
    with sqlite3.connect(home / "syncq.db") as conn:
        (data,) = conn.execute("SELECT data FROM view").fetchone()
        conn.execute("UPDATE view SET data = ?", (bytes(data[:-1]) + bytes([data[-1] ^ 1]),))
    with Space.open(home) as space:
        assert space.show(prompt.id).prompt.input == "hello"  # from the Doc, not the bad row
        assert space.store.rejections().get("bad-tag") == 1
    assert from_view(home) == from_doc(home)


def test_an_old_home_gets_its_view_on_first_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        for i in range(3):
            space.add(f"q{i}", model="echo")
        space.checkpoint()  # the Doc's next load starts from it: nothing is replayed
    with sqlite3.connect(home / "syncq.db") as conn:  # as schema 3 left it: no view at all
        for trigger in ("view_added", "view_removed", "view_moved"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE view")
        conn.execute("DROP TABLE view_counts")
        conn.execute("DELETE FROM meta WHERE key IN ('view.state', 'store.generation')")
        conn.execute("PRAGMA user_version = 3")
    assert from_view(home) is None
    assert [e.prompt.input for e in from_doc(home)[0]] == ["q0", "q1", "q2"]
    assert from_view(home) == from_doc(home)
    assert from_view(home)[-1][:2] == (3, {"queued": 3})  # the counts kept by the new triggers
    assert os.stat(home / "syncq.db").st_mode & 0o077 == 0
