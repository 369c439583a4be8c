"""zmix.routes: stratified Loopix routes and per-hop delays, the one copy clients and nodes use."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import routes
from zmix.epochs import EpochParams
from zmix.network import NoKeyForEpoch
from zmix.sphinx import MAX_DELAY_US
from zmix.topology import LoopixParams, NodeSpec, Role

Net = tuple[tuple[tuple[NodeSpec, ...], ...], tuple[NodeSpec, ...]]


def node(name: str, layer: int | None) -> NodeSpec:
    role = Role.PROVIDER if layer is None else Role.MIXNODE
    return NodeSpec(name, name.encode().ljust(16, b"."), role, layer, "127.0.0.1", 1, 1, None)


def network(widths: list[int], providers: int) -> Net:
    """Layers of the given widths (mixnode ``m<layer>-<i>``) and providers ``p<i>``."""
    layers = tuple(tuple(node(f"m{i}-{j}", i) for j in range(w)) for i, w in enumerate(widths))
    return layers, tuple(node(f"p{i}", None) for i in range(providers))


class EpochKeys:
    """Every node's Sphinx key per epoch (``<epoch>:<name>`` padded), for epochs ``epochs``, on
    the schedule ``schedule``: what :func:`routes.hops` needs of a Network."""

    def __init__(self, net: Net, epochs: range, schedule: EpochParams) -> None:
        layers, providers = net
        self.epochs = schedule
        self.held = {(n.name, e): f"{e}:{n.name}".encode().rjust(32, b"k")
                     for n in [n for layer in layers for n in layer] + list(providers)
                     for e in epochs}

    def node_key(self, name: str, epoch: int) -> bytes:
        key = self.held.get((name, epoch))
        if key is None:
            raise NoKeyForEpoch(name, epoch)
        return key


def directory(net: Net) -> EpochKeys:
    return EpochKeys(net, range(0, 3), EpochParams())


def is_stratified(middle: list[NodeSpec], layers: tuple[tuple[NodeSpec, ...], ...]) -> bool:
    """True if ``middle`` is exactly one node of each layer, in layer order."""
    return len(middle) == len(layers) and all(n in layer for n, layer in zip(middle, layers,
                                                                             strict=True))


shapes = st.tuples(st.lists(st.integers(1, 4), min_size=1, max_size=5), st.integers(1, 3),
                   st.integers(0, 2**32))


@settings(max_examples=200, deadline=None)
@given(shapes)
def test_every_client_route_is_stratified_with_its_providers_at_the_ends(
        shape: tuple[list[int], int, int]) -> None:
    widths, count, seed = shape
    layers, providers = network(widths, count)
    rng = random.Random(seed)
    own, other = providers[0], providers[-1]
    forward = routes.forward_route(layers, own, other, rng)
    assert forward[0] == own and forward[-1] == other and is_stratified(forward[1:-1], layers)
    loop = routes.forward_route(layers, own, own, rng)
    assert loop[0] == loop[-1] == own and is_stratified(loop[1:-1], layers)
    drop = routes.drop_route(layers, own, providers, rng)
    assert drop[0] == own and drop[-1] in providers and is_stratified(drop[1:-1], layers)
    surb = routes.surb_route(layers, own, rng)
    assert surb[-1] == own and is_stratified(surb[:-1], layers)


@settings(max_examples=200, deadline=None)
@given(shapes, st.integers(0, 5))
def test_a_mix_loop_visits_every_layer_once_in_flow_order_and_ends_at_the_node(
        shape: tuple[list[int], int, int], pick: int) -> None:
    widths, count, seed = shape
    layers, providers = network(widths, count)
    mixnodes = [n for layer in layers for n in layer]
    me = (mixnodes + list(providers))[pick % (len(mixnodes) + len(providers))]
    route = routes.mix_loop_route(layers, providers, me, random.Random(seed))
    assert route[-1] == me
    # Read from the node onwards, a loop is a forward route: [provider, L0 .. L(n-1), provider].
    start = next(i for i, n in enumerate([me, *route]) if n.layer is None)
    cycle = ([me, *route[:-1]] * 2)[start:start + len(route)]
    assert cycle[0] in providers and is_stratified(cycle[1:], layers)
    if me.layer is None:
        assert cycle[0] == me  # a provider's loop goes through no other provider


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1e300), st.floats(0.0, 1e6), st.integers(0, 2**32))
def test_every_delay_is_whole_microseconds_within_max_delay_and_the_wires_field(
        mean: float, max_delay: float, seed: int) -> None:
    delays = routes.Delays.from_loopix(LoopixParams(mean_delay=mean, max_delay=max_delay))
    assert delays.max_us == min(int(max_delay * 1_000_000), MAX_DELAY_US) <= MAX_DELAY_US
    rng = random.Random(seed)
    for _ in range(20):
        delay = delays.draw_us(rng)
        assert isinstance(delay, int) and 0 <= delay <= delays.max_us


def test_a_huge_mean_from_an_unchecked_topology_is_clamped_to_the_wire_not_an_error() -> None:
    delays = routes.Delays.from_loopix(LoopixParams(mean_delay=1e308, max_delay=1e9))
    assert delays.max_us == MAX_DELAY_US
    draws = [delays.draw_us(random.Random(1)) for _ in range(10)]
    assert draws == [MAX_DELAY_US] * 10  # the cap is reached and held, never exceeded


def test_a_mean_delay_of_zero_gives_zero_delays_and_leaves_the_rng_alone() -> None:
    rng = random.Random(4)
    before = rng.getstate()
    assert routes.Delays(0.0, 1_000_000).draw_us(rng) == 0
    assert rng.getstate() == before
    assert routes.Delays(0.01, 1_000_000).draw_us(rng) > 0  # positive control: a draw moves it
    assert rng.getstate() != before


def test_the_same_seed_gives_the_same_routes_and_delays_and_another_seed_does_not() -> None:
    net = network([3, 3, 3], 2)
    keys = directory(net)
    delays = routes.Delays(0.05, 60_000_000)

    def draw(seed: int) -> list[list[tuple[bytes, int]]]:
        rng = random.Random(seed)
        layers, providers = net
        made = []
        for _ in range(50):
            for route in (routes.forward_route(layers, providers[0], providers[1], rng),
                          routes.drop_route(layers, providers[0], providers, rng),
                          routes.surb_route(layers, providers[1], rng),
                          routes.mix_loop_route(layers, providers, layers[1][2], rng)):
                made.append([(h.node_id, h.delay_us)
                             for h in routes.hops(route, keys, delays, rng, 10.0)])
        return made

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_hops_carry_each_nodes_id_and_its_key_of_the_epoch_now() -> None:
    net = network([2, 2], 1)
    keys = directory(net)
    route = routes.forward_route(net[0], net[1][0], net[1][0], random.Random(3))
    hops = routes.hops(route, keys, routes.Delays(0.01, 10**6), random.Random(3), 3700.0)
    assert [h.node_id for h in hops] == [n.id for n in route]
    assert [h.public_key for h in hops] == [keys.node_key(n.name, 1) for n in route]
    with pytest.raises(NoKeyForEpoch, match="has no Sphinx key for epoch 3"):
        routes.hops(route, keys, routes.Delays(0.01, 10**6), random.Random(3), 3 * 3600.0)


def test_each_hop_takes_the_key_of_the_epoch_it_processes_the_packet_in() -> None:
    # Epochs of 4 s; delays of about 1 s each: a packet sent 2.5 s into epoch 10 reaches its
    # later hops in epoch 11 (and maybe 12). Hop i's epoch: the send time plus the delays of
    # the hops before it.
    net = network([3, 3, 3], 2)
    schedule = EpochParams(length=4.0, grace=1.0)
    keys = EpochKeys(net, range(8, 16), schedule)
    layers, providers = net
    rng = random.Random(5)
    crossed = 0
    for _ in range(200):
        route = routes.forward_route(layers, providers[0], providers[1], rng)
        sent = 42.5  # epoch 10
        hops = routes.hops(route, keys, routes.Delays(1.0, 60_000_000), rng, sent)
        elapsed = 0.0
        for node_spec, hop in zip(route, hops, strict=True):
            epoch = schedule.epoch_at(sent + elapsed)
            assert hop.public_key == keys.node_key(node_spec.name, epoch)
            elapsed += hop.delay_us / 1e6
        crossed += hops[-1].public_key != keys.node_key(route[-1].name, 10)
    assert crossed > 100  # most packets cross the boundary: the per-hop choice was exercised
    assert hops[0].public_key == keys.node_key(route[0].name, 10)  # the first hop: now


def test_every_hop_of_a_surb_takes_the_key_of_the_next_epoch() -> None:
    net = network([2, 2], 1)
    schedule = EpochParams(length=4.0, grace=1.0)
    keys = EpochKeys(net, range(8, 16), schedule)
    route = routes.surb_route(net[0], net[1][0], random.Random(6))
    epoch, hops = routes.surb_hops(route, keys, routes.Delays(1.0, 60_000_000),
                                   random.Random(6), 43.9)  # late in epoch 10
    assert epoch == 11 and schedule.surb_expiry(43.9) == 49.0  # the end of 11 plus the grace
    assert [h.public_key for h in hops] == [keys.node_key(n.name, 11) for n in route]


def test_delays_follow_the_exponential_with_the_configured_mean() -> None:
    # A fixed seed makes this exact, not a chance: the tolerances are ~5 standard errors wide,
    # so a sound implementation passes for any seed, and this one cannot flake.
    mean, n = 0.05, 200_000
    delays = routes.Delays(mean, MAX_DELAY_US)
    rng = random.Random(20261129)
    draws = [delays.draw_us(rng) / 1e6 for _ in range(n)]
    standard_error = mean / math.sqrt(n)  # an exponential's deviation is its mean
    assert abs(statistics.fmean(draws) - mean) < 5 * standard_error
    above = sum(d > mean for d in draws) / n  # P(X > mean) = e^-1 for an exponential
    assert abs(above - math.exp(-1)) < 5 * math.sqrt(math.exp(-1) * (1 - math.exp(-1)) / n)
    median = statistics.median(draws)  # ln 2 x mean
    assert abs(median - math.log(2) * mean) < 0.01 * mean


def test_draws_above_max_delay_are_clamped_to_it_not_drawn_again() -> None:
    mean, n = 0.05, 100_000
    delays = routes.Delays(mean, 50_000)  # max_delay = the mean
    rng = random.Random(7)
    draws = [delays.draw_us(rng) for _ in range(n)]
    at_cap = sum(d == 50_000 for d in draws) / n
    assert abs(at_cap - math.exp(-1)) < 0.01  # the whole tail P(X >= mean) sits at the cap
    assert max(draws) == 50_000


def test_each_layers_mixnode_is_chosen_uniformly() -> None:
    layers, _ = network([4, 4, 4], 1)
    rng = random.Random(99)
    n = 40_000
    counts: dict[str, int] = {}
    for _ in range(n):
        for chosen in routes.stratified(layers, rng):
            counts[chosen.name] = counts.get(chosen.name, 0) + 1
    assert len(counts) == 12
    expected = n / 4
    assert all(abs(c - expected) < 5 * math.sqrt(expected * 0.75) for c in counts.values())
