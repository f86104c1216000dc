"""frontend/, router/ and protocol/ must import without torch, transformers or diffusers."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "diffusers")
LIGHT_MODULES = [
    "protocol.openai", "protocol.work", "protocol.events", "protocol.control", "protocol.kv", "protocol.routing",
    "protocol.subjects", "protocol.errors", "router.core", "router.service", "router.index", "router.policy",
    "frontend.app", "frontend.text", "frontend.images", "frontend.registry", "diffmesh.cli", "shell.flags", "shell.process", "workers.mocker", "workers.dllm", "workers.image", "workers.mocker.worker",
    "workers.dllm.worker", "workers.image.worker", "workers.image.storage", "workers.encode", "workers.encode.worker",
    "shell.images", "shell.blobs",
]


def test_light_packages_import_without_ml_libraries():
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}: importlib.import_module(name)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
