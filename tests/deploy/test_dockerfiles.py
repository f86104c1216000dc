"""deploy/Dockerfile*: every package is copied and let through the ignore file; non-root, health check, entrypoint."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.deploy.composekit import DEPLOY, ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}


def _instructions(name: str) -> list[tuple[str, str]]:
    text = (DEPLOY / name).read_text().replace("\\\n", " ")
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
            if not m[0].lstrip().startswith("#")]


def _copied_from_context(name: str) -> set[str]:
    """Sources of COPY lines that read the build context (not --from=stage)."""
    sources = set()
    for kind, args in _instructions(name):
        words = [w for w in args.split() if not w.startswith("--")]
        if kind == "COPY" and "--from" not in args:
            sources.update(words[:-1])  # the last word is the destination
    return sources


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.frontend"])
def test_image_copies_every_package_the_project_installs(name):
    copied = _copied_from_context(name)
    assert copied == {"pyproject.toml", PYPROJECT["project"]["readme"], *PACKAGES, "deploy/healthcheck.py"}
    allowed = {line[1:].rstrip("/") for line in (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert copied <= allowed  # the ignore file starts with `*`: each source must be let back in
    assert all((ROOT / source).exists() for source in copied - {PYPROJECT["project"]["readme"]})


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.frontend"])
def test_image_runs_diffmesh_as_a_non_root_user_with_a_health_check(name):
    steps = _instructions(name)
    final_stage = steps[max(i for i, (kind, _) in enumerate(steps) if kind == "FROM"):]
    users = [args for kind, args in final_stage if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["diffmesh"]') in final_stage
    [healthcheck] = [args for kind, args in final_stage if kind == "HEALTHCHECK"]
    assert "/opt/diffmesh/healthcheck.py" in healthcheck
    assert any(kind == "COPY" and args.endswith("deploy/healthcheck.py /opt/diffmesh/healthcheck.py")
               for kind, args in final_stage)


def test_full_image_has_cuda_and_the_ml_extra_and_the_slim_one_has_neither():
    full, slim = (DEPLOY / "Dockerfile").read_text(), (DEPLOY / "Dockerfile.frontend").read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-", full) and 'pip install ".[ml]"' in full
    assert "torch" not in re.sub(r"#.*", "", slim).split("assert not")[0] and ".[ml]" not in slim
    assert "'torch', 'transformers', 'diffusers'" in slim  # the build fails if the frontend pulls them in
