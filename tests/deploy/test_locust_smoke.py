"""The locust smoke preset against `diffmesh up` with mocker workers: zero failures, TTFT/ITL percentiles printed."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.composekit import DEPLOY

sys.path.insert(0, str(DEPLOY / "locust"))
from meshload_trace import default_trace_path  # noqa: E402

pytestmark = pytest.mark.slow
LOCUST = str(Path(sys.executable).parent / "locust")


def trace_path(out: Path) -> Path:
    """The public Mooncake trace when this checkout sits next to ../shared, else a small one in the same format."""
    shared = default_trace_path()
    if shared.exists():
        return shared
    path = out / "trace.jsonl"
    with path.open("w") as handle:
        for i in range(200):  # 8 conversations, each turn extending its previous turn's blocks
            conversation, turn = i % 8, i // 8
            blocks = [1000 * conversation + b for b in range(turn + 2)]
            handle.write(json.dumps({"timestamp": i * 50, "input_length": 512 * len(blocks) - 100,
                                     "output_length": 16, "hash_ids": blocks}) + "\n")
    return path


def run_locust(host: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    command = [LOCUST, "-f", str(DEPLOY / "locust" / "locustfile.py"), "--config", str(DEPLOY / "locust" / "smoke.conf"),
               "--host", host, "--summary-json", str(out / "summary.json"), "--csv", str(out / "stats"),
               "--trace-path", str(trace_path(out)), *extra]
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
