"""ImageLoader against real loopback HTTP servers: SSRF refusals (literals, DNS answers, redirects), limits, LRU.

Only DNS is a test double (`static_resolver`, injected through MediaConfig.resolver): it makes a public-looking
name answer 127.0.0.1, which is what a hostile DNS record would do.
"""

from __future__ import annotations

import pytest

from protocol.errors import InvalidRequest
from shell.config import MediaConfig
from shell.images import ImageLoader
from tests.imagekit import ImageServer, data_url, encoded, static_resolver

PART = "$.messages[0].content[1]"


@pytest.fixture
async def server():
    async with ImageServer(images={"/cat.png": encoded((1, 2, 3)), "/big.png": b"\x89PNG" + b"\0" * 5000}) as s:
        yield s


async def load(config: MediaConfig, url: str):
    loader = ImageLoader(config)
    try:
        return await loader.load(url, PART)
    finally:
        await loader.close()


async def refused(config: MediaConfig, url: str) -> str:
    with pytest.raises(InvalidRequest) as info:
        await load(config, url)
    assert info.value.param == PART
    return info.value.message


async def test_allow_listed_loopback_image_loads(server):
    loaded = await load(MediaConfig(allowed_hosts=("127.0.0.1",)), server.url("/cat.png"))
    assert (loaded.source, loaded.decoded.width, loaded.data) == ("http", 16, encoded((1, 2, 3)))


@pytest.mark.parametrize("host", ["127.0.0.1", "169.254.169.254", "10.1.2.3", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"])
async def test_non_public_ip_literals_are_refused_without_a_connection(server, host):
    message = await refused(MediaConfig(), f"http://{host}:{server.port}/cat.png")
    assert "refused unless the media allow-list" in message
    assert server.num_requests == 0


async def test_a_name_resolving_to_a_private_address_is_refused(server):
    resolver = static_resolver({"images.example.com": "127.0.0.1"})
    message = await refused(MediaConfig(resolver=resolver), server.url("/cat.png", host="images.example.com"))
    assert "images.example.com (127.0.0.1) is a loopback address" in message
    assert server.num_requests == 0


async def test_the_allow_list_may_name_the_host_or_its_network(server):
    resolver = static_resolver({"images.example.com": "127.0.0.1"})
    url = server.url("/cat.png", host="images.example.com")
    for allowed in (("images.example.com",), ("127.0.0.0/8",)):
        assert (await load(MediaConfig(resolver=resolver, allowed_hosts=allowed), url)).decoded.height == 16
    assert server.num_requests == 2


async def test_a_redirect_to_a_refused_address_is_refused(server):
    config = MediaConfig(allowed_hosts=("localhost",))  # the first hop is allowed by name, the target is not
    for target in ("http://169.254.169.254/latest/meta-data/", f"http://127.0.0.1:{server.port}/cat.png"):
        message = await refused(config, server.url(f"/redirect?to={target}", host="localhost"))
        assert "refused unless the media allow-list" in message
    assert server.num_requests == 2  # the two redirects; neither target was fetched


async def test_redirects_are_followed_and_counted(server):
    config = MediaConfig(allowed_hosts=("127.0.0.1",), max_redirects=1)
    once = server.url("/redirect?to=/cat.png")
    assert (await load(config, once)).decoded.width == 16
    assert "redirected more than 1 times" in await refused(config, server.url(f"/redirect?to={once}"))


async def test_downloads_over_the_byte_limit_are_refused(server):
    config = MediaConfig(allowed_hosts=("127.0.0.1",), max_bytes=4096)
    assert "5004 bytes is over the 4096-byte limit" in await refused(config, server.url("/big.png"))
    assert "passed the 4096-byte limit" in await refused(config, server.url("/stream/100000"))  # no Content-Length


async def test_a_stalled_server_is_cut_at_the_time_limit(server):
    config = MediaConfig(allowed_hosts=("127.0.0.1",), timeout_s=0.3)
    assert "did not arrive within 0.3 s" in await refused(config, server.url("/stall"))


async def test_http_errors_and_bad_schemes_are_invalid_requests(server):
    config = MediaConfig(allowed_hosts=("127.0.0.1",))
    assert "returned HTTP 404" in await refused(config, server.url("/missing.png"))
    assert "must be http or https" in await refused(config, "file:///etc/passwd")
    assert "must be https" in await refused(MediaConfig(allow_http=False), "http://example.com/a.png")
    unresolvable = MediaConfig(resolver=static_resolver({}))
    assert "could not fetch" in await refused(unresolvable, "http://nowhere.example.com/a.png")
    for malformed in ("http://[::1/a.png", "http://exa mple.com:99999/a.png", "http:///a.png"):
        await refused(MediaConfig(), malformed)


async def test_decoded_images_are_cached_by_content():
    loader = ImageLoader(MediaConfig(cache_bytes=16 * 16 * 3 * 2))
    first = await loader.load(data_url(encoded((5, 5, 5))), PART)
    again = await loader.load(data_url(encoded((5, 5, 5))), PART)
    other = await loader.load(data_url(encoded((6, 6, 6))), PART)
    assert again.decoded is first.decoded and other.mm_hash != first.mm_hash
    assert (loader.num_decodes, loader.cache.num_hits, len(loader.cache)) == (2, 1, 2)
    await loader.load(data_url(encoded((7, 7, 7))), PART)  # budget of two images: the oldest goes
    assert len(loader.cache) == 2 and loader.cache.num_bytes == 2 * 16 * 16 * 3
