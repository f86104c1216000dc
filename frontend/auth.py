"""HTTP API keys: `Authorization: Bearer KEY`, compared in constant time; keys come from a flag, env or a file.

Keys are never logged or echoed: the config keeps them out of its repr, and a refusal names no key.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from aiohttp import web

from frontend.errors import error_response
from protocol.errors import Unauthorized
from shell.config import ConfigError, FrontendConfig


def load_api_keys(config: FrontendConfig) -> tuple[bytes, ...]:
    """`api_key` plus one key per line of `api_key_file` ('#' comments and blank lines skipped); () = no auth."""
    keys = [config.api_key] if config.api_key else []
    if config.api_key_file:
        try:
            lines = Path(config.api_key_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"api_key_file={config.api_key_file!r} cannot be read: {exc.strerror}") from None
        listed = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not listed:
            raise ConfigError(f"api_key_file={config.api_key_file!r} lists no key")
        keys += listed
    return tuple(key.encode() for key in keys)


def is_public(path: str, public_paths: tuple[str, ...]) -> bool:
    """Exact paths, or prefixes when the listed path ends with '/'."""
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in public_paths)


def key_matches(header: str, keys: tuple[bytes, ...]) -> bool:
    """Constant time in the key's content, and every key is compared (no early exit on the first match)."""
    scheme, _, given = header.partition(" ")
    presented = given.strip().encode() if scheme.lower() == "bearer" else b""
    results = [hmac.compare_digest(presented, key) for key in keys]
    return bool(presented) and any(results)


def auth_middleware(config: FrontendConfig):
    keys = load_api_keys(config)
    public = tuple(p.strip() for p in config.public_paths.split(",") if p.strip())

    @web.middleware
    async def check(request: web.Request, handler):
        if keys and not is_public(request.path, public) and not key_matches(request.headers.get("Authorization", ""), keys):
            response = error_response(Unauthorized("missing or wrong API key: send `Authorization: Bearer <key>`"))
            response.headers["WWW-Authenticate"] = 'Bearer realm="diffmesh"'
            return response
        return await handler(request)

    return check
