"""Devices you can trust and revoke (issue 14), with real `syncq` commands and node processes on
127.0.0.1: one-time invites joined over the network, removal while connected and while offline,
a relay that keeps serving, concurrent removals across a partition, a member offline through two
rotations, and the jobs of a removed device taken over at once."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import NodeProcess, wait_until

from syncq.invite import decode_invite, encode_invite
from syncq.lifecycle import Status
from syncq.space import Space
from tests.helpers import spaces

pytestmark = pytest.mark.slow

SYNCQ = [sys.executable, "-m", "syncq.cli"]


def syncq(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home), "COLUMNS": "200"}
    done = subprocess.run([*SYNCQ, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def founder(tmp_path: Path, nodes: Any, name: str = "laptop", *args: str) -> NodeProcess:
    syncq(tmp_path / name, "init", "--name", name)
    return nodes(tmp_path / name, "--no-executors", *args)


def invite(node: NodeProcess, *args: str) -> dict[str, Any]:
    """A fresh code of ``node``'s home naming ``node``'s address (and the invite's record)."""
    made: dict[str, Any] = json.loads(
        syncq(node.home, "invite", "--address", node.url, "--json", *args).stdout
    )
    return made


def join(node: NodeProcess, home: Path, name: str, *args: str) -> Path:
    """``home`` joined through ``node`` with a fresh code (``args``: of `syncq invite`)."""
    syncq(home, "join", invite(node, *args)["code"], "--name", name)
    return home


def admitted(node: NodeProcess, home: Path, name: str, role: str = "member", dial: bool = True) -> Path:
    """``home`` admitted by ``node``'s home in-process (the calls the join handshake makes, for
    tests about what comes after joining), dialling ``node`` unless not ``dial``."""
    with Space.open(node.home) as member, spaces.join(home, member, name, role=role):
        pass
    if dial:
        syncq(home, "peers", "add", node.url)
    return home


def refused(home: Path, code: str) -> str:
    """`syncq join` of a code that must fail: its last line (the error); nothing written."""
    done = syncq(home, "join", code, "--name", "intruder", check=False)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert not home.exists() or not any(home.iterdir()), sorted(p.name for p in home.iterdir())
    return done.stderr.strip().splitlines()[-1]


def devices(home: Path) -> dict[str, dict[str, Any]]:
    """`syncq devices --json`, by name."""
    rows = [json.loads(line) for line in syncq(home, "devices", "--json").stdout.splitlines()]
    return {row["name"]: row for row in rows}


def removed(home: Path) -> set[str]:
    return {name for name, row in devices(home).items() if row["removed"]}


def inputs(home: Path) -> set[str]:
    with Space.open(home) as space:
        return {e.prompt.input for e in space.entries(limit=None)}


def add(home: Path, text: str) -> None:
    syncq(home, "add", text, "-m", "echo")


def epochs(home: Path) -> set[int]:
    with Space.open(home) as space:
        return set(space.keys.ordered())


def holds(home: Path, text: str) -> list[str]:
    """Every file under ``home`` that holds ``text`` (UTF-8) anywhere: what an attacker who took
    the whole directory could grep."""
    needle = text.encode()
    return [str(p) for p in home.rglob("*") if p.is_file() and needle in p.read_bytes()]


def closed_not_listed(node: NodeProcess) -> list[dict[str, Any]]:
    """The sessions ``node`` saw closed with 4410 (removed / not on the device list)."""
    return [e for e in node.find("peer-failed") + node.find("peer-closed") if e.get("code") == 4410]


def peer_errors(home: Path) -> list[str]:
    rows = [json.loads(line) for line in syncq(home, "peers", "--json").stdout.splitlines()]
    return [row["error"] or "" for row in rows]


# -- one-time invites ------------------------------------------------------------------------


def test_a_fresh_code_joins_once_and_then_is_refused(tmp_path: Path, nodes) -> None:
    laptop = founder(tmp_path, nodes)
    made = invite(laptop)
    assert made["state"] == "pending" and made["role"] == "member"
    assert invite(laptop)["code"] != made["code"]  # a fresh code each run
    joined = json.loads(syncq(tmp_path / "gpu", "join", made["code"], "--name", "gpu", "--json").stdout)
    with Space.open(laptop.home) as space:
        assert joined["space_id"] == space.keys.space_id
    nodes(tmp_path / "gpu", "--no-executors")
    add(laptop.home, "hello gpu")
    wait_until(lambda: "hello gpu" in inputs(tmp_path / "gpu"), what="the gpu to read the laptop's prompt")
    listed = devices(laptop.home)
    assert listed["gpu"]["added_by_name"] == "laptop" and listed["gpu"]["role"] == "member"
    assert listed["laptop"]["this"] and not listed["gpu"]["this"]

    assert "used already" in refused(tmp_path / "third", made["code"])
    states = [
        json.loads(line)
        for line in syncq(laptop.home, "invite", "--list", "--all", "--json").stdout.splitlines()
    ]
    assert {(s["id"], s["state"]) for s in states} >= {(made["id"], "used")}


def test_an_expired_code_is_refused(tmp_path: Path, nodes) -> None:
    laptop = founder(tmp_path, nodes)
    made = invite(laptop, "--expires", "1s")
    expires = dt.datetime.fromisoformat(made["expires_at"]).timestamp()
    wait_until(lambda: time.time() > expires + 0.05, timeout=5, what="the code to expire")  # the clock
    assert "expired" in refused(tmp_path / "late", made["code"])
    assert syncq(laptop.home, "invite", "--list", "--json").stdout == ""  # no longer pending


def test_a_revoked_code_is_refused(tmp_path: Path, nodes) -> None:
    laptop = founder(tmp_path, nodes)
    made = invite(laptop)
    assert "revoked" in syncq(laptop.home, "invite", "--revoke", made["id"][:6]).stdout
    assert "revoked" in refused(tmp_path / "late", made["code"])


def test_a_forged_code_and_one_of_another_space_are_refused(tmp_path: Path, nodes) -> None:
    laptop = founder(tmp_path, nodes)
    real = decode_invite(invite(laptop)["code"])
    forged = encode_invite(dataclasses.replace(real, secret=os.urandom(32)))  # right space, no invite
    assert "accepted this code" in refused(tmp_path / "forger", forged)
    syncq(tmp_path / "other", "init", "--name", "other")
    foreign = syncq(tmp_path / "other", "invite", "--address", laptop.url).stdout.strip()
    assert "accepted this code" in refused(tmp_path / "stranger", foreign)
    assert set(devices(laptop.home)) == {"laptop"}


# -- removal ---------------------------------------------------------------------------------


def test_a_removed_device_reads_nothing_after_and_a_relay_serves_everyone_else(
    tmp_path: Path, nodes, proxies
) -> None:
    """Removal while connected: the phone is shut out by the laptop and by the relay (4410,
    shown by `syncq peers`), its whole home holds no byte of what is written after, while the
    gpu, which reaches the laptop only through the relay, keeps syncing both ways."""
    laptop = founder(tmp_path, nodes)
    admitted(laptop, tmp_path / "relay", "relay", role="relay", dial=False)
    relay = nodes(tmp_path / "relay", "--no-executors")
    syncq(laptop.home, "peers", "add", relay.url)  # a running node dials it at once
    admitted(laptop, tmp_path / "gpu", "gpu", dial=False)
    admitted(laptop, tmp_path / "phone", "phone")
    direct = proxies(laptop.port)  # the gpu meets the laptop once (a grant lists only its chain)
    syncq(tmp_path / "gpu", "peers", "add", direct.url)
    syncq(tmp_path / "gpu", "peers", "add", relay.url)
    gpu = nodes(tmp_path / "gpu", "--no-executors")
    syncq(tmp_path / "phone", "peers", "add", relay.url)
    phone = nodes(tmp_path / "phone", "--no-executors")
    add(laptop.home, "before the removal")
    wait_until(lambda: "before the removal" in inputs(tmp_path / "phone"), what="the phone to read it")
    wait_until(lambda: "before the removal" in inputs(tmp_path / "gpu"), what="the gpu to read it")
    direct.partition()  # from now on the gpu reaches the laptop only through the relay
    kept = epochs(tmp_path / "phone")
    refusals = len(closed_not_listed(gpu))  # before it met the laptop, the relay was not listed to it

    done = syncq(laptop.home, "devices", "remove", "phone", "--yes")
    assert "1 prompt" in done.stdout and "reads nothing" in done.stdout
    wait_until(
        lambda: len({e["peer"] for e in closed_not_listed(phone)}) >= 2, what="laptop and relay to close"
    )
    assert any("removed" in error for error in peer_errors(tmp_path / "phone"))
    secret = f"written after the removal {uuid.uuid4()}"
    add(laptop.home, secret)
    wait_until(lambda: secret in inputs(tmp_path / "gpu"), what="the gpu to read it through the relay")
    add(tmp_path / "gpu", "the gpu after the removal")
    wait_until(lambda: "the gpu after the removal" in inputs(laptop.home), what="the laptop to read the gpu")
    assert gpu.alive and len(closed_not_listed(gpu)) == refusals
    assert removed(laptop.home) == removed(tmp_path / "gpu") == {"phone"}

    phone.stop()
    assert holds(tmp_path / "phone", secret) == []
    assert secret not in inputs(tmp_path / "phone") and "before the removal" in inputs(tmp_path / "phone")
    later = epochs(laptop.home) - kept
    assert later and not later & epochs(tmp_path / "phone")  # no key of an epoch after the removal
    restarted = nodes(tmp_path / "phone", "--no-executors")  # and it cannot come back
    wait_until(
        lambda: len({e["peer"] for e in closed_not_listed(restarted)}) >= 2,
        what="the restarted phone refused",
    )
    restarted.stop()
    assert holds(tmp_path / "phone", secret) == [] and secret not in inputs(tmp_path / "phone")


def test_a_device_removed_while_offline_is_refused_when_it_comes_back(tmp_path: Path, nodes) -> None:
    laptop = founder(tmp_path, nodes)
    phone_home = admitted(laptop, tmp_path / "phone", "phone")
    phone = nodes(phone_home, "--no-executors")
    wait_until(lambda: "phone" in devices(laptop.home), what="the laptop to list the phone")
    phone.wait_event("peer-connected")
    phone.stop()
    done = syncq(laptop.home, "devices", "remove", "phone", "--yes")
    assert "0 prompts" in done.stdout
    secret = f"while the phone was away {uuid.uuid4()}"
    add(laptop.home, secret)
    phone = nodes(phone_home, "--no-executors")
    wait_until(lambda: closed_not_listed(phone), what="the laptop to refuse the phone")
    assert any("removed" in error for error in peer_errors(phone_home))
    phone.stop()
    assert holds(phone_home, secret) == []


def test_concurrent_removals_across_a_partition_converge(tmp_path: Path, nodes, proxies) -> None:
    """a and b each remove a different device while cut apart; once the link heals both list
    both as removed, agree on the newest key epoch, and still sync."""
    a = founder(tmp_path, nodes, "a")
    for name in ("b", "c", "d"):
        admitted(a, tmp_path / name, name, dial=False)
    link = proxies(a.port)
    syncq(tmp_path / "b", "peers", "add", link.url)
    nodes(tmp_path / "b", "--no-executors")
    wait_until(lambda: {"a", "b", "c", "d"} <= set(devices(tmp_path / "b")), what="b to list everyone")
    link.partition()
    syncq(a.home, "devices", "remove", "c", "--yes")
    syncq(tmp_path / "b", "devices", "remove", "d", "--yes")
    assert removed(a.home) == {"c"} and removed(tmp_path / "b") == {"d"}
    link.heal()
    wait_until(
        lambda: removed(a.home) == removed(tmp_path / "b") == {"c", "d"},
        timeout=60,
        what="one list, both removed",
    )
    wait_until(lambda: devices(a.home).keys() == devices(tmp_path / "b").keys(), what="the same devices")

    def newest(home: Path) -> int:
        with Space.open(home) as space:
            return space.keys.epoch

    wait_until(lambda: newest(a.home) == newest(tmp_path / "b"), timeout=60, what="one newest epoch")
    add(a.home, "after the heal")
    wait_until(lambda: "after the heal" in inputs(tmp_path / "b"), what="b to read a's prompt")


def test_a_member_offline_through_two_rotations_catches_up(tmp_path: Path, nodes) -> None:
    a = founder(tmp_path, nodes, "a")
    for name in ("b", "c", "d"):
        admitted(a, tmp_path / name, name)
    before = epochs(tmp_path / "b")
    syncq(a.home, "devices", "remove", "c", "--yes")
    syncq(a.home, "devices", "remove", "d", "--yes")
    # Each removal rotated (a's node may rotate once more, having seen the removal before the
    # command's keys envelope: two epochs where one would do, harmless but reported).
    assert len(epochs(a.home) - before) >= 2
    secret = f"two rotations later {uuid.uuid4()}"
    add(a.home, secret)
    b = nodes(tmp_path / "b", "--no-executors")
    wait_until(lambda: secret in inputs(tmp_path / "b"), timeout=60, what="b to read the newest prompt")
    assert epochs(tmp_path / "b") == epochs(a.home)
    assert removed(tmp_path / "b") == {"c", "d"}
    assert not closed_not_listed(b)


def test_the_running_job_of_a_removed_device_is_taken_over_at_once(tmp_path: Path, nodes) -> None:
    """The lease is ten minutes: only the removal can free the job sooner. (The homes are
    joined in-process, with the calls the join handshake makes: this test is about claims.)"""
    config = "[node]\nlease = 600\nheartbeat = 0.3\n"
    with Space.init(tmp_path / "laptop", name="laptop", device_list=True) as laptop:
        for name in ("gpu1", "gpu2"):
            with spaces.join(tmp_path / name, laptop, name) as gpu:
                spaces.sync([laptop, gpu])
            (tmp_path / name / "config.toml").write_text(config)
    hub = nodes(tmp_path / "laptop", "--no-executors")
    for name in ("gpu1", "gpu2"):
        syncq(tmp_path / name, "peers", "add", hub.url)
    gpu1 = nodes(tmp_path / "gpu1")
    job = syncq(hub.home, "add", "a long job", "-m", "echo", "--param", "delay=120").stdout.strip()
    gpu1.wait_event("running", prompt=job)

    def status(home: Path) -> Status:
        with Space.open(home) as space:
            return space.log.status(job) if space.log.has_prompt(job) else Status.QUEUED

    gpu2 = nodes(tmp_path / "gpu2")
    wait_until(lambda: status(tmp_path / "gpu2") is Status.RUNNING, what="gpu2 to see gpu1 run it")
    start = time.monotonic()
    syncq(hub.home, "devices", "remove", "gpu1", "--yes")
    gpu2.wait_event("claim-void", prompt=job, timeout=60)
    gpu2.wait_event("running", prompt=job, timeout=60)
    assert time.monotonic() - start < 60  # well inside the lease
    with Space.open(hub.home) as space:
        runs = space.log.entry(job).results
    assert any(r.attempt == 1 and "removed from the space" in (r.error or "") for r in runs)
