"""Sweeps: one simulation per value of one parameter, as a table and a plot (docs/tune.md).

:func:`sweep` runs an evaluation (by default :func:`zmix.sim.report.measure`: a simulation
watched by the global passive adversary) for each value of one parameter, every other setting
taken from a base topology and :class:`~zmix.sim.engine.SimParams`, and collects per value the
sender and receiver anonymity (median and mean, bits), the message latency (median, 95th
percentile), the bandwidth each client sends, the busiest node's load and the loss.
:meth:`Sweep.markdown` writes the table and :meth:`Sweep.plot` the PNG.

The parameters (:data:`PARAMETERS`) are the Loopix rates and delay of the topology's
``loopix:`` section, a scale on both client cover rates, the number of clients and the fraction
of corrupted mixnodes. Changing ``mean_delay`` also raises ``loopix.max_delay`` where needed
(:func:`with_loopix`), so that clamping touches a negligible share of the delays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmix.errors import LocalMisuse
from zmix.sim.engine import SimParams
from zmix.sim.report import SimReport
from zmix.topology import Topology

# evaluate(topology, params, *, corrupted=..., settle=...) -> (simulation, report): the shape of
# zmix.sim.report.measure. Anything returning a SimReport with a privacy section fits.
Evaluate = Callable[..., tuple[Any, SimReport]]

# Every parameter a sweep can vary, with what it means (for tables, plots and error messages).
PARAMETERS: Mapping[str, str] = {
    "payload_rate": "payload rate lambda_P (packets/s per client)",
    "loop_rate": "loop rate lambda_L (packets/s per client)",
    "drop_rate": "drop rate lambda_D (packets/s per client)",
    "mix_loop_rate": "mix loop rate lambda_M (packets/s per node)",
    "mean_delay": "mean delay per hop 1/mu (s)",
    "cover_scale": "client cover scale (x lambda_L and lambda_D)",
    "clients": "clients",
    "corrupted": "corrupted mixnodes (fraction)",
}
_LOOPIX = ("payload_rate", "loop_rate", "drop_rate", "mix_loop_rate", "mean_delay")
CLAMP_FACTOR = 20.0  # max_delay >= this x mean_delay: P(Exp > 20 means) = e^-20, about 2e-9


@dataclass(frozen=True, slots=True)
class Point:
    """What one value of the swept parameter gave (means over its seeds). Entropies in bits
    (NaN when no message was measured), latencies in seconds, bandwidth in bytes/s."""

    value: float
    seeds: int
    sender_median: float
    sender_mean: float
    receiver_median: float
    receiver_mean: float
    max_bits: float  # log2(clients): the most any entropy can be
    latency_median: float
    latency_p95: float
    client_bytes_per_s: float  # what a client sends, mean over clients
    busiest_node_per_s: float  # packets/s into the busiest node
    loss: float  # fraction of messages never delivered
    messages: int  # messages measured (sum over seeds)
    wall_s: float  # wall time of the point's runs


@dataclass(frozen=True, slots=True)
class Sweep:
    """A finished sweep: the parameter, its points in the order given, and the base settings
    every point shares (``base``: the SimParams and loopix rates, as plain values)."""

    parameter: str
    points: tuple[Point, ...]
    base: dict[str, Any]

    @property
    def label(self) -> str:
        """The parameter's description (what the x axis shows)."""
        return PARAMETERS[self.parameter]

    def markdown(self) -> str:
        """Return the sweep as a markdown table, one row per value."""
        head = (f"| {self.label} | sender median (bits) | sender mean | receiver median | "
                "receiver mean | max bits | latency median (s) | latency p95 (s) | "
                "client kB/s | busiest node (pkt/s) | loss | messages |")
        rule = "|" + "---|" * 12
        rows = [f"| {p.value:g} | {_f(p.sender_median)} | {_f(p.sender_mean)} | "
                f"{_f(p.receiver_median)} | {_f(p.receiver_mean)} | {p.max_bits:.2f} | "
                f"{p.latency_median:.3f} | {p.latency_p95:.3f} | "
                f"{p.client_bytes_per_s / 1000:.2f} | {p.busiest_node_per_s:.0f} | "
                f"{100 * p.loss:.1f}% | {p.messages} |" for p in self.points]
        return "\n".join([head, rule, *rows]) + "\n"

    def to_json(self) -> str:
        """Return the sweep (parameter, base settings, every point) as JSON."""
        return json.dumps({"parameter": self.parameter, "base": self.base,
                           "points": [dataclasses.asdict(p) for p in self.points]},
                          indent=2, sort_keys=True, allow_nan=True) + "\n"

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Draw the sweep as a PNG at ``path`` (three panels: anonymity, latency, bandwidth,
        against the parameter; a log x axis when the values span more than a factor 10);
        return the path. Needs matplotlib (its Agg canvas: no display is used)."""
        from matplotlib.figure import Figure  # imported here: only plots need matplotlib
        from matplotlib.ticker import NullFormatter

        xs = [p.value for p in self.points]
        fig = Figure(figsize=(12, 3.8), layout="constrained")
        anon, lat, band = fig.subplots(1, 3)
        anon.plot(xs, [p.sender_median for p in self.points], "o-", label="sender, median")
        anon.plot(xs, [p.sender_mean for p in self.points], "o--", label="sender, mean")
        anon.plot(xs, [p.receiver_median for p in self.points], "s-", label="receiver, median")
        anon.plot(xs, [p.receiver_mean for p in self.points], "s--", label="receiver, mean")
        anon.plot(xs, [p.max_bits for p in self.points], ":", color="grey",
                  label="log2(clients)")
        anon.set_ylabel("entropy (bits)")
        lat.plot(xs, [p.latency_median for p in self.points], "o-", label="median")
        lat.plot(xs, [p.latency_p95 for p in self.points], "o--", label="95th percentile")
        lat.set_ylabel("message latency (s)")
        band.plot(xs, [p.client_bytes_per_s / 1000 for p in self.points], "o-")
        band.set_ylabel("sent per client (kB/s)")
        top = max((p.client_bytes_per_s for p in self.points), default=0.0) / 1000
        band.set_ylim(0, 1.1 * top if top > 0 else 1)
        anon.set_ylim(bottom=0)
        lat.set_ylim(bottom=0)
        logarithmic = all(x > 0 for x in xs) and len(xs) > 1 and max(xs) > 10 * min(xs)
        for ax in (anon, lat, band):
            ax.set_xlabel(self.label)
            ax.grid(True, alpha=0.3)
            if logarithmic:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(xs, labels=[f"{x:g}" for x in xs])  # the values swept, as given
        anon.legend(fontsize="small")
        lat.legend(fontsize="small")
        fig.suptitle(title or f"zmix-sim: {self.label}")
        out = Path(path)
        fig.savefig(out, format="png", dpi=100)
        return out


def _f(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def check_parameter(parameter: str) -> None:
    """Raise :class:`LocalMisuse` naming ``parameter`` (and the known ones) unless a sweep can
    vary it."""
    if parameter not in PARAMETERS:
        raise LocalMisuse(f"unknown sweep parameter {parameter!r}; known: "
                          f"{', '.join(PARAMETERS)}")


def with_loopix(topology: Topology, **changes: float) -> Topology:
    """Return ``topology`` with its ``loopix`` rates and delay changed; ``max_delay`` is raised
    to :data:`CLAMP_FACTOR` x ``mean_delay`` when lower (a delay above it is clamped, which
    would break the memorylessness the mixing relies on), but kept within what the epoch
    length allows (``epoch.length / (2 * max_hops)``). Raises :class:`LocalMisuse` for a
    negative value, a payload rate of 0 or a mean delay the epoch cannot hold."""
    for name, value in changes.items():
        if name not in _LOOPIX:
            raise LocalMisuse(f"{name!r} is not a loopix rate or delay")
        if not (value >= 0 and math.isfinite(value)):
            raise LocalMisuse(f"loopix {name} must be a finite number >= 0, got {value!r}")
    if changes.get("payload_rate", 1.0) <= 0:
        raise LocalMisuse("loopix payload_rate must be > 0")
    loopix = dataclasses.replace(topology.loopix, **changes)
    ceiling = topology.epoch.length / (2 * topology.sphinx.max_hops)
    if loopix.mean_delay > ceiling:
        raise LocalMisuse(f"mean_delay {loopix.mean_delay:g} s is longer than the epoch allows "
                          f"({ceiling:g} s: epoch.length / (2 * sphinx.max_hops))")
    wanted = min(max(loopix.max_delay, CLAMP_FACTOR * loopix.mean_delay), ceiling)
    return dataclasses.replace(topology, loopix=dataclasses.replace(loopix, max_delay=wanted))


def longest_mean_delay(topology: Topology) -> float:
    """Return the longest mean delay whose :data:`CLAMP_FACTOR` multiple the epoch length
    allows as ``max_delay`` (``epoch.length / (2 * max_hops * CLAMP_FACTOR)``)."""
    return topology.epoch.length / (2 * topology.sphinx.max_hops) / CLAMP_FACTOR


def configure(topology: Topology, base: SimParams, parameter: str,
              value: float) -> tuple[Topology, SimParams, float | None]:
    """Return the topology, SimParams and corrupted fraction (None: the caller's) of one point
    of a sweep of ``parameter``. Raises :class:`LocalMisuse` for an unknown parameter or a
    value it cannot take."""
    check_parameter(parameter)
    if parameter in _LOOPIX:
        return with_loopix(topology, **{parameter: float(value)}), base, None
    if parameter == "cover_scale":
        if not (value >= 0 and math.isfinite(value)):
            raise LocalMisuse(f"cover_scale must be a finite number >= 0, got {value!r}")
        lp = topology.loopix
        return with_loopix(topology, loop_rate=lp.loop_rate * value,
                           drop_rate=lp.drop_rate * value), base, None
    if parameter == "clients":
        if value != int(value) or value < 2:
            raise LocalMisuse(f"clients must be a whole number >= 2, got {value!r}")
        return topology, dataclasses.replace(base, clients=int(value)), None
    if not 0.0 <= value <= 1.0:
        raise LocalMisuse(f"corrupted must be a fraction in [0, 1], got {value!r}")
    return topology, base, float(value)


def default_evaluate() -> Evaluate:
    """Return :func:`zmix.sim.report.measure`: a simulation watched by the adversary."""
    from zmix.sim.report import measure

    return measure


def point_of(value: float, reports: Sequence[SimReport]) -> Point:
    """Return the :class:`Point` of ``value`` from the reports of its seeds (means)."""
    def mean(values: Sequence[float]) -> float:
        real = [v for v in values if not math.isnan(v)]
        return sum(real) / len(real) if real else math.nan

    def over(fn: Callable[[SimReport], float]) -> float:
        return mean([fn(r) for r in reports])

    return Point(
        value=value, seeds=len(reports),
        sender_median=over(lambda r: privacy_figure(r, "sender", "median")),
        sender_mean=over(lambda r: privacy_figure(r, "sender", "mean")),
        receiver_median=over(lambda r: privacy_figure(r, "receiver", "median")),
        receiver_mean=over(lambda r: privacy_figure(r, "receiver", "mean")),
        max_bits=over(max_bits),
        latency_median=over(lambda r: r.message_latency.median),
        latency_p95=over(lambda r: r.message_latency.p95),
        client_bytes_per_s=over(lambda r: r.client_up_bytes_per_s.mean),
        busiest_node_per_s=over(busiest),
        loss=over(lambda r: r.loss),
        messages=sum(r.message_latency.count for r in reports),
        wall_s=sum(r.wall_s for r in reports))


def privacy_figure(report: SimReport, side: str, stat: str) -> float:
    """Return figure ``stat`` (median, mean, ...) of the ``side`` ("sender" or "receiver")
    anonymity in ``report``, in bits; NaN when the report has none measured."""
    summary = (report.privacy or {}).get(side)
    if not isinstance(summary, Mapping) or not summary.get("count"):
        return math.nan
    return float(summary[stat])


def max_bits(report: SimReport) -> float:
    """Return the most bits any entropy of ``report`` can reach: log2(clients)."""
    return float((report.privacy or {}).get("max_bits", math.log2(report.clients)))


def busiest(report: SimReport) -> float:
    """Return the packets per second into the busiest node of ``report`` (0 if none)."""
    return max((n.received_per_s for n in report.node_load), default=0.0)


def sweep(topology: Topology, base: SimParams, parameter: str, values: Sequence[float], *,
          evaluate: Evaluate | None = None, seeds: int = 1, corrupted: float = 0.0,
          settle: float = 10.0,
          progress: Callable[[Point], None] | None = None) -> Sweep:
    """Evaluate ``topology`` and ``base`` with ``parameter`` set to each of ``values`` in turn
    (``seeds`` runs each, seeds ``base.seed``, ``base.seed + 1``...; ``corrupted`` mixnodes
    unless the parameter is ``corrupted``); return the :class:`Sweep`. ``evaluate`` defaults
    to :func:`zmix.sim.report.measure`; ``progress`` is called with each finished point.
    Raises :class:`LocalMisuse` for an unknown parameter, no values, a value the parameter
    cannot take (all checked before anything runs) or fewer than 1 seed."""
    check_parameter(parameter)
    if not values:
        raise LocalMisuse(f"a sweep of {parameter} needs at least one value")
    if seeds < 1:
        raise LocalMisuse(f"seeds must be at least 1, got {seeds}")
    setups = [configure(topology, base, parameter, float(v)) for v in values]
    run = evaluate if evaluate is not None else default_evaluate()
    points = []
    for value, (topo, params, fraction) in zip(values, setups, strict=True):
        reports = []
        for i in range(seeds):
            _, report = run(topo, dataclasses.replace(params, seed=params.seed + i),
                            corrupted=corrupted if fraction is None else fraction,
                            settle=settle)
            reports.append(report)
        point = point_of(float(value), reports)
        points.append(point)
        if progress is not None:
            progress(point)
    described = {"params": dataclasses.asdict(base), "loopix": dataclasses.asdict(topology.loopix),
                 "corrupted": corrupted, "seeds": seeds, "network": topology.network}
    return Sweep(parameter, tuple(points), described)
