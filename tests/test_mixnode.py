"""The node core on a fake clock: routing policy, replay and delay bounds, mix loops."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from zmix.bench.common import make_network
from zmix.keys import PublicIdentity, load_directory, load_private
from zmix.looploss import LOOP_WINDOW
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
                core.on_result(due + 5.5, result)  # half a second after they left: in time
                break
            assert isinstance(result, ForwardHop)
            hop, packet = result.next_hop, result.packet
    stats = core.statistics()
    assert stats["loops_sent"] == stats["loops_returned"] == len(loops)
    assert stats["loops_lost"] == stats["loops_in_flight"] == 0
    assert stats["loop_rtt_us_median"] > 0
    routes = core.loop_routes(due + 6.0)
    assert sum(back for back, _ in routes.values()) == len(loops)
    for route, (_, lost) in routes.items():
        assert route[0] == route[-1] == "mix-b2" and lost == 0
        assert [topology.node(n).layer for n in route[1:-1] if n.startswith("mix")] == [2, 0]


def walk_loop(net: tuple[Topology, Path], loop: Scheduled, drop_at: str | None = None
              ) -> tuple[list[str], FinalDelivery | None]:
    """Carry a mix loop from hop to hop; return the names it visited and its final delivery
    (None if the node ``drop_at`` swallowed it)."""
    topology, _ = net
    hop, packet, names = loop.next_hop, loop.packet, []
    while True:
        node = topology.by_id(hop)
        assert node is not None
        names.append(node.name)
        if node.name == drop_at:
            return names, None
        result = process_at(net, node.name, packet)
        if isinstance(result, FinalDelivery):
            return names, result
        assert isinstance(result, ForwardHop)
        hop, packet = result.next_hop, result.packet


def test_a_mix_loop_not_back_by_its_deadline_is_counted_lost_on_the_route_it_took(
        net: tuple[Topology, Path]) -> None:
    core = core_for(net, "mix-a1", seed=3)
    due = core.next_loop_due()
    assert due is not None
    loops = core.poll_loops(due + 10.0)
    assert len(loops) >= 10
    sent_at = due + 10.0
    visited = []
    for loop in loops:
        names, final = walk_loop(net, loop, drop_at="mix-b1")
        visited.append(tuple(names))
        if final is not None:
            core.on_result(sent_at + 0.5, final)
    through_b1 = sum(1 for names in visited if "mix-b1" in names)
    assert 0 < through_b1 < len(loops)  # the control: some loops avoid mix-b1 and come back
    stats = core.statistics()
    assert stats["loops_in_flight"] == through_b1 and stats["loops_lost"] == 0
    # max_delay is 1 s a hop: 4 hops + the 2 s slack are over by 6 s after the send
    routes = core.loop_routes(sent_at + 6.1)
    stats = core.statistics()
    assert stats["loops_lost"] == through_b1 and stats["loops_in_flight"] == 0
    assert stats["loops_returned"] == len(loops) - through_b1
    for route, (back, lost) in routes.items():
        # those through mix-b1 were walked only up to it
        assert route[0] == "mix-a1" and (route[1:] in visited or route[1] == "mix-b1")
        assert (lost > 0) == ("mix-b1" in route) and (back > 0) == ("mix-b1" not in route)
    # the window: 120 s later those loops no longer count
    assert core.loop_routes(sent_at + 6.1 + LOOP_WINDOW + 1) == {}


def test_a_loop_back_after_its_deadline_counts_as_lost_and_late_not_as_a_strangers(
        net: tuple[Topology, Path]) -> None:
    core = core_for(net, "mix-c2", seed=5)
    due = core.next_loop_due()
    assert due is not None
    loops = core.poll_loops(due)
    assert len(loops) == 1
    _, final = walk_loop(net, loops[0])
    assert final is not None
    core.on_result(due + 30.0, final)  # long after its deadline
    stats = core.statistics()
    assert (stats["loops_lost"], stats["loops_late"], stats["loops_returned"]) == (1, 1, 0)
    assert stats["dropped_unexpected_delivery"] == 0
    assert [lost for _, lost in core.loop_routes(due + 30.0).values()] == [1]


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
