"""Configs travel to child processes as DIFFMESH_* variables and come back unchanged."""

from __future__ import annotations

import pytest

from shell.config import ConfigError, FrontendConfig, NatsConfig, from_env, nats_from_env, to_env


def test_to_env_and_from_env_round_trip_a_frontend_config():
    config = FrontendConfig(nats=NatsConfig(url="nats://a:1,nats://b:2", token="secret"), namespace="ns", port=9000,
                            router_mode="least_loaded", api_key="k", workers=3, request_timeout_s=12.5)
    env = to_env(config)
    assert env["DIFFMESH_NATS_URL"] == "nats://a:1,nats://b:2" and env["DIFFMESH_WORKERS"] == "3"
    assert env["DIFFMESH_ROUTER_URL"] == ""  # None: read back as unset, even over an inherited value
    assert from_env(FrontendConfig, env, nats=nats_from_env(env)) == config


def test_negative_workers_is_rejected_naming_the_setting():
    with pytest.raises(ConfigError, match="workers=-1"):
        from_env(FrontendConfig, {"DIFFMESH_WORKERS": "-1"})
    assert FrontendConfig(workers=0).num_processes >= 1
