"""The loop-loss fit (zmix/looploss.py): closed forms, a dead node, recovery of random losses,
what cannot be told apart, properties over any counts, and route labels."""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix.looploss import (
    LOOP_WINDOW,
    LoopLoss,
    RouteError,
    Segment,
    fit,
    merge,
    parse_route,
    route_label,
)

Route = tuple[str, ...]
Counts = dict[Route, tuple[int, int]]
LAYERS = [["a1", "a2"], ["b1", "b2"], ["c1", "c2"]]
PROVIDERS = ["p1", "p2"]


def mix_loop_routes() -> list[Route]:
    """Every mix-loop route of a 3-layer x 2 network with 2 providers (zmix/routes.py): a
    provider's through every layer, a mixnode's through the layers after its own, a provider,
    the layers before its own."""
    found = [(p, *hops, p) for p in PROVIDERS for hops in itertools.product(*LAYERS)]
    for i, layer in enumerate(LAYERS):
        for me in layer:
            for after, p, before in itertools.product(itertools.product(*LAYERS[i + 1:]),
                                                       PROVIDERS,
                                                       itertools.product(*LAYERS[:i])):
                found.append((me, *after, p, *before, me))
    return found


def client_loop_routes() -> list[Route]:
    """Every loop route of client alice (at p1) and bob (at p2): provider, layers, provider."""
    return [(c, p, *hops, p, c) for c, p in (("alice", "p1"), ("bob", "p2"))
            for hops in itertools.product(*LAYERS)]


def node_segments(route: Route) -> list[str]:
    return list(route[1:-1])


def link_segments(route: Route) -> list[tuple[str, str]]:
    return list(itertools.pairwise(route))


def draw(routes: list[Route], node_loss: dict[str, float], link_loss: dict[tuple[str, str], float],
         per_route: int, rng: random.Random) -> Counts:
    """Return counts drawn from the model itself: each pass of each segment independently."""
    counts = {}
    for route in routes:
        survival = math.prod(1 - node_loss.get(n, 0.0) for n in node_segments(route))
        survival *= math.prod(1 - link_loss.get(k, 0.0) for k in link_segments(route))
        returned = sum(rng.random() < survival for _ in range(per_route))
        counts[route] = (returned, per_route - returned)
    return counts


# ---------------------------------------------------------------------- closed forms


def test_one_route_gives_its_only_node_the_lost_fraction() -> None:
    got = fit({("a", "m", "a"): (7, 3)})
    assert got.nodes == {"m": Segment(pytest.approx(0.3), 10, 3)}  # type: ignore[arg-type]
    assert (got.loops, got.lost) == (10, 3)


def test_a_route_of_one_node_shares_its_loss_between_its_two_inseparable_links() -> None:
    links = fit({("a", "m", "a"): (49, 51)}).links
    assert set(links) == {("a", "m"), ("m", "a")}
    # 0.7 x 0.7 = 0.49: each link passes 0.7 of the loops
    assert links[("a", "m")].loss == links[("m", "a")].loss == pytest.approx(0.3, abs=1e-4)


def test_a_dead_node_is_fitted_at_loss_1_and_every_other_node_and_link_near_0() -> None:
    rng = random.Random(16)
    routes = [r for r in mix_loop_routes() if r[0] != "b1"]  # a stopped node sends no loops
    background = {n: rng.uniform(0.0, 0.01) for layer in LAYERS for n in layer} | {
        p: rng.uniform(0.0, 0.01) for p in PROVIDERS}
    counts = draw(routes, background | {"b1": 1.0}, {}, 200, rng)
    got = fit(counts)
    assert got.nodes["b1"].loss == 1.0 and got.nodes["b1"].lost == got.nodes["b1"].loops
    others = {n: s.loss for n, s in got.nodes.items() if n != "b1"}
    assert len(others) == 7 and max(others.values()) < 0.03, others
    around = {k: s.loss for k, s in got.links.items() if k in (("a1", "b1"), ("a2", "b1"),
                                                                ("b1", "c1"), ("b1", "c2"))}
    # The positive control: the links into and out of the dead node all show it.
    assert around == {("a1", "b1"): 1.0, ("a2", "b1"): 1.0, ("b1", "c1"): 1.0, ("b1", "c2"): 1.0}
    rest = {k: s.loss for k, s in got.links.items() if "b1" not in k}
    assert len(rest) == 12 and max(rest.values()) < 0.03, rest


def test_random_node_losses_are_recovered_from_many_loops() -> None:
    rng = random.Random(7)
    truth = {n: rng.uniform(0.0, 0.3) for layer in LAYERS for n in layer} | {
        p: rng.uniform(0.0, 0.3) for p in PROVIDERS}
    got = fit(draw(mix_loop_routes(), truth, {}, 2000, rng))
    errors = {n: abs(got.nodes[n].loss - truth[n]) for n in truth}
    assert max(errors.values()) < 0.02, errors


def test_a_lossy_link_is_recovered_by_the_link_fit_and_no_other_link_is_blamed() -> None:
    rng = random.Random(3)
    got = fit(draw(mix_loop_routes(), {}, {("a1", "b1"): 0.3}, 500, rng))
    assert got.links[("a1", "b1")].loss == pytest.approx(0.3, abs=0.03)
    others = [s.loss for k, s in got.links.items() if k != ("a1", "b1")]
    assert max(others) < 0.01


def test_no_loops_give_no_segments() -> None:
    assert fit({}) == LoopLoss({}, {}, 0, 0)
    assert fit({("a", "m", "a"): (0, 0)}) == LoopLoss({}, {}, 0, 0)


def test_all_loops_lost_give_every_segment_loss_1() -> None:
    counts = dict.fromkeys(mix_loop_routes(), (0, 5))
    got = fit(counts)
    assert {s.loss for s in got.nodes.values()} == {1.0} and len(got.nodes) == 8
    assert {s.loss for s in got.links.values()} == {1.0}
    assert (got.loops, got.lost) == (5 * len(counts), 5 * len(counts))


def test_all_loops_returned_give_every_segment_loss_0() -> None:
    got = fit(dict.fromkeys(client_loop_routes(), (5, 0)))
    assert {s.loss for s in got.nodes.values()} == {0.0} and len(got.nodes) == 8


# ---------------------------------------------------------------------- what cannot be told apart


def test_two_nodes_always_seen_together_share_their_loss_evenly() -> None:
    counts = {("s", "x", "y", "s"): (64, 36), ("s", "x", "y", "z", "s"): (64, 36),
              ("s", "z", "s"): (100, 0)}
    nodes = fit(counts).nodes
    assert nodes["x"].loss == nodes["y"].loss == pytest.approx(0.2, abs=1e-4)  # 0.8 x 0.8 = 0.64
    assert nodes["z"].loss == pytest.approx(0.0, abs=1e-3)


def test_two_dead_nodes_always_seen_together_are_both_reported_dead() -> None:
    counts = {("s", "x", "y", "s"): (0, 10), ("s", "z", "s"): (10, 0)}
    nodes = fit(counts).nodes
    assert (nodes["x"].loss, nodes["y"].loss, nodes["z"].loss) == (1.0, 1.0, 0.0)


def test_a_provider_crossed_twice_by_a_client_loop_counts_as_two_passes() -> None:
    nodes = fit({("alice", "p", "m", "p", "alice"): (512, 488)}).nodes
    # p and m are on the same loops; p's two passes and m's one share the loss evenly:
    # s^3 = 0.512, s = 0.8 for each pass.
    assert nodes["p"].loss == nodes["m"].loss == pytest.approx(0.2, abs=1e-4)
    assert nodes["p"].loops == 1000  # a loop is counted once per segment


def test_loops_of_nodes_and_clients_together_still_single_out_the_dead_node() -> None:
    rng = random.Random(11)
    counts = draw(mix_loop_routes() + client_loop_routes(), {"c2": 1.0}, {}, 50, rng)
    nodes = fit(counts).nodes
    assert nodes["c2"].loss == 1.0
    assert max(s.loss for n, s in nodes.items() if n != "c2") == 0.0


# ---------------------------------------------------------------------- properties

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
ROUTES = st.lists(NAMES, min_size=3, max_size=6).map(tuple)
COUNTS = st.dictionaries(ROUTES, st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=8)


@settings(max_examples=200, deadline=None)
@given(COUNTS)
def test_any_counts_give_losses_between_0_and_1_and_consistent_evidence(counts: Counts) -> None:
    got = fit(counts)
    for segment in [*got.nodes.values(), *got.links.values()]:
        assert 0.0 <= segment.loss <= 1.0
        assert 0 <= segment.lost <= segment.loops <= got.loops
        assert segment.loops > 0  # a segment with no loop through it is absent
    assert got.loops == sum(r + lost for r, lost in counts.values())
    assert got.lost == sum(lost for _, lost in counts.values())


@settings(max_examples=100, deadline=None)
@given(COUNTS, st.randoms(use_true_random=False))
def test_the_fit_is_deterministic_and_independent_of_the_order_of_routes(
        counts: Counts, rnd: random.Random) -> None:
    items = list(counts.items())
    rnd.shuffle(items)
    assert fit(dict(items)) == fit(counts) == fit(counts)


@given(COUNTS, COUNTS)
def test_merge_adds_the_counts_of_each_route(first: Counts, second: Counts) -> None:
    merged = merge(first, second)
    assert set(merged) == set(first) | set(second)
    for route, (returned, lost) in merged.items():
        r1, l1 = first.get(route, (0, 0))
        r2, l2 = second.get(route, (0, 0))
        assert (returned, lost) == (r1 + r2, l1 + l2)
    assert merge(second, first) == merged and merge(first) == dict(first) and merge() == {}


# ---------------------------------------------------------------------- route labels


def test_a_route_label_joins_the_names_with_the_separator_and_parses_back() -> None:
    names = ("mix-a1", "mix-b2", "mix-c1", "provider-1", "mix-a1")
    assert route_label(names) == "mix-a1>mix-b2>mix-c1>provider-1>mix-a1"
    assert parse_route(route_label(names)) == names


@pytest.mark.parametrize("label", ["", "a", "a>b", "a>>a", ">a>b", "a>b>", ">>"])
def test_labels_of_fewer_than_3_names_or_an_empty_name_are_refused(label: str) -> None:
    with pytest.raises(ValueError):
        parse_route(label)
    assert parse_route("a>b>a") == ("a", "b", "a")  # positive control


def test_names_with_the_separator_or_empty_are_refused_in_labels_and_fits() -> None:
    for names in (("a", "b>c", "a"), ("a", "", "a"), ("a", "a")):
        with pytest.raises(RouteError):
            route_label(names)
        with pytest.raises(RouteError):
            fit({names: (1, 0)})
    with pytest.raises(RouteError):
        fit({("a", "b", "a"): (1, -1)})
    assert route_label(("a", "b", "a")) == "a>b>a"  # positive control


@given(st.lists(st.text(min_size=1, max_size=8).filter(lambda n: ">" not in n),
                min_size=3, max_size=8))
def test_any_valid_names_round_trip_through_a_label(names: list[str]) -> None:
    assert parse_route(route_label(names)) == tuple(names)


@given(st.text(max_size=40))
def test_any_text_parses_to_a_route_or_raises_route_error(label: str) -> None:
    try:
        names = parse_route(label)
    except RouteError:
        return
    assert len(names) >= 3 and all(names) and route_label(names) == label


def test_the_loop_window_is_two_minutes() -> None:
    assert LOOP_WINDOW == 120.0


def test_the_fit_is_pure_it_imports_no_zmq_and_no_sockets() -> None:
    code = ("import sys\nimport zmix.looploss\n"
            "assert not {'zmq', 'socket'} & set(sys.modules), 'zmix.looploss imported I/O'\n"
            "import zmix.runtime.links\nassert 'zmq' in sys.modules\n")  # the check can fail
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_worked_example_of_docs_monitoring_gives_the_figures_it_shows() -> None:
    got = fit({("s", "x", "y", "s"): (90, 10), ("s", "x", "z", "s"): (0, 20),
               ("s", "w", "y", "s"): (50, 0)})
    nodes = {name: round(segment.loss, 3) for name, segment in got.nodes.items()}
    assert nodes == {"x": 0.1, "y": 0.0, "z": 1.0, "w": 0.0}
    assert (got.nodes["x"].loops, got.nodes["x"].lost) == (120, 30)
    assert (got.nodes["y"].loops, got.nodes["y"].lost) == (150, 10)
    links = {link: round(segment.loss, 3) for link, segment in got.links.items()}
    assert links == {("x", "z"): 1.0, ("z", "s"): 1.0, ("s", "w"): 0.0, ("w", "y"): 0.0,
                     ("y", "s"): 0.0, ("s", "x"): 0.051, ("x", "y"): 0.051}
    alone = fit({("s", "x", "y", "s"): (90, 10)}).nodes
    assert round(alone["x"].loss, 3) == round(alone["y"].loss, 3) == 0.051
