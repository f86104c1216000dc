"""Grafana dashboard vs. what a running mesh exports on /metrics; the container health check per role."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shell.bus import free_port
from tests.deploy.composekit import DEPLOY, import_deploy_module

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "diffmesh.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "le", "inf", "nan"}
SUFFIXES = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram", "_total": "counter"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels, strings and Grafana $vars left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values, regexes)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)  # label matchers, range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):  # not inside numbers (1e-9) or durations (1h)
        followed_by_call = text[match.end():].lstrip().startswith("(")
        if not followed_by_call and match[0].lower() not in PROMQL_WORDS:
            names.add(match[0])
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def is_exported(name: str, families: dict[str, str], samples: set[str]) -> bool:
    """A sample name on /metrics, or a declared family reached through its _bucket/_sum/_count/_total name."""
    if name in samples or name in families:
        return True
    return any(name.endswith(suffix) and families.get(name[: -len(suffix)]) == kind for suffix, kind in SUFFIXES.items())


def test_metric_names_are_read_from_promql_expressions():
    expr = ('histogram_quantile(0.99, sum by (le, phase) (rate(dynamo_router_overhead_seconds_bucket{model=~"$model",'
            'status!~"2.."}[$__rate_interval]))) / clamp_min(sum(rate(x_total[5m] offset 1h)), 1e-9) and on(job) up')
    assert metric_names(expr) == {"dynamo_router_overhead_seconds_bucket", "x_total", "up"}


def test_dashboard_parses_and_has_the_panels_operators_look_for():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "errors", "time to first token", "inter-token", "hit rate", "per-worker", "queue"):
        assert topic in titles
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model"}
    assert all(t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] for t in p.get("targets", []))


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _traffic(url: str) -> None:
    """Streams, completions, a long shared prompt (full KV blocks -> events), and two client errors."""
    long_prompt = " ".join(["the mesh routes token blocks to the worker that holds them"] * 30)
    assert _post(f"{url}/v1/chat/completions", {"model": "mocker", "max_tokens": 8, "stream": True,
                                                "messages": [{"role": "user", "content": "hello"}]}) == 200
    for _ in range(2):
        assert _post(f"{url}/v1/completions", {"model": "mocker", "prompt": long_prompt, "max_tokens": 4}) == 200
    assert _post(f"{url}/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}) == 404
    assert _post(f"{url}/v1/completions", {"model": "mocker", "prompt": "x", "max_tokens": 0}) == 400


def _scrape(url: str) -> list:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def _stored_events(families: list) -> float:
    return sum(s.value for f in families for s in f.samples
               if s.name == "dynamo_component_kv_cache_events_applied" and s.labels["event_type"] == "stored")


def test_every_metric_the_dashboard_queries_is_exported_by_a_running_mesh(mesh_up):
    _traffic(mesh_up.url)
    deadline = time.monotonic() + 10
    families = _scrape(mesh_up.url)
    # `up` runs several frontend processes; the one answering may apply the KV events a moment after another replied
    while not _stored_events(families) and time.monotonic() < deadline:
        time.sleep(0.05)
        families = _scrape(mesh_up.url)
    kinds = {f.name: f.type for f in families}
    samples: dict[str, float] = {}  # sample name -> sum over label sets
    for sample in (s for f in families for s in f.samples):
        samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    wanted = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert len(wanted) >= 15
    missing = sorted(n for n in wanted if not is_exported(n, kinds, set(samples)))
    assert not missing, f"dashboard queries metrics the mesh does not export: {missing}"
    statuses = {s.labels["status"] for f in families for s in f.samples if s.name == "dynamo_frontend_requests_total"}
    assert "200" in statuses and {"404", "400"} <= statuses  # the errors are counted too
    assert _stored_events(families) > 0 and samples["dynamo_frontend_time_to_first_token_seconds_count"] > 0


healthcheck = import_deploy_module("healthcheck.py")


@pytest.mark.parametrize(("argv", "role"), [
    (["/opt/venv/bin/python3", "/opt/venv/bin/diffmesh", "--log-format", "json", "frontend"], "frontend"),
    (["/opt/venv/bin/python3", "/opt/venv/bin/diffmesh", "worker", "dllm", "--model", "/models/x"], "worker"),
    (["nats-server", "-c", "/etc/nats/cluster.conf", "--name", "nats-1"], "nats-server"),
    (["/opt/venv/bin/python3", "/opt/venv/bin/diffmesh", "--help"], None),
])
def test_healthcheck_reads_the_role_from_the_command_line(argv, role):
    assert healthcheck.role_of(argv) == role


def test_healthcheck_passes_for_live_roles_and_fails_with_a_reason(mesh_up, nats_server):
    port = mesh_up.url.rsplit(":", 1)[1]
    assert healthcheck.check("frontend", {"DIFFMESH_PORT": port})[0]
    assert healthcheck.check("worker", {"DIFFMESH_NATS_URL": f"nats://127.0.0.1:{free_port()},{mesh_up.nats_url}"})[0]
    assert healthcheck.check("nats-server", {"NATS_MONITOR_PORT": str(nats_server.monitor_port)})[0]
    closed = str(free_port())
    healthy, reason = healthcheck.check("frontend", {"DIFFMESH_PORT": closed})
    assert not healthy and f"127.0.0.1:{closed}/health" in reason
    healthy, reason = healthcheck.check("router", {"DIFFMESH_NATS_URL": f"nats://127.0.0.1:{closed}"})
    assert not healthy and reason.startswith("NATS unreachable")
