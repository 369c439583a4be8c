"""What the adversary learns from a simulated network, against what theory says it can learn:
without cover traffic the sender entropy collapses to what the few packets in each pool allow,
with cover it is several times higher, it grows with the traffic a pool holds, and corrupted
mixnodes take it away."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from zmix.sim.engine import SimParams
from zmix.sim.report import measure
from zmix.topology import Topology
from zmix.topology_yaml import load_topology

pytestmark = pytest.mark.slow  # about 20 s: in the slow run

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 20


@pytest.fixture(scope="module")
def light() -> Topology:
    """topologies/local.yaml (3 layers of 2 mixnodes, 2 providers, mean delay 0.02 s) with
    lighter cover than the demo's, so that a run takes seconds."""
    topology = load_topology(ROOT / "topologies" / "local.yaml")
    return dataclasses.replace(topology, loopix=dataclasses.replace(
        topology.loopix, payload_rate=3.0, loop_rate=1.0, drop_rate=1.0, mix_loop_rate=1.0))


def privacy(topology: Topology, *, corrupted: float = 0.0, **kw: Any) -> dict[str, Any]:
    params = SimParams(**{"clients": CLIENTS, "duration": 40.0, "warmup": 4.0,
                          "message_rate": 0.2, **kw})
    _, report = measure(topology, params, corrupted=corrupted)
    assert report.privacy is not None
    return report.privacy


def no_cover_bound(topology: Topology, message_rate: float) -> float:
    """An upper bound on the mean sender entropy without cover (bits): a packet is confused
    only with packets that share a pool with it, about 2 lambda_i d of them at pool i (those
    present when it arrives and those arriving while it waits: M/M/infinity), so
    E[H] <= sum_i log2(1 + 2 lambda_i d) over its first provider and the three layers
    (Jensen). Each message is one payload and one ack through every layer."""
    d = topology.loopix.mean_delay
    per_mixnode = CLIENTS * message_rate * 2 / len(topology.layers[0])
    per_provider = CLIENTS * message_rate / len(topology.providers)
    return (math.log2(1 + 2 * per_provider * d)
            + len(topology.layers) * math.log2(1 + 2 * per_mixnode * d))


def test_without_cover_the_sender_entropy_collapses_to_what_the_pools_allow(
        light: Topology) -> None:
    bare = privacy(light, cover=False)
    covered = privacy(light)
    bound = no_cover_bound(light, 0.2)
    assert bare["sender"]["count"] > 100
    assert bare["sender"]["mean"] <= bound < 1.0
    assert bare["sender"]["median"] == 0.0  # most messages leave a pool that held only them
    # with cover (5 packets a second per client) each pool holds about one packet more: the
    # entropy is several times what no cover could give, yet below log2(20) = 4.32
    assert 3 * bound < covered["sender"]["mean"] < covered["max_bits"]
    assert covered["sender"]["p5"] > bound


def test_the_sender_entropy_grows_with_the_traffic_the_pools_hold(light: Topology) -> None:
    low = privacy(light, cover=False, message_rate=0.2)["sender"]["mean"]
    high = privacy(light, cover=False, message_rate=1.0)["sender"]["mean"]
    assert low < high <= no_cover_bound(light, 1.0)
    assert high > 2 * low


def test_corrupted_mixnodes_take_the_anonymity_they_would_have_given(light: Topology) -> None:
    honest = privacy(light)["sender"]["mean"]
    half = privacy(light, corrupted=0.5)
    every = privacy(light, corrupted=1.0)
    assert len(half["corrupted"]) == 3 and len(every["corrupted"]) == 6
    # with every mixnode corrupted only the first provider's pool mixes
    assert every["sender"]["mean"] < half["sender"]["mean"] <= honest
    assert every["sender"]["mean"] < 0.8 * honest
