"""Baseline for bench_bus.py: an aiohttp handler that parses the request and serves pre-recorded response bytes."""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

from protocol.openai import chat_decoder


def build_app(json_body: bytes, sse_events: list[bytes]) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        req = chat_decoder.decode(await request.read())  # the same parsing work the mesh does first
        if not req.stream:
            return web.Response(body=json_body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for event in sse_events:
            await response.write(event)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app


async def main(args: argparse.Namespace) -> None:
    json_body = open(args.json_body, "rb").read()
    sse_events = [e + b"\n\n" for e in open(args.sse_body, "rb").read().split(b"\n\n") if e]
    runner = web.AppRunner(build_app(json_body, sse_events), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, reuse_port=True).start()  # several processes share the port
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json-body", required=True)
    parser.add_argument("--sse-body", required=True)
    uvloop.run(main(parser.parse_args()))
