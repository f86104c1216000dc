"""Image test helpers: encoded test images, a real loopback HTTP image server, and a DNS test double.

The DNS double (`static_resolver`) is the only stand-in: it lets a public-looking name answer a private address,
which no real resolver here can be made to do. Everything else is a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import zlib
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractResolver
from PIL import Image

from shell.bus import free_port


def encoded(color=(200, 30, 30), size=(16, 16), fmt: str = "PNG", noise: int = 0) -> bytes:
    """An image file of one colour (`noise` > 0 varies pixels so that different seeds give different images)."""
    image = Image.new("RGB", size, color)
    if noise:
        pixels = image.load()
        for i in range(size[0]):
            pixels[i, (i * noise) % size[1]] = ((noise * 37) % 256, (noise * 91) % 256, (i * 13) % 256)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noisy(seed: int, size=(32, 32), fmt: str = "PNG") -> bytes:
    """An image of random pixels: incompressible, so its file is about 3 bytes a pixel."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming width x height with a few bytes of pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def psd_header() -> bytes:
    """The 26-byte header of a Photoshop file (1x1, RGB, 8 bit)."""
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 1, 1, 8, 3)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@dataclass
class ImageServer:
    """A real aiohttp server on 127.0.0.1 serving images, redirects, oversize bodies and a stall."""

    images: dict[str, bytes] = field(default_factory=dict)  # path -> body served as image/png
    port: int = 0
    stall: asyncio.Event = field(default_factory=asyncio.Event)
    num_requests: int = 0
    _runner: web.AppRunner | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def __aenter__(self) -> ImageServer:
        app = web.Application()
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/stall", self._stall)
        app.router.add_get("/stream/{size}", self._stream)
        app.router.add_get("/{name}", self._image)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.stall.set()
        await self._runner.cleanup()

    async def _image(self, request: web.Request) -> web.Response:
        self.num_requests += 1
        body = self.images.get("/" + request.match_info["name"])
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="image/png")

    async def _redirect(self, request: web.Request) -> web.Response:
        self.num_requests += 1
        raise web.HTTPFound(request.query["to"])

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        """Headers, then nothing until the server closes: a slow-loris upstream."""
        self.num_requests += 1
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(b"\x89PNG")
        await self.stall.wait()
        return response

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """`size` bytes sent chunked, with no Content-Length."""
        self.num_requests += 1
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        left = int(request.match_info["size"])
        while left > 0:
            await response.write(b"\0" * min(left, 65536))
            left -= 65536
        await response.write_eof()
        return response


def static_resolver(answers: dict[str, str]) -> type[AbstractResolver]:
    """A resolver class answering `answers` (name -> IP) and nothing else: DNS that points a name anywhere."""

    class StaticResolver(AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
            if host not in answers:
                raise OSError(f"static resolver has no answer for {host}")
            return [{"hostname": host, "host": answers[host], "port": port, "family": socket.AF_INET, "proto": 0,
                     "flags": socket.AI_NUMERICHOST}]

        async def close(self) -> None:
            pass

    return StaticResolver
