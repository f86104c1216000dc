"""Configs travel to child processes as DIFFMESH_* variables and come back unchanged."""

from __future__ import annotations

import pytest

from shell.config import (
    ConfigError, FrontendConfig, MediaConfig, NatsConfig, RequestLimits, from_env, media_from_env, nats_from_env, to_env,
)


def test_to_env_and_from_env_round_trip_a_frontend_config():
    config = FrontendConfig(nats=NatsConfig(url="nats://a:1,nats://b:2", token="secret"), namespace="ns", port=9000,
                            router_mode="least_loaded", api_key="k", workers=3, request_timeout_s=12.5,
                            media=MediaConfig(allowed_hosts=("127.0.0.1", "10.0.0.0/8"), allow_http=False),
                            limits=RequestLimits(max_images=3))
    env = to_env(config)
    assert env["DIFFMESH_NATS_URL"] == "nats://a:1,nats://b:2" and env["DIFFMESH_WORKERS"] == "3"
    assert env["DIFFMESH_ROUTER_URL"] == ""  # None: read back as unset, even over an inherited value
    assert env["DIFFMESH_LIMIT_MAX_IMAGES"] == "3" and env["DIFFMESH_MEDIA_ALLOW_HTTP"] == "0"
    rebuilt = from_env(FrontendConfig, env, nats=nats_from_env(env), media=media_from_env(env),
                       limits=from_env(RequestLimits, env, prefix="DIFFMESH_LIMIT_"))
    assert rebuilt == config


def test_negative_workers_is_rejected_naming_the_setting():
    with pytest.raises(ConfigError, match="workers=-1"):
        from_env(FrontendConfig, {"DIFFMESH_WORKERS": "-1"})
    assert FrontendConfig(workers=0).num_processes >= 1
