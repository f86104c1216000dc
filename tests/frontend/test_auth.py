"""HTTP API keys: from a flag/env and a file, constant-time compare, 401 in the OpenAI envelope, never logged."""

from __future__ import annotations

import logging

import aiohttp
import openai
import pytest

from diffmesh import cli
from frontend.auth import key_matches, load_api_keys
from shell.config import ConfigError, FrontendConfig

BODY = {"model": "mocker", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# rotated keys, one per line\nk-file-old\n\n  k-file-new  \n")
    return str(path)


async def _status(session, url: str, key: str | None = None, method: str = "post", path: str = "/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    call = session.post(url + path, json=BODY, headers=headers) if method == "post" else session.get(url + path, headers=headers)
    async with call as response:
        return response.status, response.headers.get("WWW-Authenticate"), await response.text()


async def test_wrong_or_missing_key_is_401_in_the_openai_envelope_and_every_listed_key_works(mesh, key_file, caplog):
    await mesh.start_frontend(api_key="k-env", api_key_file=key_file)
    await mesh.add_mocker()
    await mesh.wait_models("mocker", 1)
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        for key in (None, "wrong-key-123", "k-env-and-more", "k-en", ""):
            status, challenge, text = await _status(session, mesh.url, key)
            assert status == 401 and challenge.startswith("Bearer")
            assert '"type":"authentication_error"' in text and '"code":"unauthorized"' in text
            assert key is None or not key or key not in text  # the refusal does not echo what was sent
        for key in ("k-env", "k-file-old", "k-file-new"):
            assert (await _status(session, mesh.url, key))[0] == 200
        for path in ("/health", "/live", "/metrics", "/openapi.json"):  # public by default: probes and scrapers
            assert (await _status(session, mesh.url, method="get", path=path))[0] == 200
        assert (await _status(session, mesh.url, method="get", path="/v1/models"))[0] == 401
    client = openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="not-it", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(**BODY)
    client = openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="k-file-new", max_retries=0)
    assert (await client.chat.completions.create(**BODY)).usage.completion_tokens == 2
    await client.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(k in logged for k in ("k-env", "k-file-old", "k-file-new", "wrong-key-123"))


async def test_health_and_metrics_can_require_the_key_too(mesh):
    await mesh.start_frontend(api_key="k-env", public_paths="")
    async with aiohttp.ClientSession() as session:
        for path in ("/health", "/metrics", "/openapi.json"):
            assert (await _status(session, mesh.url, method="get", path=path))[0] == 401
            assert (await _status(session, mesh.url, "k-env", method="get", path=path))[0] == 200


def test_key_compare_needs_the_bearer_scheme_and_the_whole_key():
    keys = (b"secret-1", b"secret-2")
    assert key_matches("Bearer secret-2", keys) and key_matches("bearer secret-1", keys)
    assert not any(key_matches(h, keys) for h in ("secret-1", "Basic secret-1", "Bearer secret", "Bearer secret-12",
                                                   "Bearer ", ""))
    assert not key_matches("Bearer ", (b"",))  # an empty key never matches


def test_key_file_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="api_key_file"):
        load_api_keys(FrontendConfig(api_key_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="lists no key"):
        load_api_keys(FrontendConfig(api_key_file=str(tmp_path / "empty")))


def test_secrets_are_never_printed_by_dry_runs(monkeypatch, capsys, key_file):
    monkeypatch.setattr(cli.logs, "configure", lambda *args: None)
    monkeypatch.setenv("DIFFMESH_API_KEY", "env-secret-key")
    assert cli.main(["frontend", "--api-key-file", key_file, "--nats-password", "nats-secret-pw", "--nats-user", "u",
                     "--dry-run"]) == 0
    assert cli.main(["worker", "mocker", "--nats-token", "nats-secret-token", "--nats-password", "nats-secret-pw",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "api keys: 3 (never shown)" in out and "user='u'" in out
    assert not any(s in out for s in ("env-secret-key", "k-file-old", "nats-secret-pw", "nats-secret-token"))
