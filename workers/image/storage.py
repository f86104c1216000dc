"""Media storage for `response_format=url` images: fsspec-backed, torch-free (the frontend imports it to serve files).

Objects live under one root (a local directory by default, any fsspec URL such as `s3://bucket/prefix` in
production) at `<owner>/<request_id>/<name>`, where owner is `anon` or `u-<sha256(user)[:16]>` so a user id never
appears in a URL. A key is that relative path; `public_url(key)` is `<public_base_url>/<key>` when a public base is
configured (the frontend serves a local store at `/v1/files/<key>`), else the fsspec URL of the object.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec

from protocol.errors import InvalidRequest, NotFound

DEFAULT_STORAGE_URL = "~/.cache/diffmesh/media"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # one key segment: no '/', no leading '.'
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class StorageConfig:
    url: str = DEFAULT_STORAGE_URL  # local path, file:// URL or any fsspec URL (s3://bucket/prefix, memory://...)
    public_base_url: str | None = None  # e.g. "http://localhost:8000/v1/files"; None = return fsspec URLs
    storage_options: tuple[tuple[str, str], ...] = ()  # extra fsspec options (endpoint_url, ...), as pairs


def owner_segment(user: str | None) -> str:
    """Object prefix for an end user: `anon`, or an opaque hash so user ids stay out of URLs."""
    if not user:
        return "anon"
    return "u-" + hashlib.sha256(user.encode()).hexdigest()[:16]


def request_segment(request_id: str) -> str:
    """The request id itself when path-safe, else an opaque hash of it (ids may carry a client's x-request-id)."""
    if _SEGMENT.match(request_id) and ".." not in request_id:
        return request_id
    return "r-" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


def check_key(key: str) -> str:
    """Return `key` if every segment is safe (no traversal, no hidden files, no empty parts), else raise NotFound."""
    parts = key.split("/")
    if not 1 <= len(parts) <= 4 or not all(_SEGMENT.match(p) and ".." not in p for p in parts):
        raise NotFound(f"no such file: {key!r}", param="$.key")
    return key


def content_type(key: str) -> str:
    """MIME type of an object by its extension (application/octet-stream when unknown)."""
    return CONTENT_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")


class MediaStore:
    """Writes and reads image objects under one fsspec root; thread-safe for concurrent puts of distinct keys."""

    def __init__(self, config: StorageConfig | None = None):
        self.config = config or StorageConfig()
        url = self.config.url
        if "://" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        self.fs, self.root = fsspec.core.url_to_fs(url, **dict(self.config.storage_options))
        self.root = self.root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)
        if self.is_local:
            self.fs.makedirs(self.root, exist_ok=True)

    def make_key(self, user: str | None, request_id: str, name: str) -> str:
        """The key of object `name` (e.g. "0.png") of one request; raises InvalidRequest for an unsafe name."""
        key = f"{owner_segment(user)}/{request_segment(request_id)}/{name}"
        try:
            return check_key(key)
        except NotFound:
            raise InvalidRequest(f"object name not usable in a path: {name!r}", param="$.output_format") from None

    def put(self, key: str, data: bytes) -> str:
        """Store `data` at `key` (atomically where the filesystem allows) and return its public URL."""
        path = self._path(check_key(key))
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:  # write-then-rename so a reader never sees a half-written file
            staging = f"{parent}/.{path.rsplit('/', 1)[1]}.part"
            self.fs.pipe_file(staging, data)
            self.fs.mv(staging, path)
        else:
            self.fs.pipe_file(path, data)
        return self.public_url(key)

    def read(self, key: str) -> bytes:
        """Bytes of the object at `key`; NotFound when absent or when the key is unsafe."""
        path = self._path(check_key(key))
        try:
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"no such file: {key!r}") from None

    def local_path(self, key: str) -> Path | None:
        """Filesystem path of `key` for a local store (so a server can sendfile it), else None."""
        if not self.is_local:
            return None
        path = Path(self._path(check_key(key)))
        return path if path.is_file() else None

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(check_key(key)))

    def public_url(self, key: str) -> str:
        base = self.config.public_base_url
        if base:
            return f"{base.rstrip('/')}/{key}"
        return self.fs.unstrip_protocol(self._path(key))

    def key_from_url(self, url: str) -> str | None:
        """The key a URL returned by `public_url` names, or None if it is not one of ours."""
        for prefix in (self.config.public_base_url, self.fs.unstrip_protocol(self.root)):
            if prefix and url.startswith(prefix.rstrip("/") + "/"):
                return check_key(url[len(prefix.rstrip("/")) + 1 :])
        return None

    def sweep(self, max_age_s: float, now: float | None = None) -> int:
        """Delete objects older than `max_age_s` seconds (OpenAI URLs live 60 min); returns how many were removed."""
        now = time.time() if now is None else now
        removed = 0
        for path in self.fs.find(self.root):
            modified = _mtime(self.fs, path)
            if modified is not None and now - modified > max_age_s:
                self.fs.rm_file(path)
                removed += 1
        return removed

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _mtime(fs, path: str) -> float | None:
    try:
        modified = fs.modified(path)
    except (NotImplementedError, FileNotFoundError):
        return None
    return modified.timestamp()
