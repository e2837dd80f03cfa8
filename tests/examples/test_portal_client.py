"""examples/portal_client.sh: the file portal from a shell script, as a user runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from syncq.space import Space

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parents[2] / "examples" / "portal_client.sh"


def test_the_shell_client_gets_answers_and_clear_refusals(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "a", name="gpu").close()
    nodes(tmp_path / "a").wait_event("portal")
    env = {**os.environ, "SYNCQ_HOME": str(tmp_path / "a")}

    def ask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)

    answered = ask("echo", 'it\'s a "quoted" question: with colons')
    assert answered.returncode == 0 and answered.stdout == 'it\'s a "quoted" question: with colons'
    refused = ask("no-such-model", "hello")
    assert refused.returncode == 1 and "no node of this space serves model 'no-such-model'" in refused.stderr
