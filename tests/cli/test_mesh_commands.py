"""invite, join, peers, node and status through the CLI."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from syncq.cli.main import cli

from syncq.space import Space
from tests.helpers.spaces import join


def run(home: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)


def test_a_code_joins_nothing_while_no_member_is_reachable(tmp_path: Path) -> None:
    """A code holds no key: joining needs the inviting member's node (joins over the network:
    tests/node/test_devices.py, test_join_wire.py). Without one, one line and no home."""
    laptop, gpu = tmp_path / "laptop", tmp_path / "gpu"
    run(laptop, "init", "--name", "laptop")
    invited = run(laptop, "invite", "--address", "127.0.0.1:9")
    code = invited.stdout.strip()
    assert code.startswith("syncq1-")
    assert "works once" in invited.stderr
    joined = run(gpu, "join", code, "--name", "gpu", "--no-discovery")
    assert joined.exit_code == 1
    assert "no member reachable at ws://127.0.0.1:9" in joined.output
    assert not gpu.exists()


def test_a_relay_code_gives_a_home_that_cannot_read(tmp_path: Path) -> None:
    laptop, relay = tmp_path / "laptop", tmp_path / "relay"
    run(laptop, "init")
    run(laptop, "add", "secret prompt", "-m", "echo")
    with Space.open(laptop) as member, join(relay, member, "relay", role="relay"):
        pass  # what the join handshake does, in-process
    for args in (("log",), ("add", "x", "-m", "echo"), ("invite",)):
        result = run(relay, *args)
        assert result.exit_code == 1
        assert "relay" in result.output
    status = json.loads(run(relay, "status", "--json").stdout)
    assert status["relay"] is True and status["prompts"] is None
    keys = json.loads((relay / "space.key").read_text())
    assert keys["secrets"] == {}
    with Space.open(laptop) as member:
        assert keys["space_id"] == member.keys.space_id
        assert member.keys.secrets[0].hex() not in (relay / "space.key").read_text()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("hello", "not a syncq invite code"),
        ("syncq1-AAAA", "damaged"),
        ("syncq1-" + "x" * 9000, "not a syncq invite code"),
    ],
)
def test_bad_invite_codes_are_explained(tmp_path: Path, code: str, message: str) -> None:
    result = run(tmp_path / "h", "join", code)
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "h").exists()


def test_join_into_a_home_with_a_space_is_refused(tmp_path: Path) -> None:
    run(tmp_path / "a", "init")
    code = run(tmp_path / "a", "invite").stdout.strip()
    result = run(tmp_path / "a", "join", code)
    assert result.exit_code == 1 and "holds a space already" in result.output


def test_peers_add_validates_and_refuses_duplicates(tmp_path: Path) -> None:
    run(tmp_path, "init")
    assert run(tmp_path, "peers", "add", "gpu.local").output.strip() == "added ws://gpu.local:7330"
    again = run(tmp_path, "peers", "add", "ws://gpu.local:7330")
    assert again.exit_code == 1 and "known peer already" in again.output
    for bad in ("http://x:1", "ws://:7330", "ws://x:99999", "ws://x:1/path"):
        result = run(tmp_path, "peers", "add", bad)
        assert result.exit_code == 1 and "not a peer address" in result.output, bad


def test_node_refuses_a_bad_or_busy_listen_address(tmp_path: Path) -> None:
    run(tmp_path, "init")
    bad = run(tmp_path, "node", "--listen", "nonsense")
    assert bad.exit_code == 1 and "HOST:PORT" in bad.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(tmp_path, "node", "--listen", f"127.0.0.1:{port}", "--no-discovery")
    assert result.exit_code == 1 and "cannot listen" in result.output


def test_node_refuses_a_bad_value_in_its_config(tmp_path: Path) -> None:
    run(tmp_path, "init")
    (tmp_path / "config.toml").write_text('[node]\nmemory_budget = "lots"\n')
    result = run(tmp_path, "node", "--listen", "127.0.0.1:0", "--no-discovery")
    assert (
        result.exit_code == 1 and "config.toml" in result.output and "'lots' is not a size" in result.output
    )
    assert "Traceback" not in result.output


def test_status_says_when_no_node_runs(tmp_path: Path) -> None:
    run(tmp_path, "init")
    status = json.loads(run(tmp_path, "status", "--json").stdout)
    assert status["node"] is None and status["peers"] == 0
    assert "not running" in run(tmp_path, "status").output


def test_peers_shows_one_row_per_device_however_it_was_reached() -> None:
    from syncq.cli.mesh import by_device

    def row(url: str, node_id: str | None, **fields: object) -> dict:
        base = {"url": url, "source": "config", "node_id": node_id, "name": None, "connected": False}
        return base | {"last_seen": None, "behind": None, "error": None} | fields

    gpu = "ab" * 32
    rows = [
        row(f"inbound:{gpu}", gpu, source="inbound", name="gpu", connected=True, last_seen=20, behind=0),
        row("ws://gpu.local:7330", gpu, name="gpu", last_seen=10, error="duplicate connection"),
        row("ws://never.local:7330", None, error="connection refused"),
    ]
    merged = by_device(rows)
    assert [
        (r["url"], r["name"], r["connected"], r["last_seen"], r["behind"], r["error"]) for r in merged
    ] == [
        ("ws://gpu.local:7330", "gpu", True, 20, 0, None),
        ("ws://never.local:7330", None, False, None, None, "connection refused"),
    ]
    assert merged[0]["addresses"] == [f"inbound:{gpu}", "ws://gpu.local:7330"]
    assert merged[0]["source"] == "inbound, config"
