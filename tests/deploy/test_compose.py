"""deploy/docker-compose*.yml: structure, and every service's command run through the real CLI (no Docker needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from diffmesh import cli, launch
from shell.bus import find_nats_server
from tests.deploy.composekit import DEPLOY, MissingVariable, Service, load, read_env_file, services

MULTIHOST_ENV = read_env_file(DEPLOY / "multihost.env.example")
FILES = {"docker-compose.yml": {}, "docker-compose.multihost.yml": MULTIHOST_ENV}
STACKS = [("docker-compose.yml",), ("docker-compose.multihost.yml",), ("docker-compose.yml", "docker-compose.router.yml")]
ALL_SERVICES = [s for stack in STACKS for s in services(*stack, env=FILES.get(stack[0]))]
OURS = [s for s in ALL_SERVICES if s.is_ours]
NOT_CLI_VARS = {"HF_HUB_OFFLINE"}  # read by huggingface_hub inside the workers, not by the diffmesh CLI
DIFFMESH = str(Path(sys.executable).parent / "diffmesh")


def _service(file: str, name: str) -> Service:
    return next(s for s in ALL_SERVICES if s.file == file and s.name == name)


def _cluster_conf() -> str:
    return (DEPLOY / "nats" / "cluster.conf").read_text()


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _skip_missing_worker_kind(service: Service) -> None:
    if "worker" in service.command:
        kind = _flag(service.command, "worker")
        if kind not in launch.available_kinds():
            pytest.skip(f"`diffmesh worker {kind}` is not in this build yet")


def test_nats_cluster_is_three_jetstream_nodes_routed_to_each_other_with_8mb_payloads():
    nodes = [_service("docker-compose.yml", f"nats-{i}") for i in (1, 2, 3)]
    conf = _cluster_conf()
    assert re.search(r"^max_payload: 8MB", conf, re.M) and re.search(r"^jetstream \{", conf, re.M)
    assert re.search(r"^http: 0\.0\.0\.0:8222", conf, re.M)  # monitoring
    routes = re.findall(r"nats://([\w-]+):6222", conf.split("cluster {")[1])
    assert sorted(routes) == [n.name for n in nodes]  # every route is a compose service
    assert len({_flag(n.command, "--name") for n in nodes}) == 3
    for node in nodes:
        assert node.entrypoint == ["nats-server"] and _flag(node.command, "-c") == "/etc/nats/cluster.conf"
        assert node.mounts()["/etc/nats"] == "./nats" and node.mounts()["/data"] == node.name  # own JetStream volume
        assert any(port.endswith(":8222") for port in node.spec["ports"])
        assert "js-enabled-only" in " ".join(node.spec["healthcheck"]["test"])


def test_frontend_replicas_sit_behind_one_published_port():
    frontend, gateway = _service("docker-compose.yml", "frontend"), _service("docker-compose.yml", "gateway")
    published = [s.name for s in ALL_SERVICES if s.file == "docker-compose.yml" and
                 any(str(p).endswith(":8000") for p in s.spec.get("ports", []))]
    assert published == ["gateway"] and "ports" not in frontend.spec
    assert frontend.spec["deploy"]["replicas"] >= 2
    nginx = (DEPLOY / gateway.mounts()["/etc/nginx/nginx.conf"]).read_text()
    assert f"server frontend:{frontend.environment['DIFFMESH_PORT']}" in nginx
    assert "proxy_buffering off" in nginx  # SSE tokens pass through unbuffered
    assert frontend.environment["DIFFMESH_NATS_URL"].split(",") == [f"nats://nats-{i}:4222" for i in (1, 2, 3)]


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("name", ["dllm", "image", "encode"])
def test_gpu_workers_reserve_a_gpu_and_read_checkpoints_from_a_read_only_mount(file, name):
    worker = _service(file, name)
    [device] = worker.gpu_devices()
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["device_ids"]
    model_mount = next(v for v in worker.spec["volumes"] if v.split(":")[1] == "/models")
    assert model_mount.endswith(":ro")
    assert _flag(worker.command, "--model").startswith("/models/")
    assert worker.environment["DIFFMESH_JS_REPLICAS"] == "3"


def test_monitoring_profile_scrapes_the_frontends_and_provisions_the_dashboard():
    prometheus, grafana = _service("docker-compose.yml", "prometheus"), _service("docker-compose.yml", "grafana")
    assert prometheus.spec["profiles"] == grafana.spec["profiles"] == ["monitoring"]
    scrape = yaml.safe_load((DEPLOY / prometheus.mounts()["/etc/prometheus/prometheus.yml"]).read_text())
    [target] = scrape["scrape_configs"][0]["dns_sd_configs"]
    frontend = _service("docker-compose.yml", "frontend")
    assert target["names"] == ["frontend"] and str(target["port"]) == frontend.environment["DIFFMESH_PORT"]
    provisioning = DEPLOY / grafana.mounts()["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and any(p.endswith(":9090") for p in prometheus.spec["ports"])
    [provider] = yaml.safe_load((provisioning / "dashboards" / "diffmesh.yml").read_text())["providers"]
    dashboards = grafana.host_path(provider["options"]["path"], Path("/nonexistent"))
    assert (Path(dashboards) / "diffmesh.json").is_file()
    assert grafana.environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(provider["options"]["path"])


def test_mocker_profile_needs_no_gpu_and_the_encode_worker_is_an_opt_in_profile():
    mocker = _service("docker-compose.yml", "mocker")
    assert mocker.spec["profiles"] == ["mocker"] and not mocker.gpu_devices()
    encode = _service("docker-compose.yml", "encode")
    assert "encode" in launch.WORKER_KINDS and encode.spec["profiles"] == ["multimodal"]
    assert _flag(encode.command, "worker") == "encode" and _flag(encode.command, "--max-batch") == "16"


def test_router_override_adds_one_standalone_router_that_the_frontends_use():
    router, frontend = _service("docker-compose.router.yml", "router"), _service("docker-compose.router.yml", "frontend")
    assert "router" in router.command and "replicas" not in router.spec.get("deploy", {})
    assert frontend.environment["DIFFMESH_ROUTER_URL"] == "nats" and "router" in frontend.spec["depends_on"]
    assert frontend.environment["DIFFMESH_NATS_URL"] == router.environment["DIFFMESH_NATS_URL"]
    assert set(frontend.spec["depends_on"]) >= {"nats-1", "nats-2", "nats-3"}  # the base file's dependencies stay


def test_multihost_roles_are_profiles_wired_by_env_vars():
    roles = {s.name: s for s in ALL_SERVICES if s.file == "docker-compose.multihost.yml"}
    assert all(len(s.spec["profiles"]) == 1 for s in roles.values())
    nats = roles["nats"].command
    assert _flag(nats, "--routes") == MULTIHOST_ENV["NATS_ROUTES"] and _flag(nats, "--name") == MULTIHOST_ENV["NATS_NAME"]
    assert _flag(nats, "--cluster_advertise") == f"{MULTIHOST_ENV['HOST_ADDR']}:6222"
    for name in ("frontend", "dllm", "image", "mocker"):
        assert roles[name].environment["DIFFMESH_NATS_URL"] == MULTIHOST_ENV["DIFFMESH_NATS_URL"]
    with pytest.raises(MissingVariable, match="DIFFMESH_NATS_URL"):
        load("docker-compose.multihost.yml", env={k: v for k, v in MULTIHOST_ENV.items() if k != "DIFFMESH_NATS_URL"})


def _entry_point():
    """The function the installed `diffmesh` console script calls."""
    (script,) = entry_points(group="console_scripts", name="diffmesh")
    return script.load()


@pytest.mark.parametrize("service", [s for s in OURS if s.entrypoint == ["nats-server"]], ids=lambda s: f"{s.file}:{s.name}")
def test_nats_node_command_is_a_valid_nats_server_configuration(service, tmp_path):
    """The real nats-server checks the node's exact flags and config file (-t), container paths mapped to deploy/."""
    args = [service.host_path(arg, tmp_path) if arg.startswith("/") else arg for arg in service.command]
    result = subprocess.run([find_nats_server(), *args, "-t"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "is valid" in result.stderr + result.stdout, result.stderr


@pytest.mark.parametrize("service", [s for s in OURS if s.entrypoint == ["diffmesh"]], ids=lambda s: f"{s.file}:{s.name}")
def test_service_command_and_every_env_var_are_accepted_by_the_cli(service, monkeypatch, capsys):
    """The service's command dry-runs through the `diffmesh` entry point with its env; changing any DIFFMESH_* value
    it sets changes the printed configuration, so the CLI reads every one."""
    _skip_missing_worker_kind(service)
    unknown = {k for k in service.environment if not k.startswith("DIFFMESH_")} - NOT_CLI_VARS
    assert not unknown, f"{service.name}: env vars no diffmesh process reads: {unknown}"
    main = _entry_point()
    monkeypatch.setattr(cli.logs, "configure", lambda *args: None)  # keep pytest's log handlers
    for key in [k for k in os.environ if k.startswith("DIFFMESH_")]:
        monkeypatch.delenv(key)

    def dry_run(env: dict[str, str]) -> tuple[int, str]:
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            code = main([*service.command, "--dry-run"])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    env = {k: v for k, v in service.environment.items() if k.startswith("DIFFMESH_")}
    code, baseline = dry_run(env)
    assert code == 0, baseline
    for key, value in env.items():
        changed = str(int(value) + 1) if value.isdigit() else value + "x"
        code, output = dry_run({**env, key: changed})
        # the new value reaches the config: either it prints differently or validation rejects it by value
        reached = (code == 0 and output != baseline) or (code == 2 and repr(changed) in output)
        assert reached, f"{service.name}: {key} does not reach the config"


def test_console_script_dry_runs_the_frontend_service_in_its_own_process():
    frontend = _service("docker-compose.yml", "frontend")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIFFMESH_")}, **frontend.environment}
    result = subprocess.run([DIFFMESH, *frontend.command, "--dry-run"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222" in result.stdout and "port=8000" in result.stdout
