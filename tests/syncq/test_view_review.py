"""The local view against interleavings, hostile members and local tampering: whenever
``Replica.reader`` answers, it answers as a freshly loaded Doc would."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from syncq.errors import AmbiguousId
from syncq.records import Claim
from syncq.space import Space
from tests.syncq.test_view import done, from_doc, from_view

OLD_NODE = (
    "a node of the previous version, still running after an upgrade, stores and voids without"
    " moving the store generation: SQLite triggers on envelopes and quarantine would make any"
    " writer move it (the review's schema-5 fix, not ported this session)"
)


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


def _removed_phone_writes_after_its_cutoff(
    tmp_path: Path,
) -> tuple[Space, Space, list[bytes], list[tuple[bytes, int]]]:
    """A founder, a gpu and a phone; the founder removes the phone, which (not knowing yet)
    adds a prompt and answers the founder's one; the gpu gets these before the removal.
    Returns the founder, the gpu, the founder's envelopes the gpu lacks (the removal) and the
    (author, seq) of the phone's two envelopes that the removal voids."""
    from tests.helpers.spaces import join

    founder = Space.init(tmp_path / "founder", name="laptop", device_list=True)
    gpu = join(tmp_path / "gpu", founder, "gpu")
    phone = join(tmp_path / "phone", founder, "phone")
    asked = founder.add("a real question", model="echo")
    for _ in range(2):
        for a in (founder, gpu, phone):
            for b in (founder, gpu, phone):
                if a is not b:
                    b.receive(list(a.envelopes(b.version_vector())))
    founder.remove_device("phone")
    phone.add("written by the thief", model="echo")
    phone.finish(done(phone, asked.id, 1))  # a forged answer to the founder's prompt
    report = gpu.receive(list(phone.envelopes(gpu.version_vector())))
    assert report.added == 2
    removal = list(founder.envelopes(gpu.version_vector()))
    phone.close()
    return founder, gpu, removal, report.accepted


def test_what_a_removed_device_wrote_does_not_outlive_its_voiding_in_the_view(tmp_path: Path) -> None:
    founder, gpu, removal, _ = _removed_phone_writes_after_its_cutoff(tmp_path)
    home = tmp_path / "gpu"
    client = Space.open(home)  # a long-lived process of the gpu's home with its Doc loaded
    try:
        client.log  # noqa: B018
        assert len(client.entries()) == 2  # its Doc holds the thief's prompt and answer
        gpu.receive(removal)  # the gpu's node voids them (and drops its own Doc)
        client.add("asked by the client", model="echo")  # its next write brings the view up to the store
    finally:
        client.close()
        gpu.close()
        founder.close()
    doc = from_doc(home)
    assert [e.prompt.input for e in doc[0]] == ["a real question", "asked by the client"]
    assert doc[0][0].result is None
    viewed = from_view(home)
    assert viewed is None or [e.prompt.input for e in viewed[0]] == [e.prompt.input for e in doc[0]]
    assert viewed is None or viewed == doc


def test_a_reader_that_rebuilds_the_view_while_a_void_begins_leaves_nothing_voided_in_it(
    tmp_path: Path,
) -> None:
    founder, gpu, removal, _ = _removed_phone_writes_after_its_cutoff(tmp_path)
    home = tmp_path / "gpu"
    cli = Space.open(home)  # a `syncq log` of the gpu's home, opened before the removal came
    mark = gpu.store.mark
    raced: list[bool] = []

    def mark_after_a_reader(*args: Any, **kwargs: Any) -> None:
        if not raced:  # it reads once the void has begun, before its first mark
            raced.append(True)
            assert len(cli.entries()) == 2  # its Doc, and so the view, still hold them
            cli.close()
        mark(*args, **kwargs)

    gpu.store.mark = mark_after_a_reader  # type: ignore[method-assign]
    try:
        gpu.receive(removal)
    finally:
        gpu.store.mark = mark  # type: ignore[method-assign]
        cli.close()
        gpu.close()
        founder.close()
    assert raced
    doc = from_doc(home)
    assert [e.prompt.input for e in doc[0]] == ["a real question"] and doc[0][0].result is None
    viewed = from_view(home)
    assert viewed is None or [e.prompt.input for e in viewed[0]] == ["a real question"]
    assert viewed is None or viewed == doc


def stored_by_an_old_node(home: Path, datas: list[bytes], voided: Sequence[tuple[bytes, int]] = ()) -> None:
    """Envelopes (and voids) written as a node of the previous version writes them: straight
    into the tables, with no generation, no view and no count of voids."""
    from syncq import crypto

    with sqlite3.connect(home / "syncq.db") as conn:
        for data in datas:
            envelope = crypto.decode(data)
            conn.execute(
                "INSERT INTO envelopes (author, seq, data) VALUES (?, ?, ?)",
                (envelope.author, envelope.seq, data),
            )
        for author, seq in voided:
            conn.execute(
                "INSERT OR REPLACE INTO quarantine (author, seq, reason) VALUES (?, ?, 'unlisted')",
                (author, seq),
            )


def _hostile_prompt(member: Space, key: str, record: str) -> None:
    """A member writes ``record`` under ``key`` of the prompts, bypassing every check of add."""
    member.write(lambda log: log._maps["prompts"].__setitem__(key, record))


def test_a_prefix_names_what_the_doc_names_whatever_ids_a_member_wrote(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
        peer = Space.init(tmp_path / "peer", name="peer", secret=space.keys.secrets[0])
        peer.receive(list(space.envelopes()))
        # Keys that are no prompt id but start with the real one's prefix (sorting after "~").
        _hostile_prompt(peer, prompt.id[:10] + "~", "x")
        _hostile_prompt(peer, prompt.id[:8] + "\u00e9", "x")
        space.receive(list(peer.envelopes(space.version_vector())))
        peer.close()
        space.log  # noqa: B018 - the view covers the store
    for prefix in (prompt.id[:10], prompt.id[:8].lower()):
        with Space.open(home) as doc:
            doc.log  # noqa: B018
            with pytest.raises(AmbiguousId):
                doc.show(prefix)
        with Space.open(home) as cold:
            assert cold.replica.reader() is not None
            with pytest.raises(AmbiguousId):
                cold.show(prefix)
    assert from_view(home) == from_doc(home)


def test_a_status_tag_moved_to_another_row_never_lists_that_row_under_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        answered = space.add("answered", model="echo")
        waiting = space.add("waiting", model="echo")
        space.finish(done(space, answered.id, 1))
        space.log  # noqa: B018
        expected = (space.entries(status="done"), space.show(waiting.id[:12]))  # the Doc's
    # Someone who can write the file (but holds no key) gives the waiting prompt the done tag.
    with sqlite3.connect(home / "syncq.db") as conn:
        (tag,) = conn.execute("SELECT status FROM view WHERE id = ?", (answered.id,)).fetchone()
        conn.execute("UPDATE view SET status = ? WHERE id = ?", (tag, waiting.id))
    with Space.open(home) as cold:
        assert cold.replica.reader() is not None
        assert (cold.entries(status="done"), cold.show(waiting.id[:12])) == expected


@pytest.mark.xfail(strict=True, reason=OLD_NODE)
def test_envelopes_a_node_of_the_previous_version_stores_make_readers_load_the_doc(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
        gpu = Space.init(tmp_path / "gpu", name="gpu", secret=space.keys.secrets[0])
        gpu.receive(list(space.envelopes()))
        gpu.finish(done(gpu, prompt.id, 1))
        answer = list(gpu.envelopes(space.version_vector()))
        gpu.close()
        space.log  # noqa: B018
    assert from_view(home) is not None
    # The node started before the upgrade still runs 2782f91's code, which stores what a peer
    # sends as this (it knows nothing of the generation); the upgraded CLI then reads.
    stored_by_an_old_node(home, answer)
    viewed = from_view(home)  # before any Doc is loaded (a load brings the view up to date)
    doc = from_doc(home)
    assert doc[0][0].status.value == "done"
    assert viewed is None or viewed == doc


@pytest.mark.xfail(strict=True, reason=OLD_NODE)
def test_a_void_by_a_node_of_the_previous_version_leaves_nothing_voided_in_the_view(tmp_path: Path) -> None:
    founder, gpu, removal, voided = _removed_phone_writes_after_its_cutoff(tmp_path)
    home = tmp_path / "gpu"
    gpu.close()  # the upgraded gpu's view holds the thief's writes, as its Doc did
    founder.close()
    assert from_view(home) is not None
    # The gpu's node of the previous version (2782f91: no view, no generation) stores the
    # removal and voids what the phone wrote after its cutoff, as its Store.put and mark did.
    stored_by_an_old_node(home, removal, voided)
    viewed = from_view(home)
    doc = from_doc(home)
    assert [e.prompt.input for e in doc[0]] == ["a real question"] and doc[0][0].result is None
    assert viewed is None or viewed == doc
    assert from_view(home) == doc


def test_a_member_overwriting_a_cancelled_prompt_with_a_malformed_record_breaks_no_listing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        kept = space.add("kept", model="echo")
        broken = space.add("broken", model="echo")
        space.cancel(broken.id)
        peer = Space.init(tmp_path / "peer", name="peer", secret=space.keys.secrets[0])
        peer.receive(list(space.envelopes()))
        # It names itself (so it is no forgery), but it is no prompt: no kind, model or input.
        _hostile_prompt(peer, broken.id, json.dumps({"author": peer.device_id}))
        report = space.receive(list(peer.envelopes(space.version_vector())))
        assert report.added >= 1 and not report.quarantined
        peer.close()
        space.log  # noqa: B018 - its Doc answers
        expected = [e.prompt.id for e in space.entries(status="queued")]
        assert expected == [kept.id]
    with Space.open(home) as cold:
        assert cold.replica.reader() is not None
        assert [e.prompt.id for e in cold.entries(status="queued")] == expected


def test_a_whole_id_names_its_prompt_even_when_a_member_wrote_a_longer_key_starting_with_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
        peer = Space.init(tmp_path / "peer", name="peer", secret=space.keys.secrets[0])
        peer.receive(list(space.envelopes()))
        _hostile_prompt(peer, prompt.id + "0", "x")
        space.receive(list(peer.envelopes(space.version_vector())))
        peer.close()
        space.log  # noqa: B018
        expected = (space.show(prompt.id), space.resolve(prompt.id))  # the Doc's
    with Space.open(home) as cold:
        assert cold.replica.reader() is not None
        assert (cold.show(prompt.id), cold.resolve(prompt.id)) == expected


def test_a_whole_key_as_typed_names_what_the_doc_names(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
        peer = Space.init(tmp_path / "peer", name="peer", secret=space.keys.secrets[0])
        peer.receive(list(space.envelopes()))
        _hostile_prompt(peer, prompt.id.lower(), "x")  # the real id, in lower case
        space.receive(list(peer.envelopes(space.version_vector())))
        peer.close()
        space.log  # noqa: B018
        assert space.resolve(prompt.id.lower()) == prompt.id.lower()  # the Doc's
    with Space.open(home) as cold:
        assert cold.replica.reader() is not None
        assert cold.resolve(prompt.id.lower()) == prompt.id.lower()


def test_keys_with_a_slash_in_the_prompts_and_cancels_count_as_on_a_fresh_doc(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
        space.log  # noqa: B018 - a node: its Doc stays loaded, and it keeps the view
        peer = Space.init(tmp_path / "peer", name="peer", secret=space.keys.secrets[0])
        peer.receive(list(space.envelopes()))
        odd = prompt.id + "/x"  # a key of prompts no prompt id can be (claims and results have "/")
        _hostile_prompt(peer, odd, "x")
        space.receive(list(peer.envelopes(space.version_vector())))
        space.status()  # (its Doc: it now knows a status for the odd key)
        peer.write(lambda log: log._maps["cancels"].__setitem__(odd, "x"))
        space.receive(list(peer.envelopes(space.version_vector())))
        peer.close()
        held = space.status()  # the node's Doc's
    with Space.open(home) as cold:
        assert cold.replica.reader() is not None
        viewed = cold.status()
    with Space.open(home) as doc:
        doc.log  # noqa: B018 - loaded now
        fresh = doc.status()
    assert (viewed.prompts, viewed.counts) == (fresh.prompts, fresh.counts)
    assert (held.prompts, held.counts) == (fresh.prompts, fresh.counts)


@pytest.mark.xfail(strict=True, reason=OLD_NODE)
def test_a_home_of_schema_3_upgraded_keeps_its_view_honest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
        gpu = Space.init(tmp_path / "gpu", name="gpu", secret=space.keys.secrets[0])
        gpu.receive(list(space.envelopes()))
        gpu.finish(done(gpu, prompt.id, 1))
        answer = list(gpu.envelopes(space.version_vector()))
        gpu.close()
    with sqlite3.connect(home / "syncq.db") as conn:  # as schema 3 left it
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DROP TABLE view")
        conn.execute("DELETE FROM meta WHERE key LIKE 'view.%' OR key LIKE 'store.%'")
        conn.execute("PRAGMA user_version = 3")
    assert from_view(home) is None  # upgraded on open: no view yet
    loaded = from_doc(home)  # which writes the view
    assert from_view(home) == loaded
    stored_by_an_old_node(home, answer)  # the node of schema 3, still running
    viewed = from_view(home)
    doc = from_doc(home)
    assert doc[0][0].status.value == "done" and (viewed is None or viewed == doc)


def test_show_reads_the_view_at_one_moment_while_another_process_drops_the_row(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Space.init(home, name="laptop") as space:
        prompt = space.add("hello", model="echo")
    node = Space.open(home)
    node.log  # noqa: B018 - the node: its Doc loaded, it keeps the view
    peer = Space.init(tmp_path / "peer", name="peer", secret=node.keys.secrets[0])
    peer.receive(list(node.envelopes()))
    peer.write(lambda log: log._maps["prompts"].pop(prompt.id))  # a member deletes the prompt
    deletion = list(peer.envelopes(node.version_vector()))
    peer.close()
    cli = Space.open(home)
    try:
        assert cli.replica.reader() is not None
        prefixed = cli.store.view.prefixed
        calls: list[str] = []

        def meanwhile(prefix: str) -> list[tuple[str, bytes, bytes]]:
            found = prefixed(prefix)
            if not calls:  # the node takes the deletion in between the CLI's two reads
                node.receive(deletion)
            calls.append(prefix)
            return found

        cli.store.view.prefixed = meanwhile  # type: ignore[method-assign]
        entry = cli.show(prompt.id[:12])  # the prompt as it was when the read began
        assert entry.prompt.id == prompt.id
    finally:
        cli.close()
        node.close()
