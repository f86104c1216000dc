"""Schemathesis against /openapi.json of a running mesh: no 5xx, responses match their schema, bad input is refused.

A bounded run (fixed seed, capped examples) for CI; `positive_data_acceptance` is left out on purpose: the server
rightly refuses some schema-valid requests (a prompt longer than the model's context, image input to a text model).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shell.bus import free_port, wait_for
from tests.meshkit import Mesh

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance,negative_data_rejection")
pytestmark = pytest.mark.slow


def _diffmesh(*args: str, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "diffmesh.cli", "--log-level", "WARNING", *args]
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(nats_server, tmp_path):
    mesh = Mesh(nats_server.url)  # for its namespace and cleanup; the frontend runs in its own process here
    mesh.port = free_port()
    env = {**os.environ, "DIFFMESH_LIMIT_MAX_TOKENS": "64", "DIFFMESH_FUZZ_MODEL": "mocker", "PYTHONPATH": str(ROOT)}
    common = ["--nats-url", nats_server.url, "--namespace", mesh.namespace]
    mesh.processes += [_diffmesh("frontend", *common, "--host", "127.0.0.1", "--port", str(mesh.port), env=env),
                       _diffmesh("worker", "mocker", *common, "--speedup-ratio", "inf", env=env)]
    try:
        await wait_for(_serving(mesh), 60, 0.1)
        command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{mesh.url}/openapi.json", "--checks", CHECKS,
                   "--max-examples", "25", "--seed", "1", "--workers", "1", "--generation-database", "none",
                   "--no-color"]
        result = subprocess.run(command, env={**env, "SCHEMATHESIS_HOOKS": "tests.frontend.fuzz_hooks"}, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
    finally:
        await mesh.close()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]


def _serving(mesh: Mesh):
    import aiohttp

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{mesh.url}/health") as response:
                return "mocker" in (await response.json())["models"]
        except aiohttp.ClientError:
            return False

    return ready
