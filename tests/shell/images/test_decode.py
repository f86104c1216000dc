"""Decoding: data URLs, the format allow-list, the header pixel cap, RGB conversion and the mm_hash."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import InvalidRequest
from protocol.kv import image_mm_hash
from shell.images import decode_image, parse_data_url, sniff_format
from tests.imagekit import encoded, png_header, psd_header


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode_to_rgb_with_a_pixel_hash(fmt):
    decoded = decode_image(encoded((10, 200, 30), (12, 7), fmt), max_pixels=1000)
    assert (decoded.format, decoded.image.mode, decoded.width, decoded.height) == (fmt, "RGB", 12, 7)
    assert decoded.mm_hash == image_mm_hash(12, 7, decoded.image.tobytes())


def test_transparent_and_palette_images_become_rgb():
    from PIL import Image
    import io

    image = Image.new("P", (4, 4), 3)
    image.info["transparency"] = 3
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=3)
    assert decode_image(buffer.getvalue(), 100).image.mode == "RGB"


def test_same_pixels_same_hash_whatever_the_encoding_and_shape_counts():
    png, webp = encoded(fmt="PNG"), encoded(fmt="WEBP")  # lossless-identical solid colour
    assert png != webp
    assert decode_image(png, 1000).mm_hash == decode_image(encoded(fmt="PNG"), 1000).mm_hash
    wide, tall = decode_image(encoded(size=(2, 8)), 100), decode_image(encoded(size=(8, 2)), 100)
    assert wide.image.tobytes() == tall.image.tobytes() and wide.mm_hash != tall.mm_hash


@pytest.mark.parametrize(("data", "named"), [
    (encoded(fmt="GIF"), "GIF"), (encoded(fmt="BMP"), "BMP"), (psd_header(), "PSD"), (encoded(fmt="TIFF"), "TIFF"),
    (b"hello world", "unknown"),
])
def test_formats_outside_the_allow_list_are_refused_by_name(data, named):
    with pytest.raises(InvalidRequest, match=f"image format {named} is not accepted"):
        decode_image(data, 10_000)


def test_a_50000_by_50000_png_header_is_refused_before_decoding():
    with pytest.raises(InvalidRequest, match="50000x50000|decompression bomb"):
        decode_image(png_header(50000, 50000), 32 * 1024 * 1024)


def test_pixel_cap_is_read_from_the_header():
    with pytest.raises(InvalidRequest, match="65x64 = 4160 pixels, over the limit of 4096"):
        decode_image(png_header(65, 64), 4096)  # no pixel data at all: only the header was read


def test_truncated_image_is_invalid_not_a_crash():
    data = encoded(size=(64, 64), fmt="JPEG", noise=3)
    with pytest.raises(InvalidRequest, match="not a valid JPEG"):
        decode_image(data[: len(data) // 2], 100_000)


def test_data_url_must_be_a_base64_image():
    png = encoded()
    assert parse_data_url("data:image/png;base64," + base64.b64encode(png).decode(), 1 << 20) == png
    with pytest.raises(InvalidRequest, match="holds text/plain, not an image"):
        parse_data_url("data:text/plain;base64,aGVsbG8=", 1 << 20)
    with pytest.raises(InvalidRequest, match="must be base64"):
        parse_data_url("data:image/png,rawbytes", 1 << 20)
    with pytest.raises(InvalidRequest, match="not valid base64"):
        parse_data_url("data:image/png;base64,iVBORw0KGgo*!", 1 << 20)
    with pytest.raises(InvalidRequest, match="not valid base64"):
        parse_data_url("data:image/png;base64,abc", 1 << 20)  # bad padding
    with pytest.raises(InvalidRequest, match="over the 100-byte limit"):
        parse_data_url("data:image/png;base64," + "A" * 400, 100)


def test_sniffing_names_webp_and_svg():
    assert sniff_format(encoded(fmt="WEBP")) == "WEBP"
    assert sniff_format(b"<svg xmlns='http://www.w3.org/2000/svg'/>") == "SVG"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBPVP8 "]))
def test_any_bytes_decode_or_are_an_invalid_request(data, prefix):
    try:
        decoded = decode_image(prefix + data, 1 << 20)
    except InvalidRequest:
        return
    assert decoded.image.mode == "RGB"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_data_url_parses_or_is_an_invalid_request(text):
    for url in ("data:" + text, "data:image/png;base64," + text):
        try:
            parse_data_url(url, 1 << 20)
        except InvalidRequest:
            pass
