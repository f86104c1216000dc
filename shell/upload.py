"""Uploaded image files (POST /v1/images/edits): format allow-list, byte and pixel caps, checked before decoding.

Used by the frontend (reject bad files with a 400 naming the form field) and by image workers (decode the same
bytes again off the bus under the same limits). The shared chat-image loader of issue 10 (`shell/images/decode.py`)
does the same for `image_url` parts; once it is on main this function should delegate the format sniffing and the
pixel cap to it and keep only what edits need on top: the alpha channel of a mask (that loader converts to RGB).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from protocol.errors import InvalidRequest, PayloadTooLarge

UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 4 * 1024 * 1024  # per file; input images travel in one 8 MB bus message with the request
    max_pixels: int = 4096 * 4096


def decode_upload(data: bytes, param: str, limits: UploadLimits = UploadLimits()) -> Image.Image:
    """The fully loaded image in `data` (mode kept, so a mask keeps its alpha); raises naming `param`."""
    if not data:
        raise InvalidRequest("the uploaded file is empty", param=param)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the uploaded image is {len(data)} bytes; the limit is {limits.max_bytes}", param=param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            width, height = image.size  # from the header: checked before any pixel is decoded
            if width * height > limits.max_pixels:
                raise InvalidRequest(f"the image is {width}x{height}; at most {limits.max_pixels} pixels", param=param)
            image.load()
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidRequest(f"not a {'/'.join(UPLOAD_FORMATS)} image (or one too large to decode)", param=param) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"the image could not be decoded: {exc}", param=param) from None
    return image
