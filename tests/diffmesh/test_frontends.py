"""`diffmesh frontend --workers N`: N processes on one port, each serving, each following every worker, one /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from diffmesh.frontends import shared_metrics
from shell.bus import free_port, wait_for
from shell.config import METRICS_MULTIPROC_ENV
from tests.meshkit import child_pids, is_gone

pytestmark = pytest.mark.slow
NUM_PROCESSES = 3
CHAT = {"model": "mocker", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _start_frontends(mesh, num: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "diffmesh.cli", "--log-level", "WARNING", "frontend", "--workers", str(num),
               "--host", "127.0.0.1", "--port", str(port), "--nats-url", mesh.nats_url, "--namespace", mesh.namespace]
    return subprocess.Popen(command, start_new_session=True), f"http://127.0.0.1:{port}"


async def _all_see(session: aiohttp.ClientSession, url: str, views: dict[str, list[str]], workers: list[str]) -> bool:
    """One /health on a new connection (which process answered, the workers it sees); True once all N see all."""
    try:
        async with session.get(f"{url}/health") as response:
            body = await response.json()
        views[body["frontend"]] = sorted(w for ws in body["models"].values() for w in ws)
    except aiohttp.ClientError:
        pass  # not listening yet
    return len(views) == NUM_PROCESSES and all(v == workers for v in views.values())


async def test_every_frontend_process_serves_sees_every_worker_and_metrics_count_them_all(mesh):
    workers = sorted([(await mesh.add_mocker()).worker_id for _ in range(2)])
    process, url = _start_frontends(mesh, NUM_PROCESSES)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            views: dict[str, list[str]] = {}  # frontend id -> live workers it reports
            await wait_for(lambda: _all_see(session, url, views, workers), timeout_s=60)

            served: dict[str, int] = {}  # frontend id -> chat completions it answered
            while len(served) < NUM_PROCESSES:  # new connections land on the processes the kernel picks
                async with session.post(f"{url}/v1/chat/completions", json=CHAT) as response:
                    assert response.status == 200
                    frontend = response.headers["x-diffmesh-frontend"]
                    served[frontend] = served.get(frontend, 0) + 1
                assert sum(served.values()) < 500
            assert set(served) == set(views)

            async def counted() -> float:
                async with session.get(f"{url}/metrics") as response:
                    text = await response.text()
                return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                           if s.name == "dynamo_frontend_requests_total" and s.labels["status"] == "200")

            # every process flushes its counts within a second; any one of them answers with the sum
            await wait_for(lambda: _equals(counted(), sum(served.values())), timeout_s=15)
        children = child_pids(process.pid)
        assert len(children) == NUM_PROCESSES - 1
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
    assert code == 0
    assert all(is_gone(pid) for pid in children)


async def _equals(value, expected) -> bool:
    return await value == expected


async def test_frontend_children_die_with_a_killed_parent(mesh):
    process, url = _start_frontends(mesh, 2)
    try:
        children = await wait_for(lambda: child_pids(process.pid), timeout_s=30)
        assert len(children) == 1
    finally:
        process.kill()  # the parent only, SIGKILL: none of its cleanup runs
        await asyncio.to_thread(process.wait, 30)
    await wait_for(lambda: is_gone(children[0]), timeout_s=10)


def test_a_group_reaps_the_metrics_directories_of_dead_groups_and_removes_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, alive = tmp_path / f"diffmesh-metrics-{int(dead.stdout)}-x", tmp_path / f"diffmesh-metrics-{os.getpid()}-y"
    stale.mkdir()
    alive.mkdir()
    with shared_metrics(2):
        directory = os.environ[METRICS_MULTIPROC_ENV]
        assert not stale.exists() and alive.exists() and Path(directory).parent == tmp_path
    assert not Path(directory).exists() and METRICS_MULTIPROC_ENV not in os.environ
    with shared_metrics(1):  # one process: no directory at all
        assert METRICS_MULTIPROC_ENV not in os.environ
