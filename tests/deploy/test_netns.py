"""deploy/netns.sh: three network namespaces as three hosts, a clustered NATS node in each, a request across them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "netns.sh"
SKIP = 77  # the script's "namespaces cannot be made here" exit code

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _script_env(tmp_path: Path) -> dict[str, str]:
    tag = os.getpid() % 200 + 20  # distinct names and subnet per run, so parallel or leftover runs do not collide
    return {**os.environ, "DM_NETNS_PREFIX": f"dt{tag}", "DM_NETNS_SUBNET": f"10.231.{tag}",
            "DM_NETNS_STATE": str(tmp_path / "state"), "DIFFMESH": str(Path(sys.executable).parent / "diffmesh")}


def _run(action: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=300)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _chat(frontend: str, worker_id: str) -> tuple[str, dict]:
    body = {"model": "mocker", "max_tokens": 6, "nvext": {"worker_id": worker_id},
            "messages": [{"role": "user", "content": f"hello {worker_id}, from another namespace"}]}
    request = urllib.request.Request(f"{frontend}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["x-diffmesh-worker"], json.load(response)


def _logs(state: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(state.glob("*.log")))


def _ns_names(prefix: str) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(f"{prefix}-")]


def _links(prefix: str) -> list[str]:
    listing = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip() for line in listing.splitlines() if f" {prefix}-" in line]


def _check_cluster(subnet: str) -> None:
    nodes = {"nats-a": f"{subnet}.1", "nats-b": f"{subnet}.2", "nats-c": f"{subnet}.3"}
    for name, addr in nodes.items():
        routes = _get_json(f"http://{addr}:8222/routez")
        assert {r["remote_name"] for r in routes["routes"]} == set(nodes) - {name}
        assert _get_json(f"http://{addr}:8222/jsz")["meta_cluster"]["cluster_size"] == 3
    streams = _get_json(f"http://{subnet}.2:8222/jsz?streams=true&config=true")["account_details"][0]["stream_detail"]
    assert streams and all(s["config"]["num_replicas"] == 3 for s in streams)  # DIFFMESH_JS_REPLICAS=3 reached the registry


def _client_names(addr: str) -> set[str]:
    return {c.get("name", "") for c in _get_json(f"http://{addr}:8222/connz")["connections"]}


def test_request_crosses_three_namespaces_and_script_cleans_up(tmp_path):
    env = _script_env(tmp_path)
    prefix, subnet, state = env["DM_NETNS_PREFIX"], env["DM_NETNS_SUBNET"], Path(env["DM_NETNS_STATE"])
    up = _run("up", env)
    if up.returncode == SKIP:
        pytest.skip(up.stdout.strip())
    pids: list[int] = []
    try:
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}\n{_logs(state)}"
        pids = [int(p.read_text()) for p in state.glob("*.pid")]
        assert len(pids) == 6  # 3 nats nodes, frontend, 2 workers
        frontend = f"http://{subnet}.1:8000"
        models = _get_json(f"{frontend}/v1/models")["data"]
        assert [(m["id"], m["workers"]) for m in models] == [("mocker", 2)]
        for worker_id in ("mocker-b1", "mocker-c1"):
            served_by, reply = _chat(frontend, worker_id)
            assert served_by == worker_id
            assert reply["usage"]["completion_tokens"] == 6 and reply["choices"][0]["message"]["content"]
        _check_cluster(subnet)
        # the frontend talks only to the node in its namespace and the workers to theirs: replies crossed routes
        assert "diffmesh-frontend" in _client_names(f"{subnet}.1")
        assert "diffmesh-mocker" not in _client_names(f"{subnet}.1")
        assert "diffmesh-mocker" in _client_names(f"{subnet}.2")
    finally:
        down = _run("down", env)
    assert down.returncode == 0, down.stderr
    assert _ns_names(prefix) == [] and _links(prefix) == []
    assert not state.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} survived netns.sh down"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to drop it")
def test_script_exits_77_with_reason_when_namespaces_cannot_be_made(tmp_path):
    env = _script_env(tmp_path)
    unprivileged = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                                   "bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=30)
    assert unprivileged.returncode == SKIP
    assert unprivileged.stdout.startswith("skip: network namespaces need root")
