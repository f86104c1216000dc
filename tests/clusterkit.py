"""A real 3-node nats-server cluster with JetStream on loopback (distinct ports), for node-loss tests."""

from __future__ import annotations

import json
import time
import urllib.request

from shell.bus import EmbeddedNats, free_port


def _get(node: EmbeddedNats, path: str) -> dict:
    with urllib.request.urlopen(f"http://{node.host}:{node.monitor_port}{path}", timeout=5) as response:
        return json.load(response)


class NatsCluster:
    """`size` clustered nodes named n0, n1, ...; `url` lists every node's client URL."""

    def __init__(self, size: int = 3, name: str = "diffmesh-test"):
        self.size, self.name = size, name
        self.nodes = self._build()

    def _build(self) -> list[EmbeddedNats]:
        cluster_ports = [free_port() for _ in range(self.size)]
        routes = ", ".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
        return [EmbeddedNats(port=None, extra=f"server_name: n{i}\ncluster {{\n  name: {self.name}\n"
                                                f"  listen: 127.0.0.1:{port}\n  routes: [{routes}]\n}}\n")
                for i, port in enumerate(cluster_ports)]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout_s: float = 30.0, tries: int = 3) -> NatsCluster:
        """Start every node; free ports are picked then bound, so another process may take one first: retry."""
        for attempt in range(tries):
            try:
                for node in self.nodes:
                    node.start(wait=False)
                for node in self.nodes:
                    node.wait_healthy(timeout_s)
                break
            except RuntimeError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt == tries - 1:
                    raise
                self.nodes = self._build()
        try:
            self.wait_meta_leader(timeout_s)
        except BaseException:
            self.stop()  # no node outlives a failed start
            raise
        return self

    def wait_meta_leader(self, timeout_s: float = 30.0) -> str:
        """JetStream's meta leader, once every live node agrees there is one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leaders = {_get(n, "/jsz").get("meta_cluster", {}).get("leader") for n in self.live}
            if len(leaders) == 1 and None not in leaders and "" not in leaders:
                return leaders.pop()
            time.sleep(0.05)
        raise TimeoutError("no JetStream meta leader")

    @property
    def live(self) -> list[EmbeddedNats]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def node_of(self, client_name: str) -> EmbeddedNats:
        """The live node a client (by its connection name) is connected to."""
        for node in self.live:
            if any(c.get("name") == client_name for c in _get(node, "/connz?limit=1024")["connections"]):
                return node
        raise LookupError(f"no node has a client named {client_name!r}")

    def clients(self, node: EmbeddedNats) -> list[str]:
        return [c.get("name", "") for c in _get(node, "/connz?limit=1024")["connections"]]

    def streams(self, node: EmbeddedNats) -> dict[str, int]:
        """Stream name -> replica count, as a node sees them."""
        details = _get(node, "/jsz?streams=true&config=true")["account_details"]
        return {s["name"]: s["config"]["num_replicas"] for d in details for s in d.get("stream_detail", [])}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
