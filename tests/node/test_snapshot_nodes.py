"""Snapshots between real node processes on 127.0.0.1: a fresh device bootstraps from one over
a relay, and a node killed (SIGKILL) as it writes one loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from syncq.space import NewPrompt, Space
from tests.helpers import spaces
from tests.helpers.harness import wait_until

pytestmark = pytest.mark.slow

SYNCQ = [sys.executable, "-m", "syncq.cli"]
PROMPTS = 1_200  # more than a peer may lack before it is sent a snapshot (replica.SNAPSHOT_FAR)


def syncq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home)}
    done = subprocess.run([*SYNCQ, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


def status(home: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(syncq(home, "status", "--json").stdout)
    return found


def laptop_with_history(home: Path) -> None:
    syncq(home, "init", "--name", "laptop")
    add_history(home, range(PROMPTS))


def add_history(home: Path, numbers: range) -> None:
    with Space.open(home) as space:  # one envelope each, as prompts queued over months are
        for n in numbers:
            space.add_many([NewPrompt(text=f"prompt {n}", model="echo")], durable=False)


def admit(member: Path, home: Path, name: str, role: str = "member") -> None:
    with Space.open(member) as space, spaces.join(home, space, name, role=role):
        pass


def test_a_fresh_device_bootstraps_from_a_snapshot_over_a_relay(tmp_path: Path, nodes) -> None:
    laptop_home, relay_home, phone_home = tmp_path / "laptop", tmp_path / "relay", tmp_path / "phone"
    laptop_with_history(laptop_home)
    admit(laptop_home, relay_home, "relay", role="relay")
    relay = nodes(relay_home, "--no-executors")
    laptop = nodes(laptop_home, "--no-executors", "--peer", relay.url)
    written = laptop.wait_event("snapshot-written", timeout=60)
    assert written["envelopes"] >= PROMPTS
    wait_until(lambda: status(relay_home)["snapshots"] == 1, what="the relay to hold the laptop's snapshot")
    admit(laptop_home, phone_home, "phone")  # its listing reaches the relay, then the laptop goes
    wait_until(
        lambda: status(relay_home)["envelopes"] == status(laptop_home)["envelopes"],
        what="the relay to hold the phone's listing",
    )
    laptop.stop()
    syncq(phone_home, "peers", "add", relay.url)
    nodes(phone_home, "--no-executors")
    wait_until(
        lambda: status(phone_home)["prompts"] == PROMPTS, timeout=60, what="the phone to hold every prompt"
    )
    found = status(phone_home)
    assert found["snapshots"] == 1 and found["snapshot_covers"] >= PROMPTS
    assert found["envelopes"] < 20  # its own, and what came after the snapshot: not 1,200
    log = syncq(phone_home, "log", "-n", "3", "--json").stdout.splitlines()
    assert [json.loads(line)["input"] for line in log] == [f"prompt {n}" for n in (1197, 1198, 1199)]


def test_a_node_killed_while_it_writes_a_snapshot_loses_nothing(tmp_path: Path, nodes) -> None:
    laptop_home = tmp_path / "laptop"
    laptop_with_history(laptop_home)
    laptop = nodes(laptop_home, "--no-executors", "--verbose")
    laptop.wait_event("snapshot-writing", timeout=60)
    laptop.kill()  # as it writes: SQLite's transaction leaves the snapshot whole or absent
    found = status(laptop_home)
    assert found["prompts"] == PROMPTS and found["snapshots"] <= 1
    assert syncq(laptop_home, "log", "-n", "1", "--json").stdout.count("\n") == 1
    # Whatever the kill left, a fresh device gets everything from it.
    laptop = nodes(laptop_home, "--no-executors")
    if found["snapshots"] == 0:
        laptop.wait_event("snapshot-written", timeout=60)
    admit(laptop_home, tmp_path / "gpu", "gpu")
    syncq(tmp_path / "gpu", "peers", "add", laptop.url)
    nodes(tmp_path / "gpu", "--no-executors")
    wait_until(lambda: status(tmp_path / "gpu")["prompts"] == PROMPTS, timeout=60, what="the gpu to catch up")
    assert status(tmp_path / "gpu")["snapshots"] == 1


PRUNE = "[node]\nprune_days = 0.00003\n"  # 2.6 s: envelopes a snapshot covers go soon after


def test_a_relay_prunes_and_still_serves_a_newcomer_and_a_device_away_for_longer(
    tmp_path: Path, nodes
) -> None:
    laptop_home, relay_home = tmp_path / "laptop", tmp_path / "relay"
    syncq(laptop_home, "init", "--name", "laptop")
    admit(laptop_home, relay_home, "relay", role="relay")
    admit(laptop_home, tmp_path / "phone", "phone")  # away from here on, for longer than 2.6 s
    add_history(laptop_home, range(PROMPTS))
    for home in (laptop_home, relay_home):
        (home / "config.toml").write_text(PRUNE)
    relay = nodes(relay_home, "--no-executors", "--verbose")
    laptop = nodes(laptop_home, "--no-executors", "--peer", relay.url)
    laptop.wait_event("snapshot-written", timeout=60)
    assert relay.wait_event("pruned", timeout=60)["envelopes"] >= PROMPTS - 10
    laptop.wait_event("pruned", timeout=60)
    wait_until(lambda: status(relay_home)["envelopes"] < 30, what="the relay's pruning to be committed")
    # kill -9 as the relay prunes again (more envelopes, a second snapshot): nothing is lost.
    add_history(laptop_home, range(PROMPTS, PROMPTS + 700))
    wait_until(lambda: len(relay.find("pruning")) >= 2, timeout=90, what="the relay to prune again")
    relay.kill()
    relay = nodes(relay_home, "--no-executors", port=relay.port)
    admit(laptop_home, tmp_path / "gpu", "gpu")  # a newcomer, listed through the relay
    in_sync = lambda: (found := status(laptop_home))["peers_connected"] == 1 and found["peers_behind"] == 0  # noqa: E731
    wait_until(in_sync, timeout=60, what="the laptop to bring the restarted relay up to date")
    laptop.stop()
    for name in ("phone", "gpu"):
        syncq(tmp_path / name, "peers", "add", relay.url)
        nodes(tmp_path / name, "--no-executors")
    for name in ("phone", "gpu"):
        home = tmp_path / name
        caught_up = lambda home=home: status(home)["prompts"] == PROMPTS + 700  # noqa: E731
        wait_until(caught_up, timeout=90, what=f"the {name} to catch up")
        assert status(home)["snapshots"] >= 1
