"""What a simulation measured, as one report: latency, loss, bandwidth, node load, anonymity.

:func:`simulate` runs a :class:`~zmix.sim.engine.Simulation` (with the adversary analysis of
:mod:`zmix.sim.adversary` watching every record when asked) and returns a :class:`SimReport`,
which :meth:`SimReport.text` prints and :meth:`SimReport.to_json` saves. docs/privacy.md says
what each figure means.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zmix.errors import LocalMisuse
from zmix.sim.adversary import Adversary, PrivacyReport, corrupt_sample
from zmix.sim.engine import START, SimParams, Simulation, sim_topology
from zmix.sim.taps import Record, merge_node_taps
from zmix.topology import Topology


@dataclass(frozen=True, slots=True)
class Spread:
    """A sample's size and its mean, median, 5th and 95th percentiles and maximum (0 if empty)."""

    count: int
    mean: float
    median: float
    p5: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Return the spread of ``values`` (nearest-rank percentiles)."""
        if not values:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(values)
        n = len(ordered)

        def rank(q: float) -> float:
            return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]

        return cls(n, sum(ordered) / n, rank(0.5), rank(0.05), rank(0.95), ordered[-1])


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One node's traffic over the measured time: packets per second in and out, and the
    packets its delay queue held (time-averaged mean, maximum)."""

    name: str
    role: str
    received_per_s: float
    sent_per_s: float
    held_mean: float
    held_max: int
    dropped: int


@dataclass(frozen=True, slots=True)
class SimReport:
    """Everything one run measured; times in seconds, rates per second, sizes in bytes."""

    params: dict[str, Any]
    loopix: dict[str, float]
    packet_bytes: int
    clients: int
    nodes: int
    simulated_s: float
    wall_s: float
    events: int
    records: int
    packets: dict[str, int]  # made in the measured time, by kind
    message_latency: Spread  # submit -> reassembled at the recipient
    network_latency: Spread  # a payload packet: sent by its client -> at the last provider
    messages_sent: int  # submitted in the measured time, settle seconds before the end
    messages_delivered: int
    client_up_bytes_per_s: Spread  # packets each client sent x packet size
    client_down_items_per_s: Spread  # mailbox items each client fetched
    node_load: tuple[NodeLoad, ...]
    dropped: dict[str, int]  # every node's drops, by reason
    loops: dict[str, int]  # clients' loops: sent, returned, lost
    privacy: dict[str, Any] | None = None  # the adversary's report (zmix.sim.adversary)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sim_seconds_per_s(self) -> float:
        """Simulated seconds per second of wall time."""
        return self.simulated_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def loss(self) -> float:
        """The fraction of messages sent (settle seconds before the end) never delivered."""
        return 1 - self.messages_delivered / self.messages_sent if self.messages_sent else 0.0

    def to_json(self) -> str:
        """Return the report as JSON (every field, plus the two derived figures)."""
        data = asdict(self)
        data["sim_seconds_per_s"] = self.sim_seconds_per_s
        data["loss"] = self.loss
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def text(self) -> str:
        """Return the report as a few lines a person reads."""
        lat, net = self.message_latency, self.network_latency
        up, down = self.client_up_bytes_per_s, self.client_down_items_per_s
        busiest = max(self.node_load, key=lambda n: n.received_per_s)
        lines = [
            f"simulated {self.simulated_s:g} s of {self.clients} clients and {self.nodes} nodes "
            f"in {self.wall_s:.1f} s: {self.sim_seconds_per_s:.2f} simulated s per s, "
            f"{self.events / max(self.wall_s, 1e-9):,.0f} events per s",
            "packets made: " + ", ".join(f"{k} {v}" for k, v in sorted(self.packets.items())),
            f"message latency: median {lat.median:.3f} s, p95 {lat.p95:.3f} s, "
            f"mean {lat.mean:.3f} s ({lat.count} messages)",
            f"network latency (payload packets): median {net.median:.3f} s, "
            f"p95 {net.p95:.3f} s",
            f"loss: {self.messages_sent - self.messages_delivered} of {self.messages_sent} "
            f"messages ({100 * self.loss:.2f}%); node drops "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none")
            + f"; client loops {self.loops.get('returned', 0)} back, "
            f"{self.loops.get('lost', 0)} lost of {self.loops.get('sent', 0)}",
            f"bandwidth per client: up {up.mean / 1000:.1f} kB/s (max {up.max / 1000:.1f}), "
            f"down {down.mean:.2f} items/s",
            f"node load: busiest {busiest.name} {busiest.received_per_s:.0f} packets/s in, "
            f"holding {busiest.held_mean:.1f} on average (max {busiest.held_max})",
        ]
        if self.privacy is not None:
            lines += _privacy_lines(self.privacy)
        return "\n".join(lines) + "\n"


def _privacy_lines(privacy: Mapping[str, Any]) -> list[str]:
    out = []
    for side in ("sender", "receiver"):
        summary = privacy.get(side)
        if isinstance(summary, Mapping) and summary.get("count"):
            out.append(f"{side} anonymity: median {summary['median']:.2f} bits, mean "
                       f"{summary['mean']:.2f}, p5 {summary['p5']:.2f} "
                       f"({summary['count']} messages; at most {privacy['max_bits']:.2f})")
    return out


def simulate(topology: Topology, params: SimParams, *,
             observers: Sequence[Callable[[Record], None]] = (),
             settle: float = 10.0,
             privacy: Callable[[], dict[str, Any]] | None = None,
             progress: Callable[[float], None] | None = None) -> tuple[Simulation, SimReport]:
    """Run ``params`` on ``topology``; return the simulation and its report.

    Every record goes to each of ``observers`` as it happens; ``privacy`` is called after the
    run for the adversary's summary (None: no privacy section). Messages submitted in the last
    ``settle`` seconds do not count towards loss. ``progress`` gets the simulated seconds done
    now and then (:meth:`Simulation.run`).
    """
    def observe(record: Record) -> None:
        for fn in observers:
            fn(record)

    # one observer (the adversary, most often) is called directly: a call less per record
    single = observers[0] if len(observers) == 1 else observe
    sim = Simulation(topology, params, observe=single if observers else None)
    started = time.perf_counter()
    tally = sim.run(progress)
    wall = time.perf_counter() - started
    measured = params.duration - params.warmup
    cutoff = sim.end - settle
    sent = [m for m, t in tally.submitted.items() if t <= cutoff]
    delivered = sum(1 for m in sent if m in tally.completed)
    dropped: Counter[str] = Counter()
    loads = []
    for node in sim.nodes:
        stats = node.core.statistics()
        lost = {k[len("dropped_"):]: v for k, v in stats.items()
                if k.startswith("dropped_") and v}
        dropped.update(lost)
        loads.append(NodeLoad(node.spec.name, node.spec.role.value,
                              node.received / params.duration, node.sent / params.duration,
                              node.held_area / params.duration, node.held_max,
                              sum(lost.values())))
    loops: Counter[str] = Counter()
    for client in sim.clients:
        stats = client.core.statistics()
        loops.update({"sent": stats["loops_sent"], "returned": stats["loops_returned"],
                      "lost": stats["loops_lost"]})
    packet = sim.sphinx.packet_length
    report = SimReport(
        params=asdict(params), loopix=asdict(sim.topology.loopix), packet_bytes=packet,
        clients=len(sim.clients), nodes=len(sim.nodes), simulated_s=params.duration,
        wall_s=wall, events=tally.events, records=tally.records, packets=dict(tally.kinds),
        message_latency=Spread.of([tally.completed[m] for m in sent if m in tally.completed]),
        network_latency=Spread.of(tally.network_latency),
        messages_sent=len(sent), messages_delivered=delivered,
        client_up_bytes_per_s=Spread.of([tally.sent[c.name] * packet / measured
                                         for c in sim.clients]),
        client_down_items_per_s=Spread.of([tally.fetched[c.name] / measured
                                           for c in sim.clients]),
        node_load=tuple(loads), dropped=dict(dropped), loops=dict(loops),
        privacy=None if privacy is None else privacy())
    return sim, report


def write_report(directory: Path, report: SimReport) -> Path:
    """Write ``report.json`` and ``report.txt`` into ``directory`` (made if missing); return
    the JSON file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.txt").write_text(report.text())
    path = directory / "report.json"
    path.write_text(report.to_json())
    return path


def privacy_summary(report: PrivacyReport) -> dict[str, Any]:
    """Return the adversary's report as the ``privacy`` section of a :class:`SimReport`: the
    sender and receiver summaries (bits: count, mean, median, p5, p95, min, max; None when
    nothing was measured), the most bits possible, the corrupted nodes and the counts of targets
    not measured."""
    return {
        "sender": None if report.sender is None else asdict(report.sender),
        "receiver": None if report.receiver is None else asdict(report.receiver),
        "max_bits": report.max_bits,
        "corrupted": list(report.corrupted),
        "records": report.records,
        "sender_node_mass_mean": (sum(report.sender_node_mass) / len(report.sender_node_mass)
                                  if report.sender_node_mass else 0.0),
        "sender_pending": report.sender_pending,
        "sender_ended": report.sender_ended,
        "receiver_pending": report.receiver_pending,
        "receiver_skipped": report.receiver_skipped,
    }


def adversary_for(topology: Topology, *, corrupted: float = 0.0, seed: int = 0,
                  measure_from: float = -math.inf) -> Adversary:
    """Return the global passive adversary of ``topology``'s members, with ``corrupted`` (a
    fraction) of its mixnodes drawn with ``seed`` revealing their mapping."""
    mixnodes = [n.name for layer in topology.layers for n in layer]
    bad = corrupt_sample(mixnodes, corrupted, random.Random(seed)) if corrupted else frozenset()
    return Adversary([c.name for c in topology.clients], [n.name for n in topology.nodes()],
                     providers=[p.name for p in topology.providers], corrupted=bad,
                     measure_from=measure_from)


def measure(topology: Topology, params: SimParams, *, corrupted: float = 0.0,
            settle: float = 10.0, observers: Sequence[Callable[[Record], None]] = (),
            progress: Callable[[float], None] | None = None) -> tuple[Simulation, SimReport]:
    """Run ``params`` on ``topology`` with the adversary watching (``corrupted``: the fraction
    of mixnodes, drawn with ``params.seed``, that reveal their mapping); return the simulation
    and its report, whose ``privacy`` is :func:`privacy_summary` of what the adversary learned
    about the messages sent after the warmup."""
    adversary = adversary_for(sim_topology(topology, params), corrupted=corrupted,
                              seed=params.seed, measure_from=START + params.warmup)
    return simulate(topology, params, observers=[adversary.observe, *observers],
                    settle=settle, progress=progress,
                    privacy=lambda: privacy_summary(adversary.report()))


@dataclass(frozen=True, slots=True)
class TapsReport:
    """The adversary's analysis of a real network's node taps (zmix-sim --from-taps)."""

    directory: str
    files: int
    lines: int
    unknown_members: int
    unresolved: int
    records: int
    privacy: dict[str, Any]

    def text(self) -> str:
        """Return the report as a few lines a person reads."""
        head = (f"{self.files} node taps in {self.directory}: {self.lines} lines, "
                f"{self.records} records ({self.unknown_members} lines naming unknown members "
                f"and {self.unresolved} without their parent packet skipped)")
        return "\n".join([head, *_privacy_lines(self.privacy)]) + "\n"

    def to_json(self) -> str:
        """Return the report as JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def analyse_taps(topology: Topology, directory: Path, *, corrupted: float = 0.0,
                 seed: int = 0) -> TapsReport:
    """Merge the node taps a real network of ``topology`` wrote in ``directory`` (NODE.jsonl
    for each node that has one) and run the adversary over them. Raises RecordError for a
    malformed tap, LocalMisuse if ``directory`` holds no tap of a node of ``topology``."""
    paths = {n.name: directory / f"{n.name}.jsonl" for n in topology.nodes()
             if (directory / f"{n.name}.jsonl").is_file()}
    if not paths:
        raise LocalMisuse(f"{directory}: no node tap (NODE.jsonl) of a node of "
                          f"{topology.path}")
    merged = merge_node_taps(paths, topology.names())
    adversary = adversary_for(topology, corrupted=corrupted, seed=seed)
    for record in merged.records:
        adversary.observe(record)
    return TapsReport(str(directory), len(paths), merged.lines, merged.unknown_members,
                      merged.unresolved, len(merged.records),
                      privacy_summary(adversary.report()))
