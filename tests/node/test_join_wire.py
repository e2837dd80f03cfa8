"""The wire of issue 14 against real nodes: `syncq join` over the join handshake, and the device
check that closes a removed device's sessions with 4410 (PROTOCOL.md, "Joining", "Sync")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from harness import SYNCQ, inputs, wait_until

from syncq.space import Space
from syncq.store import Peer

pytestmark = pytest.mark.slow


def run_syncq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCQ_HOME": str(home), "COLUMNS": "200"}
    if args[0] == "join":  # mDNS on loopback only: the tests send nothing beyond this machine
        args = (*args, "--discovery-interface", "127.0.0.1")
    return subprocess.run([SYNCQ, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def files_under(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()] if home.exists() else []


def invite(home: Path, *addresses: str, role: str = "member") -> str:
    with Space.open(home) as space:
        code, _ = space.create_invite(role=role, addresses=list(addresses))
    return code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def founder(tmp_path: Path, nodes):
    Space.init(tmp_path / "laptop", name="laptop", device_list=True).close()
    return nodes(tmp_path / "laptop")


def test_a_fresh_code_joins_over_the_wire_and_the_device_syncs(tmp_path: Path, nodes, founder) -> None:
    code = invite(founder.home, founder.url)
    out = run_syncq(tmp_path / "phone", "join", code, "--name", "phone", "--json")
    assert out.returncode == 0, out.stderr
    joined = json.loads(out.stdout)
    assert joined["admitted_by"] == founder.url and not joined["relay"]
    founder.wait_event("device-joined", name="phone")
    with Space.open(founder.home) as space:
        space.add("for the phone", model="echo")
    nodes(tmp_path / "phone").wait_event("peer-connected")
    wait_until(
        lambda: inputs(tmp_path / "phone") == ["for the phone"], what="the prompt to reach the new device"
    )


def test_a_used_code_is_refused_in_one_line_and_nothing_is_written(tmp_path: Path, founder) -> None:
    code = invite(founder.home, founder.url)
    assert run_syncq(tmp_path / "phone", "join", code).returncode == 0
    again = run_syncq(tmp_path / "thief", "join", code)
    assert again.returncode == 1
    assert len(again.stderr.strip().splitlines()) == 1 and "used" in again.stderr
    assert "Traceback" not in again.stderr
    assert files_under(tmp_path / "thief") == []


def test_a_code_of_another_space_meets_a_decoy(tmp_path: Path, founder) -> None:
    Space.init(tmp_path / "other", name="other", device_list=True).close()
    dead = f"ws://127.0.0.1:{free_port()}"
    code = invite(tmp_path / "other", dead, founder.url)  # the live one knows no such invite
    out = run_syncq(tmp_path / "phone", "join", code)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2  # one line per address that failed, the most telling one last
    assert lines[0] == f"no member reachable at {dead}: start `syncq node` on the inviting device"
    assert lines[1].endswith(
        f"no member at {founder.url} accepted this code: it is forged or from another space"
    )
    assert files_under(tmp_path / "phone") == []


def test_nobody_listening_is_said_so(tmp_path: Path) -> None:
    Space.init(tmp_path / "laptop", name="laptop", device_list=True).close()
    url = f"ws://127.0.0.1:{free_port()}"
    out = run_syncq(tmp_path / "phone", "join", invite(tmp_path / "laptop", url))
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .endswith(f"no member reachable at {url}: start `syncq node` on the inviting device")
    )
    assert files_under(tmp_path / "phone") == []


def test_a_removed_device_is_cut_off_with_4410_and_sees_why(tmp_path: Path, nodes, founder) -> None:
    assert (
        run_syncq(tmp_path / "phone", "join", invite(founder.home, founder.url), "--name", "phone").returncode
        == 0
    )
    phone = nodes(tmp_path / "phone")
    phone.wait_event("peer-connected")
    with Space.open(founder.home) as space:
        space.remove_device("phone")  # another process of the founder's home: its node notices
    founder.wait_event("peer-failed", code=4410)
    closed = phone.wait_event("peer-closed", code=4410)
    assert closed["reason"] == "this device was removed from the space"
    # The open session was closed, not only the next one refused: one connection came before.
    before = phone.events[: phone.events.index(closed)]
    assert len([e for e in before if e.get("event") == "peer-connected"]) == 1

    def refused_row() -> dict | None:
        out = run_syncq(tmp_path / "phone", "peers", "--json")
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        return next((r for r in rows if "4410" in (r.get("error") or "")), None)

    row = wait_until(refused_row, what="`syncq peers` on the removed device to show the refusal")
    assert "removed from the space" in row["error"]
    # It dials again and is refused at AUTH each time: the founder never admits it again.
    wait_until(lambda: len(phone.find("peer-closed", code=4410)) >= 2, timeout=60, what="a second refusal")
    assert len(founder.find("peer-connected")) == 1


def test_a_listed_peer_still_connects_after_a_removal(tmp_path: Path, nodes, founder) -> None:
    for name in ("phone", "desk"):
        code = invite(founder.home, founder.url)
        assert run_syncq(tmp_path / name, "join", code, "--name", name).returncode == 0
    with Space.open(founder.home) as space:
        space.remove_device("phone")
    with Space.open(tmp_path / "desk") as desk:
        desk.store.save_peer(Peer(url=founder.url, source="config"))
    desk_node = nodes(tmp_path / "desk")
    desk_node.wait_event("peer-connected")


def test_a_relay_code_makes_a_relay_that_holds_no_secret(tmp_path: Path, founder) -> None:
    out = run_syncq(tmp_path / "relay", "join", invite(founder.home, founder.url, role="relay"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["relay"] is True
    with Space.open(tmp_path / "relay") as relay:
        assert relay.is_relay and not relay.keys.secrets and 0 in relay.keys.relay_auth


def test_a_member_on_the_lan_is_found_by_the_invites_own_tag(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "laptop", name="laptop", device_list=True).close()
    laptop = nodes(tmp_path / "laptop", discovery=True)
    dead = f"ws://127.0.0.1:{free_port()}"
    code = invite(laptop.home, dead)  # the address is wrong: only mDNS can find the laptop
    out = run_syncq(tmp_path / "phone", "join", code, "--name", "phone", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["admitted_by"].endswith(f":{laptop.port}")
    laptop.wait_event("device-joined", name="phone")
    # Used: no longer advertised, so a later holder of the code finds nobody on the LAN.
    again = run_syncq(tmp_path / "thief", "join", code)
    assert again.returncode == 1 and files_under(tmp_path / "thief") == []
    assert (
        again.stderr.strip()
        .splitlines()[-1]
        .endswith(f"no member reachable at {dead}: start `syncq node` on the inviting device")
    )
