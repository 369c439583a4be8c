"""The node core on a fake clock: routing policy, replay and delay bounds, mix loops."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from zmix.bench.common import make_network
from zmix.keys import PublicIdentity, load_directory, load_private
from zmix.mixnode import NodeCore, Scheduled
from zmix.network import Network, NetworkView
from zmix.sphinx import FinalDelivery, ForwardHop, Hop, create_forward_packet, process_packet
from zmix.topology import Topology


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> tuple[Topology, Path]:
    return make_network(tmp_path_factory.mktemp("net"), loopix={"mix_loop_rate": 2.0,
                                                                 "max_delay": 1.0})


def core_for(net: tuple[Topology, Path], name: str, seed: int = 1) -> NodeCore:
    topology, state = net
    keys = load_directory(state, topology)
    # Epoch 0 (the clock is at 100 s of one-hour epochs): every node's Sphinx key is its
    # long-term key file's, which process_at opens with.
    epoch_keys = {n.name: {0: keys[n.name].public_key} for n in topology.nodes()}
    view = NetworkView(Network(1, topology, keys, epoch_keys))
    return NodeCore(view, name, random.Random(seed), now=100.0)


def directory(net: tuple[Topology, Path]) -> dict[str, PublicIdentity]:
    return load_directory(net[1], net[0])


def packet_through(net: tuple[Topology, Path], names: list[str], delays_us: list[int],
                   recipient: bytes, message: bytes = b"m") -> bytes:
    topology, _ = net
    keys = directory(net)
    route = [Hop(topology.node(n).id, keys[n].public_key, d)
             for n, d in zip(names, delays_us, strict=True)]
    return create_forward_packet(topology.sphinx, route, recipient, message)


def process_at(net: tuple[Topology, Path], name: str, packet: bytes) -> object:
    return process_packet(net[0].sphinx, load_private(net[1], name).private_key, packet)


def test_a_forward_hop_is_scheduled_at_arrival_plus_its_delay(net: tuple[Topology, Path]) -> None:
    topology, _ = net
    packet = packet_through(net, ["mix-a1", "mix-b1"], [250_000, 0], b"\x00" * 16)
    result = process_at(net, "mix-a1", packet)
    assert isinstance(result, ForwardHop)
    [item] = core_for(net, "mix-a1").on_result(10.0, result)
    assert item == Scheduled(10.25, topology.node("mix-b1").id, result.packet)


def test_a_replayed_packet_is_dropped(net: tuple[Topology, Path]) -> None:
    core = core_for(net, "mix-a1")
    result = process_at(net, "mix-a1", packet_through(net, ["mix-a1", "mix-b1"], [0, 0],
                                                        b"\x00" * 16))
    assert isinstance(result, ForwardHop)
    assert len(core.on_result(1.0, result)) == 1
    assert core.on_result(2.0, result) == []
    assert core.statistics()["dropped_replay"] == 1


def test_a_replay_is_checked_under_the_key_epoch_that_opened_the_packet(
        net: tuple[Topology, Path]) -> None:
    core = core_for(net, "mix-a1")
    result = process_at(net, "mix-a1", packet_through(net, ["mix-a1", "mix-b1"], [0, 0],
                                                        b"\x00" * 16))
    assert isinstance(result, ForwardHop)
    assert len(core.on_result(1.0, result, 1)) == 1
    assert len(core.on_result(1.0, result, 2)) == 1  # the same tag under another epoch's key
    assert core.on_forward(1.0, result.next_hop, 0, result.replay_tag, 2) is None  # seen in 2
    assert core.on_result(2.0, result, 1) == []
    assert core.statistics()["dropped_replay"] == 2


def test_a_delay_above_the_maximum_is_dropped(net: tuple[Topology, Path]) -> None:
    core = core_for(net, "mix-a1")
    result = process_at(net, "mix-a1", packet_through(net, ["mix-a1", "mix-b1"], [1_000_001, 0],
                                                        b"\x00" * 16))
    assert isinstance(result, ForwardHop)
    assert core.on_result(1.0, result) == []
    assert core.statistics()["dropped_delay_too_long"] == 1


def test_a_next_hop_outside_the_topology_is_dropped(net: tuple[Topology, Path]) -> None:
    core = core_for(net, "mix-a1")
    result = process_at(net, "mix-a1", packet_through(net, ["mix-a1", "mix-b1"], [0, 0],
                                                        b"\x00" * 16))
    assert isinstance(result, ForwardHop)
    stray = ForwardHop(b"\x42" * 16, result.delay_us, result.packet, result.replay_tag)
    assert core.on_result(1.0, stray) == []
    assert core.statistics()["dropped_unknown_next_hop"] == 1


def test_a_mixnode_does_not_accept_final_deliveries_for_others(net: tuple[Topology, Path]) -> None:
    core = core_for(net, "mix-c1")
    result = process_at(net, "mix-c1", packet_through(net, ["mix-c1"], [0], b"\x07" * 16))
    assert isinstance(result, FinalDelivery)
    assert core.on_result(1.0, result) == []
    assert core.statistics()["dropped_unexpected_delivery"] == 1


@pytest.mark.parametrize("name", ["mix-a2", "mix-b1", "mix-c2"])
def test_a_mix_loop_route_visits_every_layer_and_a_provider_and_ends_at_the_node(
        net: tuple[Topology, Path], name: str) -> None:
    topology, _ = net
    me = topology.node(name)
    route = core_for(net, name).loop_route()
    assert route[-1] == me
    layers = [n.layer for n in route]
    assert sorted(x for x in layers if x is not None) == list(range(len(topology.layers)))
    assert sum(1 for n in route if n in topology.providers) == 1


def test_mix_loops_go_around_the_network_and_are_counted_when_they_return(
        net: tuple[Topology, Path]) -> None:
    topology, _ = net
    core = core_for(net, "mix-b2", seed=7)
    due = core.next_loop_due()
    assert due is not None and due > 100.0
    loops = core.poll_loops(due + 5.0)  # about ten loops at 2 per second
    assert 3 <= len(loops) <= 25
    for loop in loops:
        hop, packet = loop.next_hop, loop.packet
        while True:
            node = topology.by_id(hop)
            assert node is not None
            result = process_at(net, node.name, packet)
            if isinstance(result, FinalDelivery):
                assert node.name == "mix-b2"
                core.on_result(200.0, result)
                break
            assert isinstance(result, ForwardHop)
            hop, packet = result.next_hop, result.packet
    stats = core.statistics()
    assert stats["loops_sent"] == stats["loops_returned"] == len(loops)
    assert stats["loop_rtt_us_median"] > 0


def test_a_forged_loop_marker_is_not_counted_as_a_returned_loop(
        net: tuple[Topology, Path]) -> None:
    topology, _ = net
    core = core_for(net, "mix-c1")
    forged = packet_through(net, ["mix-c1"], [0], topology.node("mix-c1").id,
                            b"zmix-mix-loop-v1" + b"\x00" * 16)
    result = process_at(net, "mix-c1", forged)
    assert isinstance(result, FinalDelivery)
    assert core.on_result(1.0, result) == []
    assert core.statistics()["loops_returned"] == 0
