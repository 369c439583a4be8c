"""Throw-away networks on loopback for benchmarks and integration tests.

``make_network`` writes a topology YAML with free loopback ports and generates its keys, exactly as
``zmix-up`` would, so benchmarks and tests run the real node processes on real sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from zmix.keys import ensure_keys
from zmix.topology import Topology
from zmix.topology_yaml import load_topology

HOST = "127.0.0.1"


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def make_network(
    directory: Path,
    *,
    layers: Sequence[Sequence[str]] = (("mix-a1", "mix-a2"), ("mix-b1", "mix-b2"),
                                       ("mix-c1", "mix-c2")),
    providers: Sequence[str] = ("provider-1", "provider-2"),
    clients: Mapping[str, str] | None = None,
    loopix: Mapping[str, float] | None = None,
    mailbox: Mapping[str, Any] | None = None,
    node: Mapping[str, Any] | None = None,
    sphinx: Mapping[str, int] | None = None,
    workers: int = 1,
    network: str = "zmix-test",
    node_options: Mapping[str, Mapping[str, Any]] | None = None,
    epoch: Mapping[str, Any] | None = None,
    authorities: Sequence[str] = ("authority-1",),
    authority_threshold: int | None = None,
) -> tuple[Topology, Path]:
    """Write ``directory/topology.yaml``, generate keys into ``directory/state``.

    Every network declares its directory authorities (``authorities``, each on a free port);
    ``epoch`` is the topology's ``epoch:`` section (a short one needs a small
    ``loopix.max_delay``: docs/topology.md). Returns the loaded topology (from the state
    directory's copy) and the state directory.
    """
    names = [*providers, *(n for layer in layers for n in layer), *authorities]
    ports = iter(free_ports(len(names)))
    options = node_options or {}

    def entry(name: str) -> dict[str, Any]:
        return {"name": name, "port": next(ports), **options.get(name, {})}

    spec: dict[str, Any] = {
        "network": network,
        "sphinx": dict(sphinx or {"payload_length": 2048, "max_hops": 5}),
        "loopix": {"mean_delay": 0.001, "payload_rate": 20.0, "loop_rate": 1.0,
                   "drop_rate": 1.0, "mix_loop_rate": 0.5, "fetch_interval": 0.1,
                   "max_delay": 30.0, **(loopix or {})},
        "mailbox": {"quota": 10_000, "ttl": 86_400, "open_registration": False,
                    "fetch_slots": 8, **(mailbox or {})},
        "node": {"queue_limit": 100_000, "drain_on_shutdown": False,
                 "replay_capacity": 1_000_000, **(node or {})},
        "defaults": {"host": HOST, "workers": workers},
        "layers": [[entry(n) for n in layer] for layer in layers],
        "providers": [entry(n) for n in providers],
        "clients": [{"name": c, "provider": p} for c, p in (clients or {}).items()],
        "authorities": [{"name": a, "port": next(ports)} for a in authorities],
    }
    if epoch is not None:
        spec["epoch"] = dict(epoch)
    if authority_threshold is not None:
        spec["authority_threshold"] = authority_threshold
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    state = directory / "state"
    ensure_keys(state, load_topology(path))
    return load_topology(state / "topology.yaml"), state
