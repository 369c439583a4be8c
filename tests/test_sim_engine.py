"""The simulator's engine and report (zmix.sim.engine, zmix.sim.report): zmix's own cores on a
virtual clock, checked against what the protocol and the topology's rates say."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from zmix.errors import LocalMisuse
from zmix.sim.engine import START, SimParams, Simulation, client_names, sim_topology
from zmix.sim.report import Spread, simulate
from zmix.sim.taps import Ending, Origin, Transmission
from zmix.topology import Topology
from zmix.topology_yaml import load_topology

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "topologies" / "local.yaml"


@pytest.fixture(scope="module")
def local() -> Topology:
    return load_topology(LOCAL)


def run(topology: Topology, **kw: object) -> tuple[Simulation, list[object]]:
    records: list[object] = []
    params = SimParams(**{"clients": 12, "duration": 12.0, "warmup": 2.0, **kw})  # type: ignore[arg-type]
    sim = Simulation(topology, params, observe=records.append)
    sim.run()
    return sim, records


def digest(records: list[object]) -> str:
    return hashlib.sha256(repr(records).encode()).hexdigest()


def test_generated_clients_replace_the_topologys_own_and_are_spread_over_the_providers(
        local: Topology) -> None:
    topo = sim_topology(local, SimParams(clients=5))
    assert [c.name for c in topo.clients] == client_names(5) == [f"c000{i}" for i in range(5)]
    assert Counter(c.provider for c in topo.clients) == {"provider-1": 3, "provider-2": 2}
    assert topo.loopix == local.loopix
    quiet = sim_topology(local, SimParams(clients=5, cover=False)).loopix
    assert (quiet.loop_rate, quiet.drop_rate, quiet.mix_loop_rate) == (0, 0, 0)
    assert quiet.payload_rate == local.loopix.payload_rate


def test_a_seed_gives_the_same_run_record_for_record_and_another_seed_another(
        local: Topology) -> None:
    first, a = run(local, seed=3)
    second, b = run(local, seed=3)
    _, c = run(local, seed=4)
    assert len(a) > 1000
    assert digest(a) == digest(b)
    assert first.tally.completed == second.tally.completed
    assert digest(a) != digest(c)  # control: the seed matters


def test_records_come_in_time_order_and_every_packet_is_accounted_for(local: Topology) -> None:
    sim, records = run(local, message_rate=0.5)
    times = [r.t for r in records if not isinstance(r, Origin)]
    assert times == sorted(times)
    seen: set[int] = set()
    continued: dict[int, int] = defaultdict(int)
    ended: set[int] = set()
    origins = {r.xid for r in records if isinstance(r, Origin)}
    into_node = set()
    for r in records:
        if isinstance(r, Transmission):
            assert r.xid not in seen
            if r.parent >= 0:
                assert r.parent in seen  # a packet continues only after it came in
                continued[r.parent] += 1
            else:
                assert r.xid in origins  # made here: ground truth says by whom
            seen.add(r.xid)
            if r.dst not in {c.name for c in sim.clients}:
                into_node.add(r.xid)
        elif isinstance(r, Ending):
            assert r.xid in seen and r.xid not in ended
            ended.add(r.xid)
    assert all(n == 1 for n in continued.values())  # one packet in, one out
    open_ = into_node - ended - set(continued)
    held = sum(node.held for node in sim.nodes)
    stored = sum(len(node.stored) for node in sim.nodes)
    # what neither continued nor ended is still held in a delay queue or a mailbox at the end
    # (a provider's own acks and loops are held but came from no transmission)
    assert len(open_) <= held + stored
    assert len(open_) >= stored


@pytest.mark.slow  # 5 s: the default run is near its budget
def test_payload_packets_spend_the_sum_of_four_exponential_delays_in_the_network(
        local: Topology) -> None:
    # provider, three mixnodes: the last provider stores a message on arrival (its delay only
    # holds the ack), so a packet's time is Gamma(4, mean_delay)
    sim, _ = run(local, clients=40, duration=40.0, message_rate=2.0, cover=False)
    latencies = sim.tally.network_latency
    mean_delay = local.loopix.mean_delay
    assert len(latencies) > 2000
    assert statistics.mean(latencies) == pytest.approx(4 * mean_delay, rel=0.08)
    assert statistics.variance(latencies) == pytest.approx(4 * mean_delay ** 2, rel=0.2)


def test_each_client_sends_at_the_sum_of_its_stream_rates(local: Topology) -> None:
    _sim, report = simulate(local, SimParams(clients=10, duration=20.0, warmup=2.0))
    loopix = local.loopix
    rate = loopix.payload_rate + loopix.loop_rate + loopix.drop_rate
    per_client = report.client_up_bytes_per_s.mean / report.packet_bytes
    assert per_client == pytest.approx(rate, rel=0.08)
    assert report.packets["loop"] > 0 and report.packets["drop"] > 0


def test_without_cover_only_real_packets_and_their_acks_travel(local: Topology) -> None:
    _sim, report = simulate(local, SimParams(clients=10, duration=20.0, warmup=2.0,
                                            message_rate=0.5, cover=False), settle=3.0)
    assert set(report.packets) == {"payload", "ack"}
    assert report.packets["payload"] == pytest.approx(report.packets["ack"], abs=5)
    assert report.messages_delivered == report.messages_sent > 50
    with_cover = simulate(local, SimParams(clients=10, duration=20.0, warmup=2.0,
                                           message_rate=0.5))[1]
    assert {"loop", "drop", "mix_loop"} <= set(with_cover.packets)  # control


def test_every_message_arrives_and_takes_longer_than_its_packets(local: Topology) -> None:
    _, report = simulate(local, SimParams(clients=12, duration=30.0, warmup=2.0,
                                          message_rate=0.3), settle=5.0)
    assert report.messages_sent > 50
    assert report.loss == 0.0
    assert report.message_latency.median > report.network_latency.median
    assert report.dropped == {}
    assert report.loops["lost"] == 0 and report.loops["returned"] > 0


def test_link_latency_adds_one_latency_per_link_crossed(local: Topology) -> None:
    quick, _ = run(local, clients=20, duration=20.0, message_rate=1.0, seed=5, cover=False)
    slow, _ = run(local, clients=20, duration=20.0, message_rate=1.0, seed=5, cover=False,
                  link_latency=0.01)
    difference = statistics.mean(slow.tally.network_latency) - statistics.mean(
        quick.tally.network_latency)
    # five links: client to provider, provider to the three layers, the last to the provider
    assert difference == pytest.approx(0.05, abs=0.004)


def test_the_report_round_trips_through_json_and_reads_as_text(local: Topology) -> None:
    _, report = simulate(local, SimParams(clients=6, duration=8.0, warmup=1.0))
    data = json.loads(report.to_json())
    assert data["clients"] == 6 and data["simulated_s"] == 8.0
    assert data["sim_seconds_per_s"] == pytest.approx(report.sim_seconds_per_s)
    assert len(data["node_load"]) == 8
    text = report.text()
    assert "simulated 8 s of 6 clients and 8 nodes" in text
    assert "message latency" in text and "node load" in text


def test_spread_takes_nearest_rank_percentiles() -> None:
    spread = Spread.of([float(i) for i in range(1, 101)])
    assert (spread.count, spread.median, spread.p5, spread.p95, spread.max) == (
        100, 50.0, 5.0, 95.0, 100.0)
    assert Spread.of([]).count == 0


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("clients", 1, "at least 2 clients"),
    ("duration", 1.0, "longer than the warmup"),
    ("message_rate", -1.0, "message_rate"),
    ("link_latency", float("inf"), "link_latency"),
    ("message_bytes", 0, "message_bytes"),
])
def test_bad_simulation_parameters_are_refused_by_name(field: str, value: object,
                                                       needle: str) -> None:
    good = SimParams()
    with pytest.raises(LocalMisuse, match=needle):
        dataclasses.replace(good, **{field: value})


def test_the_virtual_clock_starts_at_a_fixed_unix_time(local: Topology) -> None:
    sim, _ = run(local)
    assert sim.now == START + 12.0
