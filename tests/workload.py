"""The simulator's workload on a real network: clients on a network of node processes, each
submitting messages to random other clients as a Poisson process, as zmix-sim's clients do.

Shared by the tests that compare the simulator with reality (test_sim_vs_real, test_node_taps).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zmix.bench.common import make_network, network_launcher
from zmix.runtime.client import ClientRuntime
from zmix.sim.engine import client_names
from zmix.topology import Topology


def run_workload(tmp: Path, *, clients: int, loopix: Mapping[str, float], network: str,
                 rate: float, duration: float, seed: int, body: Callable[[random.Random], bytes],
                 node: Mapping[str, Any] | None = None, measure_from: float = 0.0,
                 measure_until: float = math.inf) -> tuple[Topology, Path, list[float]]:
    """Run ``clients`` generated clients (named as zmix-sim names them, spread over two
    providers) for ``duration`` seconds on a real network of ``loopix`` rates, each submitting
    ``body(rng)`` to a random other client at ``rate`` messages a second; return the topology,
    the state folder and the latency (submitted -> reassembled at the recipient's fetch) of the
    messages submitted between ``measure_from`` and ``measure_until`` seconds into the run."""
    names = client_names(clients)
    topology, state = make_network(
        tmp, clients={n: ("provider-1", "provider-2")[i % 2] for i, n in enumerate(names)},
        loopix=loopix, node=node, network=network)
    launcher = network_launcher(state, topology, verbosity=0)
    launcher.start()
    rng = random.Random(seed)
    submitted: dict[bytes, float] = {}
    latencies: list[float] = []
    runtimes = [ClientRuntime(state, n) for n in names]
    try:
        for r in runtimes:
            r.__enter__()
        start = time.time()
        next_submit = [start + rng.expovariate(rate) for _ in names]
        while time.time() < start + duration:
            now = time.time()
            for i, runtime in enumerate(runtimes):
                if now >= next_submit[i]:
                    other = rng.choice([n for n in names if n != names[i]])
                    message_id = runtime.core.submit(now, other, body(rng))
                    if start + measure_from <= now < start + measure_until:
                        submitted[message_id] = now
                    next_submit[i] += rng.expovariate(rate)
                for message in runtime.step(now + 0.002):
                    sent = submitted.pop(message.message_id, None)
                    if sent is not None:
                        latencies.append(message.received_at - sent)
                    runtime.core.mark_delivered(message.message_id)
    finally:
        for r in runtimes:
            r.__exit__(None, None, None)
        launcher.stop()
    return topology, state, latencies
