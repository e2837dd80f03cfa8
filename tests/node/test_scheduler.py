"""Nodes claiming and running prompts: exactly once, take-over, cancel, retries, crashes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import SYNCQ, member, wait_until

from syncq.lifecycle import Status
from syncq.space import NewPrompt, Space
from syncq.store import Peer

pytestmark = pytest.mark.slow

FAST = "[node]\nlease = 2\nheartbeat = 0.3\nbackoff = 0.2\n"
STEADY = "[node]\nheartbeat = 0.3\nbackoff = 0.2\n"


def configure(home: Path, text: str = FAST) -> Path:
    (home / "config.toml").write_text(text)
    return home


def dial(home: Path, url: str) -> None:
    with Space.open(home) as space:
        space.store.save_peer(Peer(url=url, source="config"))


def statuses(home: Path) -> Counter[str]:
    with Space.open(home) as space:
        return Counter(e.status.value for e in space.entries(limit=None))


def entry(home: Path, prompt_id: str):
    with Space.open(home) as space:
        return space.log.entry(prompt_id)


def status_on(home: Path, prompt_id: str) -> Status | None:
    with Space.open(home) as space:
        return space.log.status(prompt_id) if space.log.has_prompt(prompt_id) else None


def test_three_echo_nodes_run_300_prompts_each_exactly_once(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "laptop", name="laptop") as laptop:
        # The default 30 s lease: a 2 s one is outlived by a node stalled on a loaded machine,
        # and a takeover is then a legitimate second run (tested apart, with a killed node).
        workers = [configure(member(tmp_path, laptop, f"gpu{i}"), STEADY) for i in range(3)]
    hub = nodes(tmp_path / "laptop", "--no-executors")
    for home in workers:
        dial(home, hub.url)
        nodes(home)
    with Space.open(tmp_path / "laptop") as space:
        space.add_many([NewPrompt(text=f"p{i}", model="echo", params={"delay": 0.05}) for i in range(300)])
    wait_until(
        lambda: statuses(tmp_path / "laptop") == Counter(done=300), timeout=240, what="300 prompts done"
    )
    with Space.open(tmp_path / "laptop") as space:
        entries = space.entries(limit=None)
        runs = Counter(len(e.results) for e in entries)
        twice = [
            [(r.node_name, r.attempt, r.error) for r in e.results] for e in entries if len(e.results) > 1
        ]
        assert runs == Counter({1: 300}), twice  # one result per prompt: nobody ran one twice
        by_node = Counter(e.result.node_name for e in entries)
        assert set(by_node) <= {"gpu0", "gpu1", "gpu2"} and len(by_node) >= 2
        assert all(e.result.output == e.prompt.input for e in entries)
    for home in workers:
        assert statuses(home) == Counter(done=300)  # results are visible on every node


def test_a_killed_node_s_job_is_taken_over_after_the_lease(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        a_home = configure(first.paths.root)
        b_home = configure(member(tmp_path, first, "b"), FAST + "executors = []\n")
    a = nodes(a_home)
    dial(b_home, a.url)
    b = nodes(b_home)
    with Space.open(a_home) as space:
        prompt = space.add("slow job", model="echo", params={"delay": 3})
    a.wait_event("running", prompt=prompt.id)
    wait_until(lambda: status_on(b_home, prompt.id) is Status.RUNNING, what="b to see a's claim")
    a.kill()
    configure(b_home)  # b now runs executors too: restart it so it serves echo
    b.stop()
    nodes(b_home)
    wait_until(lambda: entry(b_home, prompt.id).status is Status.DONE, timeout=60, what="b to finish a's job")
    done = entry(b_home, prompt.id)
    assert done.result is not None and done.result.node_name == "b" and done.result.attempt == 2
    assert any(r.error and "lease expired" in r.error and r.attempt == 1 for r in done.results)


def test_cancel_stops_a_running_job_and_a_queued_one_never_runs(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = configure(first.paths.root)
    node = nodes(home)
    with Space.open(home) as space:
        running = space.add("long " * 50, model="echo", params={"delay": 60})
    node.wait_event("running", prompt=running.id)
    with Space.open(home) as space:
        queued = space.add("behind it", model="echo")  # the echo worker is busy: it waits
        space.cancel(running.id)
        space.cancel(queued.id)
    node.wait_event("cancelled", prompt=running.id, timeout=10)  # not the job's 60 s
    time.sleep(0.5)
    assert not node.find("running", prompt=queued.id)
    assert entry(home, running.id).status is Status.CANCELLED
    assert entry(home, running.id).stream is None


def test_a_failing_executor_is_retried_with_backoff_then_fails(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = configure(first.paths.root)
    node = nodes(home)
    with Space.open(home) as space:
        prompt = space.add("x", model="echo", params={"fail": "out of cheese"}, max_attempts=3)
    wait_until(lambda: entry(home, prompt.id).status is Status.FAILED, timeout=60, what="failure")
    failed = entry(home, prompt.id)
    assert sorted(r.attempt for r in failed.results) == [1, 2, 3]
    assert {r.error for r in failed.results} == {"out of cheese"}
    runs = sorted(failed.results, key=lambda r: r.attempt)
    waits = [later.started_at - earlier.finished_at for earlier, later in itertools.pairwise(runs)]
    assert waits[0] >= 190 and waits[1] >= 390  # backoff 0.2 s, then 0.4 s
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    shown = subprocess.run(
        [SYNCQ, "show", prompt.id, "--json"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(shown.stdout)["status"] == "failed"
    retried = subprocess.run([SYNCQ, "retry", prompt.id], env=env, capture_output=True, text=True, check=True)
    # Queued again; the node, woken by the write, may have claimed it before the command
    # read the entry back to print it.
    assert retried.stdout.split()[1] in ("queued", "claimed", "running"), retried.stdout
    wait_until(lambda: len(entry(home, prompt.id).results) == 6, timeout=60, what="three more attempts")
    assert node.alive


def test_a_crashing_worker_is_recorded_and_retried_and_the_node_survives(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = configure(first.paths.root)
    node = nodes(home)
    with Space.open(home) as space:
        prompt = space.add("x", model="echo", params={"crash": True}, max_attempts=2)
        after = space.add("after the crash", model="echo")
    wait_until(lambda: entry(home, prompt.id).status is Status.FAILED, timeout=60, what="crash failures")
    assert all("was killed by SIGKILL" in (r.error or "") for r in entry(home, prompt.id).results)
    wait_until(lambda: entry(home, after.id).status is Status.DONE, what="the next prompt")
    assert node.alive


def test_wait_and_follow_from_another_device(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "gpu", name="gpu") as first:
        gpu = configure(first.paths.root)
        laptop = member(tmp_path, first, "laptop")
    g = nodes(gpu)
    dial(laptop, g.url)
    nodes(laptop, "--no-executors")
    env = {**os.environ, "SYNCQ_HOME": str(laptop)}
    out = subprocess.run(
        [SYNCQ, "add", "one two three four", "-m", "echo", "--follow", "--param", "delay=0.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "one two three four"
    assert "on gpu" in out.stderr
    done = subprocess.run(
        [SYNCQ, "add", "x", "-m", "echo", "--wait", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["status"] == "done" and result["result"]["node_name"] == "gpu"


def test_an_unserved_model_stays_queued_and_says_so(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = configure(first.paths.root)
    node = nodes(home)
    assert "echo" in node.wait_event("serving")["models"]  # the node says what it serves at start
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    wait_until(
        lambda: Space.open(home).store.get_meta("mesh.models"), what="the node to note the mesh's models"
    )
    added = subprocess.run(
        [SYNCQ, "add", "x", "-m", "nobody-serves-this"], env=env, capture_output=True, text=True, check=True
    )
    assert "no node of this space has advertised model 'nobody-serves-this'" in added.stderr
    shown = subprocess.run([SYNCQ, "log"], env=env, capture_output=True, text=True, check=True)
    assert "no node serves" in shown.stdout
    time.sleep(1)
    assert statuses(home) == Counter(queued=1)


def test_log_follow_prints_new_prompts_and_status_changes(tmp_path: Path, nodes) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = configure(first.paths.root)
    nodes(home)
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    follower = subprocess.Popen(
        [SYNCQ, "log", "--follow", "--json"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        with Space.open(home) as space:
            prompt = space.add("followed", model="echo", params={"delay": 1})  # outlasts the follower's start
        assert follower.stdout is not None
        seen = []
        for line in follower.stdout:
            event = json.loads(line)
            seen.append(event["status"])
            if event["status"] == "done":
                break
        assert event["id"] == prompt.id and seen[0] in ("queued", "claimed", "running") and seen[-1] == "done"
    finally:
        follower.kill()
        follower.wait()
