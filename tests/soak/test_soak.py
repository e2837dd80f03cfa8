"""One minute of the soak (tests/soak/soak.py; ``make soak MINUTES=10`` runs longer): six real
node processes, random cuts, delays, partitions and kill -9, a device removed midway, and at the
end nothing acknowledged lost and every member equal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parent / "soak.py"


def test_a_minute_of_faults_loses_nothing_and_every_member_ends_equal() -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["converged"], report
    assert report["lost"] == 0 and report["divergent"] == 0 and report["portal_lost"] == 0, report
    assert report["acknowledged"] > 50 and report["kills"] > 0 and report["partitions"] > 0, report
    assert report["removals"] == 1 and report["errors"] == [], report
    assert set(report["statuses"]) == {"done"}, report  # every prompt ran
    assert done.returncode == 0, done.stderr[-3000:]
