"""bench/chaos.py in short: workers killed -9 under load (after every 10 requests that end, not every 5 s); none fails
or hangs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_short_chaos_run_completes_every_request_with_the_clean_answer():
    command = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--requests", "120", "--baseline-requests", "0",
               "--workers", "3", "--concurrency", "8", "--kill-every-requests", "10", "--heartbeat", "0.3",
               "--max-tokens", "48", "--hang-after", "60", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["kills"] >= 3  # each after 10 requests ended and the last kill was seen and replaced
    assert (row["sent"], row["completed"], row["failed"], row["hung"]) == (120, 120, 0, 0), (row, row["errors"])
    assert row["migrated"] >= 1  # the killed workers held streams: they moved, none was lost
