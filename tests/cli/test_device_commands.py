"""syncq invite (one-time codes), syncq devices (list, rename, remove) through the CLI, in-process
against real homes. Joining over the network is in tests/node/test_devices.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from syncq.cli.devices import MAX_EXPIRES_MS, UNITS_MS, parse_duration
from syncq.cli.main import cli

from syncq.errors import InvalidInput


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
