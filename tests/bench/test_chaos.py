"""bench/chaos.py in short: workers killed -9 under load (every 12 requests here, not every 5 s); none fails or hangs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_short_chaos_run_completes_every_request_with_the_clean_answer():
    command = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--requests", "60", "--baseline-requests", "0",
               "--workers", "3", "--concurrency", "8", "--kill-every-requests", "12", "--heartbeat", "0.3",
               "--max-tokens", "48", "--hang-after", "60", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["kills"] >= 4  # one per 12 requests sent
    assert (row["sent"], row["completed"], row["failed"], row["hung"]) == (60, 60, 0, 0), row
    assert row["migrated"] >= 1  # the killed workers held streams: they moved, none was lost
