"""examples/openai_client.py, run as a user runs it, against a node of its home: it gets in with
the home's key, and a home without that key's file gets 401."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import laptop_and_gpu

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parents[2] / "examples" / "openai_client.py"


def test_the_example_streams_an_answer_with_the_homes_key(tmp_path: Path, nodes) -> None:
    hub, _ = laptop_and_gpu(tmp_path, nodes, "--api", "127.0.0.1:0")
    url = hub.api_url

    def ask(home: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(EXAMPLE), "--home", str(home), "--url", url, "--model", "echo"]
        return subprocess.run([*command, "hello from a client"], capture_output=True, text=True, timeout=120)

    answered = ask(tmp_path / "laptop")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == "hello from a client\n"
    # The gpu's home is of the same space, but its key is its own: the laptop's API refuses it.
    refused = ask(tmp_path / "gpu")
    assert refused.returncode != 0 and "401" in refused.stderr
