"""The locust smoke preset against `diffmesh up` with mocker workers: zero failures, TTFT/ITL percentiles printed."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.composekit import DEPLOY

pytestmark = pytest.mark.slow
LOCUST = str(Path(sys.executable).parent / "locust")


def run_locust(host: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    command = [LOCUST, "-f", str(DEPLOY / "locust" / "locustfile.py"), "--config", str(DEPLOY / "locust" / "smoke.conf"),
               "--host", host, "--summary-json", str(out / "summary.json"), "--csv", str(out / "stats"), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=out)
    summary_path = out / "summary.json"
    return result, json.loads(summary_path.read_text()) if summary_path.exists() else {}


def test_smoke_preset_runs_without_failures_and_reports_ttft_and_itl(mesh_up, tmp_path):
    result, summary = run_locust(mesh_up.url, tmp_path)
    output = result.stdout + result.stderr
    print(output[-6000:])  # the locust tables and the TTFT/ITL percentile lines, shown with -s or on failure
    assert result.returncode == 0, output[-4000:]
    assert summary["failures"] == 0 and summary["requests"] > 0
    for kind in ("TTFT", "ITL"):
        assert summary[kind]["count"] > 0 and summary[kind]["p50"] <= summary[kind]["p99"]
        assert f"diffmesh {kind} ms: n={summary[kind]['count']}" in output
    with open(tmp_path / "stats_stats.csv") as handle:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}
    for label in ("chat stream", "trace completion"):  # the stream rows and their timing rows
        assert int(rows["POST", label]["Request Count"]) > 0 and int(rows["TTFT", label]["Request Count"]) > 0
    assert int(rows["POST", "completion"]["Failure Count"]) == 0


def test_smoke_preset_fails_when_requests_fail(mesh_up, tmp_path):
    result, summary = run_locust(mesh_up.url, tmp_path, "--chat-model", "no-such-model", "--mix", "ChatStreamUser",
                                 "--run-time", "2s")
    assert result.returncode != 0
    assert summary["failures"] > 0 and summary["TTFT"]["count"] == 0
