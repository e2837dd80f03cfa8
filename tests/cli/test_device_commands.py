"""syncq invite (one-time codes), syncq devices (list, rename, remove) through the CLI, in-process
against real homes. Joining over the network is in tests/node/test_devices.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from syncq.cli.devices import MAX_EXPIRES_MS, UNITS_MS, parse_duration
from syncq.cli.main import cli

from syncq.errors import InvalidInput
from syncq.space import Space
from tests.helpers.spaces import join, sync


def run(home: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)


@given(st.integers(1, 10**6), st.sampled_from(sorted(UNITS_MS)))
def test_a_duration_is_a_number_and_a_unit(n: int, unit: str) -> None:
    ms = n * UNITS_MS[unit]
    if ms > MAX_EXPIRES_MS:
        with pytest.raises(InvalidInput, match="at most 30d"):
            parse_duration(f"{n}{unit}")
    else:
        assert parse_duration(f"{n}{unit}") == ms


@given(st.text(max_size=12))
def test_anything_else_is_refused_with_one_line(text: str) -> None:
    try:
        ms = parse_duration(text)
    except InvalidInput as exc:
        message = str(exc)
        ms = None
    if ms is None:
        assert "\n" not in message
    else:
        assert 0 < ms <= MAX_EXPIRES_MS


@pytest.mark.parametrize("text", ["10x", "10", "m", "0m", "-5m", "1.5h", "1h30m", "10 m", "1e3s", "１０m"])
def test_bad_durations_are_refused(tmp_path: Path, text: str) -> None:
    home = tmp_path / "laptop"
    run(home, "init", "--name", "laptop")
    result = run(home, "invite", "--expires", text)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "--expires" in result.output and "e.g. 10m" in result.output


@pytest.fixture
def homes(tmp_path: Path) -> dict[str, Path]:
    """A laptop (`syncq init`) that admitted a phone, a gpu and a relay (in-process: the same
    calls the join handshake makes), all synced."""
    laptop = tmp_path / "laptop"
    run(laptop, "init", "--name", "laptop")
    with Space.open(laptop) as founder:
        made = [
            join(tmp_path / "phone", founder, "phone"),
            join(tmp_path / "gpu", founder, "gpu"),
            join(tmp_path / "relay", founder, "relay", role="relay"),
        ]
        sync([founder, *made])
        for space in made:
            space.close()
    return {name: tmp_path / name for name in ("laptop", "phone", "gpu", "relay")}


def listed(home: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in run(home, "devices", "--json").stdout.splitlines()]
    return {row["name"]: row for row in rows}


def test_devices_lists_every_device_with_who_added_it(homes: dict[str, Path]) -> None:
    rows = listed(homes["phone"])
    assert set(rows) == {"laptop", "phone", "gpu", "relay"}
    assert rows["phone"]["this"] and not rows["laptop"]["this"]
    assert rows["relay"]["role"] == "relay" and rows["gpu"]["role"] == "member"
    assert rows["gpu"]["added_by_name"] == "laptop" and rows["laptop"]["added_by"] == ""
    assert not any(row["removed"] for row in rows.values())
    table = run(homes["phone"], "devices").output
    for name in rows:
        assert name in table
    assert "(founder)" in table and "this device" in table


def test_devices_rename_is_seen_by_every_member(homes: dict[str, Path]) -> None:
    done = run(homes["phone"], "devices", "rename", "gpu", "big-gpu")
    assert done.exit_code == 0 and "big-gpu" in done.output
    with Space.open(homes["phone"]) as phone, Space.open(homes["laptop"]) as laptop:
        sync([phone, laptop])
    assert "big-gpu" in listed(homes["laptop"]) and "gpu" not in listed(homes["laptop"])
    assert run(homes["laptop"], "devices", "rename", "nobody", "x").exit_code == 1


def test_devices_remove_asks_first_and_says_what_the_device_keeps(homes: dict[str, Path]) -> None:
    run(homes["laptop"], "add", "written before", "-m", "echo")
    run(homes["laptop"], "invite", "--address", "127.0.0.1:9")
    asked = run(homes["laptop"], "devices", "remove", "phone", input="n\n")
    assert asked.exit_code == 1 and "Remove phone" in asked.output and "keeps the 1 prompt" in asked.output
    assert not listed(homes["laptop"])["phone"]["removed"]  # said no: nothing changed

    done = run(homes["laptop"], "devices", "remove", "phone", input="y\n")
    assert done.exit_code == 0, done.output
    assert "still holds everything written up to now (1 prompt," in done.output
    assert "reads nothing" in done.output and "no longer connect" in done.output
    assert "1 pending invite revoked" in done.output
    rows = listed(homes["laptop"])
    assert rows["phone"]["removed"] and rows["phone"]["role"] == "removed"
    assert rows["phone"]["removed_by"] == rows["laptop"]["id"]
    assert run(homes["laptop"], "invite", "--list", "--json").output == ""

    again = run(homes["laptop"], "devices", "remove", "phone", "--yes")
    assert again.exit_code == 1 and "removed already" in again.output
    self_ = run(homes["laptop"], "devices", "remove", "laptop", "--yes")
    assert self_.exit_code == 1 and "this device" in self_.output
    as_json = json.loads(run(homes["gpu"], "devices", "remove", "relay", "--yes", "--json").stdout)
    assert as_json["name"] == "relay" and as_json["prompts_it_holds"] == 0  # the gpu saw no prompt


def test_invite_list_and_revoke(homes: dict[str, Path]) -> None:
    laptop = homes["laptop"]
    made = json.loads(run(laptop, "invite", "--expires", "10m", "--address", "127.0.0.1:9", "--json").stdout)
    assert made["state"] == "pending" and made["addresses"] == ["ws://127.0.0.1:9"]
    second = json.loads(run(laptop, "invite", "--relay", "--address", "127.0.0.1:9", "--json").stdout)
    assert second["code"] != made["code"] and second["role"] == "relay"
    pending = [json.loads(line) for line in run(laptop, "invite", "--list", "--json").stdout.splitlines()]
    assert {p["id"] for p in pending} == {made["id"], second["id"]}
    assert "code" not in pending[0] and all("auth" not in p for p in pending)  # no secret listed
    assert "revoked" in run(laptop, "invite", "--revoke", made["id"][:6]).output
    twice = run(laptop, "invite", "--revoke", made["id"][:6])
    assert twice.exit_code == 1 and "was revoked: nothing to revoke" in twice.output
    listed_now = [json.loads(line) for line in run(laptop, "invite", "--list", "--json").stdout.splitlines()]
    assert [p["id"] for p in listed_now] == [second["id"]]
    every = run(laptop, "invite", "--list", "--all", "--json").stdout.splitlines()
    assert {json.loads(line)["state"] for line in every} >= {"revoked", "used", "pending"}
    assert run(laptop, "invite", "--list", "--revoke", "x").exit_code == 1
    assert run(homes["relay"], "invite").exit_code == 1  # a relay cannot invite


def test_a_code_shown_to_a_person_says_how_long_it_works(homes: dict[str, Path]) -> None:
    shown = run(homes["laptop"], "invite", "--expires", "2h", "--address", "127.0.0.1:9")
    assert shown.exit_code == 0 and shown.stdout.startswith("syncq1-")
    assert "works once" in shown.stderr and "2 hours from now" in shown.stderr
