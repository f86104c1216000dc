"""Container health check for every diffmesh role; the role is read from PID 1's command line.

frontend / up:  GET /health on DIFFMESH_PORT (503 there when the frontend lost NATS)
worker/router:  a TCP connection to one of the DIFFMESH_NATS_URL servers (the process itself is PID 1)
nats-server:    GET /healthz?js-enabled-only=true on the monitoring port (NATS_MONITOR_PORT, 8222)
Exit 0 healthy, 1 not; one line on stdout says why (docker inspect shows it).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 3.0
ROLES = ("nats-server", "frontend", "up", "worker", "router")


def role_of(argv: list[str]) -> str | None:
    """The first known role word in a command line (`diffmesh --log-format json worker dllm ...` -> worker)."""
    words = [os.path.basename(argv[0])] + argv[1:] if argv else []
    return next((w for w in words if w in ROLES), None)


def pid1_argv() -> list[str]:
    with open("/proc/1/cmdline", "rb") as handle:
        return [part.decode() for part in handle.read().split(b"\0") if part]


def http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status == 200, f"{url} -> {response.status}"
    except (OSError, urllib.error.URLError) as exc:
        return False, f"{url} -> {exc}"


def nats_reachable(urls: str) -> tuple[bool, str]:
    reasons = []
    for url in filter(None, (u.strip() for u in urls.split(","))):
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        try:
            socket.create_connection((parts.hostname, parts.port or 4222), timeout=TIMEOUT_S).close()
            return True, f"NATS {url} reachable"
        except OSError as exc:
            reasons.append(f"{url}: {exc}")
    return False, "NATS unreachable: " + ("; ".join(reasons) or "no URL")


def check(role: str | None, env: dict[str, str]) -> tuple[bool, str]:
    """(healthy, reason) for `role` with the container's environment `env`."""
    if role in ("frontend", "up"):
        return http_ok(f"http://127.0.0.1:{env.get('DIFFMESH_PORT', '8000')}/health")
    if role in ("worker", "router"):
        return nats_reachable(env.get("DIFFMESH_NATS_URL", "nats://127.0.0.1:4222"))
    if role == "nats-server":
        return http_ok(f"http://127.0.0.1:{env.get('NATS_MONITOR_PORT', '8222')}/healthz?js-enabled-only=true")
    return True, "no long-running role (a one-off command)"


def main() -> int:
    healthy, reason = check(role_of(pid1_argv()), dict(os.environ))
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
