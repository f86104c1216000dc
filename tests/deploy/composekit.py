"""Test kit for deploy/: compose files read the way `docker compose` does (variables, merges, mounts), no Docker."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; defaults may nest; $$ is a literal $
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\}")


class MissingVariable(ValueError):
    """A `${VAR:?message}` variable is unset or empty."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution for one string."""

    def replace(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        value = env.get(name)
        is_unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("?") and is_unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and is_unset:
            return interpolate(arg, env)
        return value or ""

    parts = text.split("$$")
    return "$".join(_VARIABLE.sub(replace, part) for part in parts)


def resolve(node, env: Mapping[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def merge(base: dict, override: dict) -> dict:
    """`docker compose -f base -f override`: mappings merge key by key, other values are replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(*names: str, env: Mapping[str, str] | None = None) -> dict:
    """deploy/<names> parsed (anchors, `<<` merges), later files overriding earlier ones, variables from `env`."""
    merged: dict = {}
    for name in names:
        merged = merge(merged, yaml.safe_load((DEPLOY / name).read_text()))
    return resolve(merged, env or {})


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass(frozen=True)
class Service:
    file: str
    name: str
    spec: dict

    @property
    def entrypoint(self) -> list[str]:
        return self.spec.get("entrypoint") or ["diffmesh"]  # our images' ENTRYPOINT

    @property
    def command(self) -> list[str]:
        return list(self.spec.get("command") or [])

    @property
    def environment(self) -> dict[str, str]:
        env = self.spec.get("environment") or {}
        return {key: str(value) for key, value in env.items()}

    @property
    def is_ours(self) -> bool:
        return "diffmesh" in self.spec.get("image", "")

    def mounts(self) -> dict[str, str]:
        """container path -> source (a host path relative to deploy/, or a named volume)."""
        out = {}
        for volume in self.spec.get("volumes") or []:
            source, target = volume.split(":")[:2]
            out[target] = source
        return out

    def host_path(self, container_path: str, volume_root: Path) -> str:
        """Map a container path through the service's mounts (named volumes land under `volume_root`)."""
        for target, source in sorted(self.mounts().items(), key=lambda item: -len(item[0])):
            if container_path == target or container_path.startswith(target + "/"):
                base = DEPLOY / source if source.startswith(".") else volume_root / source
                return str(base) + container_path[len(target):]
        return container_path

    def gpu_devices(self) -> list[dict]:
        return self.spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def services(*files: str, env: Mapping[str, str] | None = None) -> list[Service]:
    """The services the last file defines or changes, as merged over the earlier files."""
    names = yaml.safe_load((DEPLOY / files[-1]).read_text())["services"]
    merged = load(*files, env=env)["services"]
    return [Service(files[-1], name, merged[name]) for name in names]


def import_deploy_module(relative_path: str):
    """A module from deploy/ (not a package), e.g. import_deploy_module("locust/meshload_sse.py")."""
    import importlib.util
    import sys

    path = DEPLOY / relative_path
    name = f"deploy_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up while it runs
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
