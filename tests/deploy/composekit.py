"""Reading docker-compose files the way `docker compose` does, without Docker: variables, profiles, mounts."""

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


def load(name: str, env: Mapping[str, str] | None = None) -> dict:
    """deploy/<name> parsed (anchors and `<<` merges included) with variables substituted from `env`."""
    return resolve(yaml.safe_load((DEPLOY / name).read_text()), env or {})


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


def services(file: str, env: Mapping[str, str] | None = None) -> list[Service]:
    return [Service(file, name, spec) for name, spec in load(file, env)["services"].items()]
