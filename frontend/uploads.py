"""multipart/form-data bodies as the official `openai` client sends them (images.edit, videos.create).

Fields arrive as strings; nested objects as `nvext[seed]`, arrays as `image[]`. `read_form` gives the fields as a
nested dict (for msgspec.convert in lax mode, so "3" -> 3 and "true" -> True) and the file parts by field name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from frontend.errors import from_validation
from protocol.errors import InvalidRequest, PayloadTooLarge

_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[[A-Za-z0-9_]*\])*)$")
MAX_PARTS = 64


@dataclass
class Form:
    fields: dict = field(default_factory=dict)  # name -> str, list[str] or nested dict
    files: dict[str, list[bytes]] = field(default_factory=dict)  # "image" collects `image` and `image[]` in order
    file_keys: dict[str, str] = field(default_factory=dict)  # name -> the key as sent ("image" or "image[]")


async def read_form(request: web.Request, max_bytes: int) -> Form:
    """Parse the whole body (at most `max_bytes`); 400 if it is not multipart, 413 if too large."""
    if not request.content_type.startswith("multipart/form-data"):
        raise InvalidRequest(f"expected a multipart/form-data body, got {request.content_type or 'none'}", param="$")
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {max_bytes}")
    try:
        reader = await request.multipart()
        return await _read_parts(reader, max_bytes)
    except (ValueError, AssertionError, RuntimeError) as exc:  # aiohttp's errors for a malformed body
        raise InvalidRequest(f"malformed multipart body: {exc}", param="$") from None


async def _read_parts(reader, max_bytes: int) -> Form:
    form, total = Form(), 0
    for _ in range(MAX_PARTS + 1):
        part = await reader.next()
        if part is None:
            return form
        data = await _read_limited(part, max_bytes - total)
        total += len(data)
        key = part.name or ""
        match = _KEY.match(key)
        if match is None:
            raise InvalidRequest(f"form field name {key!r} is not usable", param="$")
        if part.filename is not None:
            form.files.setdefault(match.group(1), []).append(data)
            form.file_keys[match.group(1)] = key
        else:
            _put(form.fields, match.group(1), re.findall(r"\[([^\]]*)\]", match.group(2)), data.decode("utf-8", "replace"))
    raise InvalidRequest(f"more than {MAX_PARTS} form parts", param="$")


async def _read_limited(part, budget: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > budget:
            raise PayloadTooLarge("request body exceeds the size limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _put(target: dict, name: str, path: list[str], value: str) -> None:
    """`a[b][c]=v` -> target["a"]["b"]["c"] = v; `a[]=v` appends to a list."""
    if not path:
        target[name] = value
        return
    head, rest = path[0], path[1:]
    if head == "":
        target.setdefault(name, [])
        if isinstance(target[name], list):
            target[name].append(value)
        return
    child = target.setdefault(name, {})
    if isinstance(child, dict):
        _put(child, head, rest, value)


def convert_form(fields: dict, kind: type):
    """The form fields as `kind` (a msgspec Struct), with strings converted; 400 naming the bad field."""
    try:
        return msgspec.convert(fields, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from None


def file_param(form: Form, name: str, index: int) -> str:
    """JSON path of one uploaded file: `$.image` when sent once as `image`, else `$.image[i]`."""
    if form.file_keys.get(name) == name and len(form.files.get(name, [])) == 1:
        return f"$.{name}"
    return f"$.{name}[{index}]"
