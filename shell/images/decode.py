"""Bytes to a checked RGB image: `data:` URLs, a format allow-list by magic bytes, a pixel cap read from the header.

Pure (Pillow only, no I/O). Every rejection is an InvalidRequest without `param`; the loader adds the part's path.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from protocol.errors import InvalidRequest
from protocol.kv import image_mm_hash

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
_MAGIC = (  # (prefix, format) to name what was sent; only ACCEPTED_FORMATS ever reach a Pillow decoder
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
    (b"8BPS", "PSD"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x01\x00", "ICO"), (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"<svg", "SVG"), (b"<?xml", "SVG"),
)
_DATA_URL = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),(.*)$", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # mode RGB, fully loaded
    mm_hash: int  # protocol.kv.image_mm_hash of the pixels
    format: str  # JPEG | PNG | WEBP, as sniffed

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @property
    def nbytes(self) -> int:
        return self.image.width * self.image.height * 3


def parse_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL; strict base64, size checked before decoding."""
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("malformed data URL: expected data:image/<type>;base64,<data>")
    media_type, params, payload = match.group(1).strip().lower(), match.group(2).lower(), match.group(3)
    if not media_type.startswith("image/"):
        raise InvalidRequest(f"data URL holds {media_type or 'text/plain'}, not an image")
    if ";base64" not in params:
        raise InvalidRequest("data URL must be base64-encoded (data:image/<type>;base64,...)")
    if len(payload) // 4 * 3 > max_bytes:
        raise InvalidRequest(f"image data is over the {max_bytes}-byte limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"data URL is not valid base64: {exc}") from None
    if not data:
        raise InvalidRequest("data URL holds no bytes")
    return data


def sniff_format(data: bytes) -> str | None:
    """The image format the leading bytes announce (None = unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    head = data[:16].lstrip() if data[:1] in (b" ", b"\n", b"\r", b"\t") else data[:16]
    return next((fmt for prefix, fmt in _MAGIC if head.startswith(prefix)), None)


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode JPEG/PNG/WEBP bytes to RGB; the pixel count is checked from the header before any pixel is decoded."""
    fmt = sniff_format(data)
    if fmt not in ACCEPTED_FORMATS:
        raise InvalidRequest(f"image format {fmt or 'unknown'} is not accepted; send {', '.join(ACCEPTED_FORMATS)}")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"image is too large to decode (decompression bomb): {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidRequest(f"image data is not a valid {fmt}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InvalidRequest(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    rgb = _to_rgb(image, fmt)
    return DecodedImage(rgb, image_mm_hash(rgb.width, rgb.height, rgb.tobytes()), fmt)


def _to_rgb(image: Image.Image, fmt: str) -> Image.Image:
    try:
        with image:
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            if upright.mode in ("P", "PA", "LA", "La") or "transparency" in upright.info:
                upright = upright.convert("RGBA")
            return upright.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"image is too large to decode (decompression bomb): {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidRequest(f"image data is not a valid {fmt}: {exc}") from None


def solid_png_data_url(rgb: tuple[int, int, int] = (255, 255, 255), side: int = 8) -> str:
    """A small solid-colour PNG as a data: URL (health-check payloads of multimodal models)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
