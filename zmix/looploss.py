"""Where loops die: each node's and each link's loss, fitted from loops per route (sans-IO).

Nodes and clients send loops through the network back to themselves and know the route each one
took. Over a window (:data:`LOOP_WINDOW`) they count, per route, the loops that came back and those
declared lost. A route is a tuple of names from the sender back to it, written as a label with
:func:`route_label` (``"mix-a1>mix-b2>mix-c1>provider-1>mix-a1"``) and read back with
:func:`parse_route`.

:func:`fit` turns such counts into an estimated loss per segment. The model: a loop survives iff
every segment on its route passes it, each pass independently, segment ``i`` with probability
``s_i`` (a segment crossed twice, like a client's provider on its loops, is two passes). The
segments are the route's interior names (``route[1:-1]``, the nodes; the sender is not one) and,
fitted separately, its consecutive pairs (the links, the sender's own included). ``fit`` returns
the maximum-likelihood ``s_i`` (binomial likelihood of every route's returned and lost counts),
reported as ``loss = 1 - s_i``. docs/monitoring.md ("How the loss of each node and link is
estimated") explains the model, the estimator, what it cannot tell apart and how many loops it
needs.

The estimator, in three steps:

1. A segment none of whose loops came back has loss 1 (``s = 0`` explains every one of its loops
   at once, whatever the others do); its routes say nothing more and leave the fit.
2. A segment none of whose remaining loops was lost has loss 0 (the likelihood only grows with
   its ``s``).
3. The rest by expectation-maximisation over the unseen "which pass failed" of each lost loop:
   ``s_i <- sum_r m_ir (R_r + L_r (s_i - P_r) / (1 - P_r)) / sum_r m_ir (R_r + L_r)`` over the
   routes ``r`` through ``i`` (``m_ir`` passes, ``R_r`` returned, ``L_r`` lost,
   ``P_r = prod_j s_j^m_jr`` the route's survival), started from each segment's own return
   fraction. Each step raises the likelihood and keeps every ``s`` in [0, 1]; it stops when no
   ``s`` moves by more than :data:`TOLERANCE`, or after :data:`MAX_ITERATIONS` steps.

Segments that cannot be told apart (on exactly the same routes, the same number of times: a
client's two links to its provider, or two nodes always crossed together) start equal and stay
equal, so they share the loss evenly: their joint survival ``s`` becomes ``s^(1/k)`` each for
``k`` of them; if none of their loops came back, each is reported with loss 1 (step 1).

Everything is order-independent: routes and segments are sorted before fitting, so the same
counts in any order give the same floats.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from zmix.errors import ZmixError

LOOP_WINDOW = 120.0  # seconds: loops resolved (returned or declared lost) this long ago count
SEPARATOR = ">"  # between the names of a route label
# EM stops once no segment's survival moves by more than TOLERANCE in a step, or after
# MAX_ITERATIONS steps. Far below the sampling error of any window's counts (about 0.01 for a
# segment of 1,000 loops): on 2,600 routes of a 28-node network it stops within 2e-4 of the
# exact maximum, in about 0.2 s (a survival whose maximum is exactly 1 creeps towards it).
MAX_ITERATIONS = 1_000
TOLERANCE = 1e-6

Route = tuple[str, ...]
Counts = Mapping[Route, tuple[int, int]]
S = TypeVar("S", bound=Hashable)


class RouteError(ZmixError, ValueError):
    """A route or route label that is not one: fewer than 3 names, an empty name, a name with
    the separator in it, or negative counts."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One node's or link's estimate: ``loss`` (0 to 1) and the evidence behind it, the loops
    through it (each counted once, however often it crosses the segment) and how many of them
    were lost."""

    loss: float
    loops: int
    lost: int


@dataclass(frozen=True, slots=True)
class LoopLoss:
    """The fit of one set of counts: every node and link some loop went through, and the
    totals of loops and lost loops the counts held."""

    nodes: dict[str, Segment]
    links: dict[tuple[str, str], Segment]
    loops: int
    lost: int


# ---------------------------------------------------------------------- route labels


def _check_names(names: Sequence[str]) -> None:
    if len(names) < 3:
        raise RouteError(f"a route has at least 3 names (sender, a hop, sender), got {len(names)}")
    for name in names:
        if not name:
            raise RouteError("a route has an empty name")
        if SEPARATOR in name:
            raise RouteError(f"a route's name may not contain {SEPARATOR!r}: {name!r}")


def route_label(names: Sequence[str]) -> str:
    """Return the route's label, its names joined by ``">"``.

    Raises RouteError (a ValueError) for fewer than 3 names, an empty name or one containing
    ``">"``."""
    _check_names(names)
    return SEPARATOR.join(names)


def parse_route(label: str) -> Route:
    """Return the names of a route label (the inverse of :func:`route_label`).

    Raises RouteError (a ValueError) if ``label`` has fewer than 3 names or an empty one."""
    names = tuple(label.split(SEPARATOR))
    _check_names(names)
    return names


# ---------------------------------------------------------------------- counts


def merge(*counts: Counts) -> dict[Route, tuple[int, int]]:
    """Return the per-route sums of (returned, lost) over every mapping given (the loops of
    several senders, or of several windows)."""
    total: dict[Route, tuple[int, int]] = {}
    for mapping in counts:
        for route, (returned, lost) in mapping.items():
            r0, l0 = total.get(route, (0, 0))
            total[route] = (r0 + returned, l0 + lost)
    return total


def _checked(counts: Counts) -> list[tuple[Route, int, int]]:
    """Return the routes with at least one loop, sorted; raise RouteError on a bad one."""
    rows = []
    for route, (returned, lost) in counts.items():
        _check_names(route)
        if returned < 0 or lost < 0:
            raise RouteError(f"negative counts for {route_label(route)}: {returned}, {lost}")
        if returned + lost:
            rows.append((tuple(route), int(returned), int(lost)))
    rows.sort()
    return rows


def _node_segments(route: Route) -> list[str]:
    return list(route[1:-1])


def _link_segments(route: Route) -> list[tuple[str, str]]:
    return list(itertools.pairwise(route))


# ---------------------------------------------------------------------- the fit


@dataclass(frozen=True, slots=True)
class _Row:
    """One route as the EM sees it: its segments' indices with their passes, and its counts."""

    passes: tuple[tuple[int, int], ...]
    returned: int
    lost: int


def _evidence(rows: Sequence[tuple[Sequence[S], int, int]]) -> dict[S, tuple[int, int]]:
    """Return, per segment, (loops through it, lost loops through it), each loop once."""
    loops: Counter[S] = Counter()
    lost: Counter[S] = Counter()
    for segments, returned, lost_r in rows:
        for segment in set(segments):
            loops[segment] += returned + lost_r
            lost[segment] += lost_r
    return {segment: (loops[segment], lost[segment]) for segment in loops}


def _fit_set(rows: Sequence[tuple[Sequence[S], int, int]]) -> dict[S, Segment]:
    """Return the fitted loss of every segment of one set (nodes, or links) over ``rows``."""
    evidence = _evidence(rows)
    survival: dict[S, float] = {}
    dead = {s for s, (loops, lost) in evidence.items() if lost == loops}
    survival.update(dict.fromkeys(dead, 0.0))  # step 1
    alive_rows = [row for row in rows if not dead.intersection(row[0])]
    remaining = _evidence(alive_rows)
    clean = {s for s, (_, lost) in remaining.items() if lost == 0}
    survival.update(dict.fromkeys(clean, 1.0))  # step 2
    uncertain = sorted(set(remaining) - clean, key=repr)
    survival.update(_em(uncertain, alive_rows))
    return {s: Segment(1.0 - survival[s], loops, lost) for s, (loops, lost) in evidence.items()}


def _em(uncertain: Sequence[S], rows: Sequence[tuple[Sequence[S], int, int]]) -> dict[S, float]:
    """Return the maximum-likelihood survivals of the ``uncertain`` segments (step 3); the other
    segments of ``rows`` have survival 1 and drop out of every product."""
    index = {s: i for i, s in enumerate(uncertain)}
    em_rows = []
    for segments, returned, lost in rows:
        passes = Counter(index[s] for s in segments if s in index)
        if passes:
            em_rows.append(_Row(tuple(sorted(passes.items())), returned, lost))
    if not em_rows:
        return {}
    denominator = [0.0] * len(uncertain)
    returned_passes = [0.0] * len(uncertain)
    for row in em_rows:
        for i, m in row.passes:
            denominator[i] += m * (row.returned + row.lost)
            returned_passes[i] += m * row.returned
    s = [returned_passes[i] / denominator[i] for i in range(len(uncertain))]
    for _ in range(MAX_ITERATIONS):
        updated = _em_step(s, em_rows, returned_passes, denominator)
        moved = max(abs(a - b) for a, b in zip(updated, s, strict=True))
        s = updated
        if moved <= TOLERANCE:
            break
    return {segment: s[i] for segment, i in index.items()}


def _em_step(s: list[float], rows: Sequence[_Row], returned_passes: list[float],
             denominator: list[float]) -> list[float]:
    """Return one EM update of the survivals ``s``: the expected passes each segment got, over
    the passes it was offered."""
    expected = list(returned_passes)
    for row in rows:
        if not row.lost:
            continue
        survive = math.prod(s[i] ** m for i, m in row.passes)
        if survive >= 1.0:
            continue  # cannot happen with s < 1 on a lossy route; no pass to credit
        for i, m in row.passes:
            expected[i] += m * row.lost * (s[i] - survive) / (1.0 - survive)
    return [min(1.0, max(0.0, e / d)) for e, d in zip(expected, denominator, strict=True)]


def fit(counts: Counts) -> LoopLoss:
    """Return the estimated loss of every node and link some loop in ``counts`` went through.

    ``counts`` maps a route (names, sender first and last) to (returned, lost) loops. Routes with
    no loop are ignored; a segment with no loop through it is absent. Raises RouteError (a
    ValueError) for a route of fewer than 3 names, an empty name, a name with ``">"`` or a
    negative count."""
    rows = _checked(counts)
    nodes = _fit_set([(_node_segments(r), ret, lost) for r, ret, lost in rows])
    links = _fit_set([(_link_segments(r), ret, lost) for r, ret, lost in rows])
    return LoopLoss(nodes, links, sum(r + lost for _, r, lost in rows),
                    sum(lost for _, _, lost in rows))

