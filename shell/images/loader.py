"""ImageLoader: `data:` or http(s) URL -> checked RGB image with its mm_hash; an LRU of decoded images by content hash."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import xxhash

from protocol.errors import InvalidRequest
from shell.config import MediaConfig
from shell.images.decode import DecodedImage, decode_image, parse_data_url
from shell.images.fetch import AddressPolicy, build_session, fetch
from shell.lru import ByteBudgetLRU


@dataclass(frozen=True)
class LoadedImage:
    data: bytes  # the encoded bytes as received (what travels to an encode worker)
    decoded: DecodedImage
    source: str  # "data" | "http"

    @property
    def mm_hash(self) -> int:
        return self.decoded.mm_hash


class ImageLoader:
    """Loads chat image parts for the frontend and decodes image bytes for encode workers, with one set of limits.

    Every failure is an InvalidRequest carrying the `param` given (e.g. `$.messages[0].content[1]`).
    """

    def __init__(self, config: MediaConfig):
        self.config = config
        self.policy = AddressPolicy.from_allowed(config.allowed_hosts)
        self.cache = ByteBudgetLRU(config.cache_bytes)  # XXH3-64 of the encoded bytes -> DecodedImage
        self._session: aiohttp.ClientSession | None = None
        self.num_fetches = 0  # http(s) downloads
        self.num_decodes = 0  # images decoded (cache misses)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def load(self, url: str, param: str) -> LoadedImage:
        """Fetch or unpack `url`, then decode it (LRU by content); InvalidRequest(param=param) on any failure."""
        try:
            if url[:5].lower() == "data:":
                data, source = parse_data_url(url, self.config.max_bytes), "data"
            else:
                data, source = await self._download(url), "http"
            return LoadedImage(data, await self.decode(data), source)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param=param) from None

    async def decode(self, data: bytes, param: str | None = None) -> DecodedImage:
        """Decode encoded bytes on a worker thread, or take the cached result for the same bytes."""
        key = xxhash.xxh3_64_intdigest(data)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            decoded = await asyncio.to_thread(decode_image, data, self.config.max_pixels)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param=param or exc.param) from None
        self.num_decodes += 1
        self.cache.put(key, decoded)
        return decoded

    async def _download(self, url: str) -> bytes:
        if self._session is None:
            self._session = build_session(self.config, self.policy)
        self.num_fetches += 1
        return await fetch(self._session, url, self.config, self.policy)
