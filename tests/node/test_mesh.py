"""Real node processes syncing over real websockets on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, inputs, member, wait_until

from syncq.space import NewPrompt, Space
from syncq.store import Peer

pytestmark = pytest.mark.slow


def same_envelopes(a: Path, b: Path) -> bool:
    with Space.open(a) as sa, Space.open(b) as sb:
        return list(sa.envelopes()) == list(sb.envelopes())


def test_a_prompt_added_on_a_reaches_c_through_b(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        keys_home = first.paths.root
        b_home, c_home = member(tmp_path, first, "b"), member(tmp_path, first, "c")
    b = nodes(b_home)
    a = nodes(keys_home, "--peer", b.url)
    c = nodes(c_home, "--peer", b.url)
    for n in (a, c):
        n.wait_event("peer-connected")
    env = {**os.environ, "SYNCQ_HOME": str(keys_home)}
    subprocess.run([SYNCQ, "add", "hello from a", "-m", "echo"], env=env, check=True, capture_output=True)
    wait_until(lambda: inputs(c_home) == ["hello from a"], what="the prompt on c")
    with Space.open(c_home) as space:
        assert {n.name for n in wait_until(lambda: len(space.log.nodes()) == 3 and space.log.nodes())} == {
            "a",
            "b",
            "c",
        }
        assert {d.name for d in space.log.devices()} == {"a", "b", "c"}
    assert not a.find("peer-failed") and not c.find("peer-failed")


def test_prompts_added_while_b_is_down_appear_everywhere_once_it_returns(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home = first.paths.root
        b_home, c_home = member(tmp_path, first, "b"), member(tmp_path, first, "c")
    b = nodes(b_home)
    port = b.port
    a = nodes(a_home, "--peer", b.url)
    c = nodes(c_home, "--peer", b.url)
    a.wait_event("peer-connected")
    c.wait_event("peer-connected")
    b.stop()
    with Space.open(a_home) as space:
        for i in range(5):
            space.add(f"offline {i}", model="echo")
    b_again = nodes(b_home, port=port)
    assert b_again.port == port
    expected = [f"offline {i}" for i in range(5)]
    wait_until(lambda: inputs(c_home) == expected, timeout=60, what="c to catch up through b")
    assert inputs(b_home) == expected


def test_kill_9_during_a_10k_backlog_then_restart_converges(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home = first.paths.root
        b_home = member(tmp_path, first, "b")
        for i in range(10_000):  # one envelope per prompt: the slow path on purpose
            first.add_many([NewPrompt(text=f"backlog {i}", model="echo")])
    # The envelope path is the point: a node with a snapshot would send b that instead.
    config = a_home / "config.toml"
    config.write_text((config.read_text() if config.exists() else "") + "\n[node]\nsnapshot_every = 0\n")
    a = nodes(a_home, "--no-executors")
    with Space.open(b_home) as space:
        space.store.save_peer(Peer(url=a.url, source="config"))
    b = nodes(b_home, "--no-executors")

    def partly_synced() -> bool:
        with Space.open(b_home) as space:
            return 200 < space.store.count() < 10_000

    wait_until(partly_synced, what="b to be part way through the backlog")
    b.kill()
    nodes(b_home, "--no-executors")
    wait_until(lambda: same_envelopes(a_home, b_home), timeout=120, what="b to converge")
    with Space.open(a_home) as sa, Space.open(b_home) as sb:
        assert set(sa.envelopes()) <= set(sb.envelopes())  # none lost
        assert sb.store.count() == len(set(sb.envelopes()))  # none twice
        assert len(sb.log) == 10_000


def test_nodes_of_a_space_find_each_other_by_mdns_and_strangers_do_not(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    Space.init(tmp_path / "x", name="stranger").close()
    a = nodes(a_home, discovery=True)
    b = nodes(b_home, discovery=True)
    x = nodes(tmp_path / "x", discovery=True)
    b.wait_event("peer-connected")
    a.wait_event("peer-connected")
    with Space.open(a_home) as space:
        space.add("found by mdns", model="echo")
    wait_until(lambda: inputs(b_home) == ["found by mdns"], what="sync between discovered nodes")
    assert not x.find("discovered") and not x.find("peer-connected")
    assert all(e["url"] != x.url for e in a.find("discovered") + b.find("discovered"))


def test_a_dialler_keeps_trying_while_the_peer_is_down(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home, b_home = first.paths.root, member(tmp_path, first, "b")
    b = nodes(b_home, "--no-executors")
    port = b.port
    b.stop()
    a = nodes(a_home, "--no-executors", "--peer", f"ws://127.0.0.1:{port}")
    wait_until(lambda: any(p.error for p in Space.open(a_home).store.peers()), what="a failed dial on record")
    nodes(b_home, "--no-executors", port=port)
    a.wait_event("peer-connected", timeout=30)
    assert not a.find("dial-failed")
