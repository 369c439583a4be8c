"""Node taps (topology node.taps): a real network's nodes write what crossed their links, the
merger turns it into the adversary's records, and the analysis of a real network and of the
simulator of the same network and workload agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workload import run_workload

from zmix.nodetap import NodeTap, packet_hash
from zmix.sim.adversary import analyse
from zmix.sim.engine import SimParams, client_names, sim_topology
from zmix.sim.report import analyse_taps, measure
from zmix.sim.taps import Origin, Transmission, merge_node_taps
from zmix.sphinx import FinalDelivery, SphinxParams
from zmix.topology import Topology

CLIENTS = 6
LOOPIX = {"mean_delay": 0.05, "payload_rate": 2.0, "loop_rate": 0.5, "drop_rate": 0.5,
          "mix_loop_rate": 0.5, "fetch_interval": 0.5, "max_delay": 5.0}


def test_a_tap_follows_a_packet_through_its_node_in_the_order_workers_answer() -> None:
    lines: list[dict[str, object]] = []
    names = {b"C" * 16: "alice", b"N" * 16: "mix-a1"}
    tap = NodeTap(lambda text: lines.append(json.loads(text)), names.get, lambda now: now + 100,
                  SphinxParams())
    first, second = b"1" * 50, b"2" * 50
    h1 = tap.arrived_from_client(1.0, b"C" * 16, first)
    tap.handed_to_worker(0, [first, second])
    assert tap.result(0) == h1  # the oldest job first
    tap.forwarded(b"out-1", h1)
    parent2 = tap.result(0)
    tap.ended(2.0, parent2)
    assert tap.result(0) is None and tap.unmatched == 1  # nothing more on record
    tap.sent(3.0, [(b"N" * 16, b"out-1"), (b"?" * 16, b"stranger")])
    tap.delivered(FinalDelivery(b"C" * 16, 0, b"not an envelope", b"t" * 16), h1)  # unreadable
    tap.fetched(4.0, b"C" * 16, [b"never stored"])
    assert lines == [
        {"t": 101.0, "ev": "in", "peer": "alice", "h": h1},
        {"t": 102.0, "ev": "end", "h": packet_hash(second)},
        {"t": 103.0, "ev": "out", "peer": "mix-a1", "h": packet_hash(b"out-1"), "parent": h1},
    ]


def _run_real(tmp: Path, duration: float) -> tuple[Topology, Path]:
    topology, state, _ = run_workload(
        tmp, clients=CLIENTS, loopix=LOOPIX, node={"taps": True}, network="zmix-taps",
        rate=0.3, duration=duration, seed=3, body=lambda rng: b"measured")
    return topology, state


@pytest.mark.slow
def test_a_real_networks_taps_merge_whole_and_read_like_the_simulators(tmp_path: Path) -> None:
    topology, state = _run_real(tmp_path, 30.0)
    taps = state / "taps"
    files = sorted(p.name for p in taps.iterdir())
    assert files == sorted(f"{n.name}.jsonl" for n in topology.nodes())
    paths = {n.name: taps / f"{n.name}.jsonl" for n in topology.nodes()}
    merged = merge_node_taps(paths, topology.names())
    tx = [r for r in merged.records if isinstance(r, Transmission)]
    from_clients = [r for r in tx if r.src in set(client_names(CLIENTS))]
    fetched = [r for r in tx if r.dst in set(client_names(CLIENTS))]
    # about 3.3 packets a second from each client for 30 s
    assert len(from_clients) > CLIENTS * 3 * 25
    assert fetched and all(r.parent >= 0 for r in fetched)  # each item traced to its packet
    # every packet is followed from client to the end of its route: what is not resolved is
    # only what was still inside the network when it stopped
    assert merged.unknown_members == 0
    assert merged.unresolved < 0.02 * merged.lines
    real = analyse_taps(topology, taps)
    assert real.privacy["sender"]["count"] > 300

    # the simulator, same topology and workload, analysed from its records as the taps are
    # (no Origin records: every packet a client made is a target)
    params = SimParams(clients=CLIENTS, duration=30.0, warmup=0.0, message_rate=0.3)
    records: list[object] = []
    measure(topology, params, observers=[records.append])
    topo = sim_topology(topology, params)
    simulated = analyse((r for r in records if not isinstance(r, Origin)),  # type: ignore[misc]
                        [c.name for c in topo.clients], [n.name for n in topo.nodes()],
                        providers=[p.name for p in topo.providers])
    assert simulated.sender is not None
    print(f"\nsender entropy of client packets leaving the mixnet: real mean "
          f"{real.privacy['sender']['mean']:.3f} bits ({real.privacy['sender']['count']}), "
          f"simulated {simulated.sender.mean:.3f} ({simulated.sender.count}); "
          f"max {simulated.max_bits:.3f}")
    assert abs(real.privacy["sender"]["mean"] - simulated.sender.mean) < 0.25
