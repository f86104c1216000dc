"""The image loader shared by the frontend (chat `image_url` parts) and encode workers (bytes off the bus).

`decode` (allow-listed formats, pixel cap from the header, RGB, mm_hash), `fetch` (SSRF-safe http(s) with byte and
time limits, redirects re-checked), `loader` (ImageLoader: both behind one call, with an LRU of decoded images).
"""

from __future__ import annotations

from shell.images.decode import (ACCEPTED_FORMATS, DecodedImage, decode_image, parse_data_url, sniff_format,
                                 solid_png_data_url)
from shell.images.fetch import AddressPolicy, AddressRefused, GuardedResolver
from shell.images.loader import ImageLoader, LoadedImage

__all__ = ["ACCEPTED_FORMATS", "AddressPolicy", "AddressRefused", "DecodedImage", "GuardedResolver",
           "ImageLoader", "LoadedImage", "decode_image", "parse_data_url", "sniff_format",
           "solid_png_data_url"]
