"""Link watch (broker loss) and bus close on a dead server, with plain values and a real nats-server."""

from __future__ import annotations

import asyncio

from shell.bus import EmbeddedNats, LinkWatch, close_bus, connect, has_given_up
from shell.config import NatsConfig


def test_gives_up_only_after_one_unbroken_stretch_down():
    assert not has_given_up(None, 100.0, 5.0)  # up
    assert not has_given_up(10.0, 14.9, 5.0)
    assert has_given_up(10.0, 15.0, 5.0)
    assert not has_given_up(10.0, 1e9, None)  # never, the default


async def test_link_watch_gives_up_while_down_and_not_after_coming_back():
    link = LinkWatch(give_up_after_s=0.2)
    link.mark_up()
    watch = asyncio.create_task(link.run())
    link.mark_down()
    link.mark_up()  # back before the limit: the stretch is over
    assert not link.gave_up.is_set() and link.down_since is None
    link.mark_down()
    await asyncio.wait_for(link.gave_up.wait(), 30)
    await asyncio.wait_for(watch, 30)
    assert not link.is_up


async def test_close_bus_does_not_wait_for_a_killed_server():
    server = EmbeddedNats(port=None).start()
    link = LinkWatch()
    try:
        nc = await connect(NatsConfig(url=server.url), "test", link)
        assert link.is_up
        await nc.publish("x", b"pending")
        server.process.kill()
        server.process.wait()
        await asyncio.wait_for(link.down.wait(), 30)
        await asyncio.wait_for(close_bus(nc, timeout_s=600), 30)  # a drain would wait for the server: close instead
        assert nc.is_closed
    finally:
        server.stop()
