"""Media store: keys per request and user, public URLs, fsspec backends, path safety, no torch needed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from protocol.errors import InvalidRequest, NotFound
from workers.image.storage import MediaStore, StorageConfig, content_type


def test_local_store_puts_reads_and_serves_a_public_url(tmp_path):
    store = MediaStore(StorageConfig(url=str(tmp_path), public_base_url="http://localhost:8000/v1/files/"))
    key = store.make_key("bob", "req-1", "0.png")
    url = store.put(key, b"png bytes")
    assert url == f"http://localhost:8000/v1/files/{key}"
    assert key.startswith("u-") and key.endswith("/req-1/0.png") and "bob" not in key
    assert store.read(key) == b"png bytes"
    assert store.local_path(key) == tmp_path / key
    assert store.key_from_url(url) == key
    assert not list(tmp_path.rglob(".*.part"))  # staged writes were renamed


def test_without_public_base_the_url_is_the_fsspec_url(tmp_path):
    store = MediaStore(StorageConfig(url=str(tmp_path)))
    url = store.put(store.make_key(None, "r", "1.webp"), b"x")
    assert url == f"file://{tmp_path}/anon/r/1.webp"
    assert store.key_from_url(url) == "anon/r/1.webp"


def test_any_fsspec_url_works():
    store = MediaStore(StorageConfig(url=f"memory://media-{uuid.uuid4().hex}", public_base_url="https://cdn.test"))
    key = store.make_key(None, "r2", "0.jpeg")
    assert store.put(key, b"jpeg") == "https://cdn.test/anon/r2/0.jpeg"
    assert store.read(key) == b"jpeg" and store.local_path(key) is None and store.exists(key)


@pytest.mark.parametrize("key", ["../etc/passwd", "anon/../../x", "/abs/path", "anon//x.png", "anon/.hidden", "a/b/c/d/e"])
def test_unsafe_keys_are_not_found(tmp_path, key):
    store = MediaStore(StorageConfig(url=str(tmp_path)))
    with pytest.raises(NotFound):
        store.read(key)


def test_unsafe_request_ids_become_opaque_segments(tmp_path):
    store = MediaStore(StorageConfig(url=str(tmp_path)))
    key = store.make_key(None, "client id/../x", "0.png")
    assert ".." not in key and key.startswith("anon/r-")
    with pytest.raises(InvalidRequest):
        store.make_key(None, "r", "../0.png")


def test_sweep_removes_only_old_objects(tmp_path):
    store = MediaStore(StorageConfig(url=str(tmp_path)))
    store.put("anon/old/0.png", b"1")
    store.put("anon/new/0.png", b"2")
    old = (tmp_path / "anon/old/0.png")
    os.utime(old, (old.stat().st_atime - 7200, old.stat().st_mtime - 7200))
    assert store.sweep(max_age_s=3600) == 1
    assert not store.exists("anon/old/0.png") and store.exists("anon/new/0.png")


def test_content_types():
    assert [content_type(k) for k in ("a/0.png", "a/0.jpeg", "a/0.webp", "a/0.bin")] == [
        "image/png", "image/jpeg", "image/webp", "application/octet-stream"]


def test_storage_imports_without_torch():
    code = "import sys, workers.image.storage; print([m for m in ('torch', 'diffusers') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
