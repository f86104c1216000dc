"""SSRF-safe image download: every address checked (IP literals here, host names in the resolver), redirects by hand.

A host name is resolved once per connection by `GuardedResolver`, which refuses the whole name if any address it
resolves to is not public, so aiohttp only ever connects to addresses that were checked (no DNS rebinding window).
IP-literal hosts never reach a resolver in aiohttp, so `check_url` checks them before each hop. Proxies from the
environment are not used and no cookies are kept between requests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from protocol.errors import InvalidRequest
from shell.config import MediaConfig

REDIRECTS = frozenset({301, 302, 303, 307, 308})
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(InvalidRequest):
    """The URL's host is (or resolves to) an address the policy does not allow."""


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses are fine; others only when the allow-list names the host or a network holding the address."""

    names: frozenset[str] = frozenset()  # lower-case host names, no trailing dot
    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def from_allowed(cls, entries: tuple[str, ...]) -> AddressPolicy:
        names, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def is_name_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def check(self, host: str, address: str) -> None:
        """Raise AddressRefused unless `address` (what `host` resolved to) is public or allowed."""
        ip = _unmapped(ipaddress.ip_address(address.split("%", 1)[0]))
        if is_public(ip) or any(ip in net for net in self.networks if net.version == ip.version):
            return
        shown = host if host == address else f"{host} ({address})"
        raise AddressRefused(f"image URL host {shown} is a {_kind(ip)} address; refused unless the media allow-list "
                             "(--media-allowed-hosts) names it")


def is_public(ip: IpAddress) -> bool:
    return ip.is_global and not ip.is_multicast


def _unmapped(ip: IpAddress) -> IpAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _kind(ip: IpAddress) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


class GuardedResolver(AbstractResolver):
    """Wraps a resolver; refuses a host name if any of its addresses fails the policy."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver):
        self.policy = policy
        self.inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if not self.policy.is_name_allowed(host):
            for result in results:
                self.policy.check(host, result["host"])
        return results

    async def close(self) -> None:
        await self.inner.close()


def build_session(config: MediaConfig, policy: AddressPolicy) -> aiohttp.ClientSession:
    """A client session whose connector resolves through GuardedResolver (call inside the running loop)."""
    inner = (config.resolver or aiohttp.DefaultResolver)()
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, inner), limit=64)
    return aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                                 headers={"User-Agent": "diffmesh-image-loader"},
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.timeout_s))


def check_url(url: URL, config: MediaConfig, policy: AddressPolicy) -> None:
    """Scheme and host checks before a hop; IP-literal hosts are checked against the policy here."""
    allowed = ("http", "https") if config.allow_http else ("https",)
    if url.scheme not in allowed or not url.host:
        raise InvalidRequest(f"image URL must be {' or '.join(allowed)} with a host (or a data: URL), got {_shown(url)}")
    host = url.host.strip("[]")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return  # a name: GuardedResolver checks what it resolves to
    policy.check(host, host)


async def fetch(session: aiohttp.ClientSession, url: str, config: MediaConfig, policy: AddressPolicy) -> bytes:
    """GET an image within the time and byte limits, following up to max_redirects redirects, each re-checked."""
    try:
        target = URL(url)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"image URL is malformed: {exc}") from None
    try:
        async with asyncio.timeout(config.timeout_s):
            for _ in range(config.max_redirects + 1):
                check_url(target, config, policy)
                async with session.get(target, allow_redirects=False) as response:
                    if response.status in REDIRECTS and "Location" in response.headers:
                        target = response.url.join(URL(response.headers["Location"]))
                        continue
                    if response.status != 200:
                        raise InvalidRequest(f"fetching {_shown(target)} returned HTTP {response.status}")
                    return await read_limited(response, config.max_bytes)
    except TimeoutError:
        raise InvalidRequest(f"image at {_shown(target)} did not arrive within {config.timeout_s:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"could not fetch {_shown(target)}: {type(exc).__name__}: {exc}") from None
    raise InvalidRequest(f"image URL redirected more than {config.max_redirects} times")


async def read_limited(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, refused as soon as it (or its Content-Length) passes `max_bytes`."""
    if response.content_length is not None and response.content_length > max_bytes:
        raise InvalidRequest(f"image of {response.content_length} bytes is over the {max_bytes}-byte limit")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise InvalidRequest(f"image download passed the {max_bytes}-byte limit")
        chunks.append(chunk)
    if not size:
        raise InvalidRequest("image download is empty")
    return b"".join(chunks)


def _shown(url: URL) -> str:
    """The URL for an error message: no credentials, no query, at most 200 characters."""
    text = str(url.with_user(None).with_query(None).with_fragment(None)) if url.host else str(url)
    return text if len(text) <= 200 else text[:197] + "..."
