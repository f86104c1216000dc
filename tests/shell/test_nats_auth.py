"""NATS credentials against a real nats-server that requires them: user/password, token, nkey, TLS with a CA.

Each server refuses a client without credentials (and one with wrong ones); the mesh's own connect() gets in with
the configured ones, and a frontend plus an in-process and a CLI-started worker serve a request through it.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import nkeys
import pytest

from shell.bus import EmbeddedNats, connect
from shell.config import ConfigError, NatsConfig
from tests.meshkit import Mesh
from tests.tlskit import make_pki


def _nkey_pair(tmp_path) -> tuple[str, str]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    (tmp_path / "user.nk").write_bytes(seed + b"\n")
    return str(tmp_path / "user.nk"), nkeys.from_seed(bytearray(seed)).public_key.decode()


def _servers(tmp_path):
    """(name, server config, good NatsConfig fields, wrong NatsConfig fields) per credential kind."""
    seed_file, public = _nkey_pair(tmp_path)
    (tmp_path / "other").mkdir()
    wrong_seed, _ = _nkey_pair(tmp_path / "other")
    pki = make_pki(tmp_path)
    tls = (f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", ca_file: "{pki.ca}", '
           "verify: true, timeout: 5 }\n")
    client_tls = dict(tls_ca=str(pki.ca), tls_cert=str(pki.client_cert), tls_key=str(pki.client_key))
    return {
        "user_password": ("authorization { user: mesh, password: s3cret-pw }\n", dict(user="mesh", password="s3cret-pw"),
                          dict(user="mesh", password="nope")),
        "token": ("authorization { token: s3cret-token }\n", dict(token="s3cret-token"), dict(token="nope")),
        "nkey": (f"authorization {{ users: [ {{ nkey: {public} }} ] }}\n", dict(nkey_seed=seed_file),
                 dict(nkey_seed=wrong_seed)),
        "tls_client_cert": (tls, client_tls, dict(tls_ca=str(pki.ca))),  # wrong: trusts the server, shows no cert
    }


async def _refused(config: NatsConfig) -> bool:
    """connect() gives up at once with a ConfigError when the server says no (it keeps retrying unreachable ones)."""
    try:
        nc = await asyncio.wait_for(connect(config, name="test-refused"), 20)
    except ConfigError as exc:
        assert "refused this client" in str(exc)
        return True
    await nc.close()
    return False


@pytest.mark.parametrize("kind", ["user_password", "token", "nkey", "tls_client_cert"])
async def test_server_requiring_credentials_refuses_clients_without_them_and_admits_ours(tmp_path, kind):
    conf, good, wrong = _servers(tmp_path)[kind]
    scheme = "tls" if kind.startswith("tls") else "nats"
    with EmbeddedNats(port=None, extra=conf, scheme=scheme) as server:
        base = dict(url=server.url, connect_timeout_s=2.0)
        assert await _refused(NatsConfig(**base))  # no credentials at all
        assert await _refused(NatsConfig(**base, **wrong))
        nc = await connect(NatsConfig(**base, **good), name="test-admitted")
        assert nc.is_connected
        await nc.close()


async def test_a_whole_mesh_serves_through_a_server_requiring_tls_and_a_password(tmp_path):
    pki = make_pki(tmp_path)
    conf = (f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", ca_file: "{pki.ca}", verify: true }}\n'
            "authorization { user: mesh, password: s3cret-pw }\n")
    with EmbeddedNats(port=None, extra=conf, scheme="tls") as server:
        creds = dict(user="mesh", password="s3cret-pw", tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                     tls_key=str(pki.client_key))
        mesh = Mesh(server.url)
        try:
            await mesh.start_frontend(nats=NatsConfig(url=server.url, **creds))
            await mesh.add_mocker(nats=NatsConfig(url=server.url, **creds))
            cli = mesh.spawn_worker("mocker", "--worker-id", "from-cli", "--nats-user", "mesh",
                                    "--nats-password", "s3cret-pw", "--nats-tls-ca", str(pki.ca),
                                    "--nats-tls-cert", str(pki.client_cert), "--nats-tls-key", str(pki.client_key))
            await mesh.wait_models("mocker", 2)
            body = {"model": "mocker", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                    "nvext": {"worker_id": "from-cli"}}
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
                    assert response.status == 200, await response.text()
                    assert response.headers["x-diffmesh-worker"] == "from-cli"
            assert cli.poll() is None
        finally:
            await mesh.close()
