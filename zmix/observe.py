"""The whole network seen at once: read every node's statistics, and report them as one object.

:func:`collect` reads one :class:`Sample` (every node of a topology at one moment: its flat and
labelled statistics, or why they could not be read); :func:`report` turns two samples into the
report docs/monitoring.md describes field by field (rates from the counters' difference over
the time between the samples, drops by reason, loop loss per node and link from
:func:`zmix.looploss.fit`). ``zmix-status`` prints it, the web view serves it.

Where a node is read from: a node whose private key is in the state folder
(``STATE/private/NAME.json``) runs from it, so its control socket is asked (``stats`` and
``labelled``, :mod:`zmix.runtime.metrics`); if that does not answer, or the node is not local,
its Prometheus page ``http://HOST:METRICS_PORT/metrics`` is read when the topology gives it a
``metrics_port``. A node with neither is :attr:`State.UNKNOWN`: not seen, not known to be down.

Only :func:`collect` and its helpers do I/O (sockets, HTTP, threads, the clock), and they import
zmq and the API client when called, so importing this module for :func:`report` pulls in no
runtime code.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zmix import looploss
from zmix.errors import ZmixError
from zmix.stats_schema import LABELLED_STATISTICS, STATISTICS
from zmix.topology import NodeSpec, Role, Topology

WINDOW = int(looploss.LOOP_WINDOW)  # seconds: the loop counts cover the loops resolved in it
Counts = dict[tuple[str, ...], tuple[int, int]]  # a loop route -> (returned, lost)


class MetricsError(ZmixError):
    """A Prometheus page that does not parse, or is not the expected node's."""


class Source(enum.Enum):
    """Where a node's statistics were read."""

    CONTROL = "control"  # its control socket (it runs from this state folder)
    METRICS = "metrics"  # its Prometheus page on metrics_port


class State(enum.Enum):
    """What is known of a node."""

    UP = "up"  # its statistics were read
    DOWN = "down"  # it should answer (local, or has a metrics_port) and did not
    UNKNOWN = "unknown"  # no way to read it from here: not local and no metrics_port


@dataclass(frozen=True, slots=True)
class Reading:
    """One node at one moment: its statistics, or why they could not be read."""

    name: str
    state: State
    source: Source | None = None
    error: str | None = None
    stats: Mapping[str, float] = field(default_factory=dict)
    # statistic -> label value (a route or a peer) -> value
    labelled: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sample:
    """Every node of a network at one moment (``time``: unix seconds), and the loop counts of
    the client daemons running from the state folder (route -> (returned, lost))."""

    time: float
    nodes: Mapping[str, Reading]
    client_loops: Mapping[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)


# ==================================================================== parsing what nodes answer


def _number(value: object) -> float | None:
    """Return ``value`` as a finite float, or None if it is not a number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_stats(text: str) -> dict[str, float]:
    """Return the flat statistics in a control socket's ``stats`` answer (a JSON object of
    numbers; entries that are not numbers are left out). Raises MetricsError if it is not a
    JSON object."""
    try:
        value = json.loads(text)
    except ValueError:
        raise MetricsError("the stats answer is not JSON") from None
    if not isinstance(value, dict):
        raise MetricsError("the stats answer is not a JSON object")
    return {k: n for k, v in value.items() if (n := _number(v)) is not None}


def parse_labelled(text: str | None) -> dict[str, dict[str, float]]:
    """Return the labelled statistics in a control socket's ``labelled`` answer (a JSON object
    of objects of numbers). Anything else (no answer, an error answer from a node that does not
    know the request, bad JSON) gives no labelled statistics: they are optional."""
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return {}
    if not isinstance(value, dict) or "error" in value:
        return {}
    result: dict[str, dict[str, float]] = {}
    for name, entries in value.items():
        if isinstance(entries, dict):
            result[name] = {str(k): n for k, v in entries.items()
                            if (n := _number(v)) is not None}
    return result


_NAMES: dict[str, str] = {s.prometheus_name: s.name for s in STATISTICS}
_NAMES.update((s.prometheus_name, s.name) for s in LABELLED_STATISTICS)


def _statistic_name(sample: str, family_type: str) -> str:
    """Return the statistic a Prometheus sample carries: the schema's name for its sample
    name, else the name without ``zmix_`` (and a counter's without ``_total``)."""
    if sample in _NAMES:
        return _NAMES[sample]
    name = sample.removeprefix("zmix_")
    if family_type == "counter":
        name = name.removesuffix("_total")
    return name


def parse_metrics(text: str, node: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Return node ``node``'s flat and labelled statistics from a Prometheus text page (the
    samples ``zmix_*`` labelled ``node="NODE"``; a labelled one carries one more label, its
    ``route`` or ``peer``). Raises MetricsError if the page does not parse or has no sample of
    ``node``."""
    from prometheus_client.parser import text_string_to_metric_families

    flat: dict[str, float] = {}
    labelled: dict[str, dict[str, float]] = {}
    others: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.startswith("zmix_") or sample.name.endswith("_created"):
                    continue
                if sample.labels.get("node") != node:
                    others.add(str(sample.labels.get("node")))
                    continue
                value = _number(sample.value)
                if value is None:
                    continue
                name = _statistic_name(sample.name, family.type)
                # A labelled statistic's one other label: its route or its peer (the schema's).
                label = next((v for k, v in sorted(sample.labels.items()) if k != "node"), None)
                if label is None:
                    flat[name] = value
                else:
                    labelled.setdefault(name, {})[label] = value
    except (ValueError, TypeError, IndexError, KeyError) as error:
        raise MetricsError(f"the metrics page does not parse: {error}") from None
    if not flat and not labelled:
        seen = f" (it has samples of {', '.join(sorted(others))})" if others else ""
        raise MetricsError(f"the metrics page has no zmix sample of node {node}{seen}")
    return flat, labelled


def parse_client_loops(value: object) -> Counts:
    """Return the loop counts in the ``loop_routes`` field of a client daemon's status:
    ``{"ROUTE": [returned, lost]}`` or ``{"ROUTE": {"returned": n, "lost": n}}`` (a ROUTE may
    also be a tuple of names). Entries that
    are neither, or whose route does not parse, are left out (the field is optional)."""
    counts: Counts = {}
    if not isinstance(value, Mapping):
        return counts
    for label, entry in value.items():
        pair = ([entry.get("returned"), entry.get("lost")] if isinstance(entry, Mapping)
                else entry)
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            continue
        returned, lost = (_number(n) for n in pair)
        try:
            # The label as the API carries it, or a route the thin client already split.
            route = (looploss.parse_route(looploss.route_label(label))
                     if isinstance(label, tuple) else looploss.parse_route(str(label)))
        except ValueError:
            continue
        if returned is not None and lost is not None and returned >= 0 and lost >= 0:
            counts = looploss.merge(counts, {route: (int(returned), int(lost))})
    return counts


def node_loops(labelled: Mapping[str, Mapping[str, float]]) -> Counts:
    """Return the loop counts of one node's labelled statistics ``loop_route_returned`` and
    ``loop_route_lost`` (routes that do not parse are left out)."""
    returned = labelled.get("loop_route_returned", {})
    lost = labelled.get("loop_route_lost", {})
    counts: Counts = {}
    for label in {*returned, *lost}:
        try:
            route = looploss.parse_route(label)
        except ValueError:
            continue
        counts[route] = (max(0, int(returned.get(label, 0))), max(0, int(lost.get(label, 0))))
    return counts


# ==================================================================== the report (pure)


def stratified_links(topology: Topology) -> list[tuple[str, str]]:
    """Return every link of the stratified topology, in order: each provider to each layer-0
    node, each node of layer i to each of layer i+1, each last-layer node to each provider."""
    providers = [p.name for p in topology.providers]
    layers = [[n.name for n in layer] for layer in topology.layers]
    if not layers:
        return []
    links = [(p, n) for p in providers for n in layers[0]]
    for here, there in itertools.pairwise(layers):
        links += [(a, b) for a in here for b in there]
    return links + [(n, p) for n in layers[-1] for p in providers]


def restarted(before: Mapping[str, float], after: Mapping[str, float]) -> bool:
    """Return True if the two readings of a node are of different processes: its ``pid``
    changed or its ``uptime_seconds`` went down."""
    if before.get("pid") is not None and before.get("pid") != after.get("pid"):
        return True
    up_before, up_after = before.get("uptime_seconds"), after.get("uptime_seconds")
    return up_before is not None and up_after is not None and up_after < up_before


def rate(before: float | None, after: float | None, interval: float | None) -> float | None:
    """Return a counter's rate per second between two readings, or None without two readings
    or an interval, or when the counter went down (the process restarted in between)."""
    if before is None or after is None or not interval or interval <= 0 or after < before:
        return None
    return (after - before) / interval


def _int(stats: Mapping[str, float], name: str) -> int | None:
    value = stats.get(name)
    return None if value is None else int(value)


def _previous_stats(previous: Sample | None, name: str,
                    current: Reading) -> Mapping[str, float] | None:
    """Return the node's statistics in ``previous`` if rates may be taken from them (it was
    up then and has not restarted since)."""
    if previous is None or current.state is not State.UP:
        return None
    before = previous.nodes.get(name)
    if before is None or before.state is not State.UP or restarted(before.stats, current.stats):
        return None
    return before.stats


def node_entry(spec: NodeSpec, reading: Reading, before: Mapping[str, float] | None,
               interval: float | None, fit: looploss.LoopLoss) -> dict[str, Any]:
    """Return one node's entry of the report (docs/monitoring.md, "The JSON report")."""
    stats = reading.stats
    prior = before or {}
    segment = fit.nodes.get(spec.name)
    provider = spec.role is Role.PROVIDER
    return {
        "name": spec.name, "role": spec.role.value, "layer": spec.layer,
        "address": f"{spec.host}:{spec.port}", "up": reading.state is State.UP,
        "state": reading.state.value,
        "source": reading.source.value if reading.source else None, "error": reading.error,
        "age": stats.get("uptime_seconds"),
        "packets_in_per_s": rate(prior.get("received"), stats.get("received"), interval),
        "packets_out_per_s": rate(prior.get("sent"), stats.get("sent"), interval),
        "drops": {k.removeprefix("dropped_"): int(v) for k, v in sorted(stats.items())
                  if k.startswith("dropped_") and k != "dropped_total"},
        "dropped_total": _int(stats, "dropped_total"), "queue": _int(stats, "queue_depth"),
        "workers": _int(stats, "workers"), "loops_sent": _int(stats, "loops_sent"),
        "loops_returned": _int(stats, "loops_returned"),
        "loops_lost": _int(stats, "loops_lost"),
        "mailbox_items": _int(stats, "mailbox_items") if provider else None,
        "clients_online": _int(stats, "clients_online") if provider else None,
        "loop_loss": segment.loss if segment and segment.loops else None,
        "loop_samples": segment.loops if segment else 0,
        "stats": dict(stats),
    }


def link_entries(topology: Topology, previous: Sample | None, current: Sample,
                 interval: float | None, fit: looploss.LoopLoss) -> list[dict[str, Any]]:
    """Return the report's links: every link of the stratified topology, then any other one
    seen (packets counted on it, or loops through it), sorted."""
    links = stratified_links(topology)
    seen = {(name, peer) for name, reading in current.nodes.items()
            for peer in reading.labelled.get("link_packets_sent", {})}
    known = set(links)
    links += sorted((seen | set(fit.links)) - known)
    entries = []
    for a, b in links:
        reading = current.nodes.get(a)
        after = reading.labelled.get("link_packets_sent", {}).get(b) if reading else None
        before = None
        if reading is not None and _previous_stats(previous, a, reading) is not None:
            assert previous is not None  # _previous_stats returned statistics from it
            before = previous.nodes[a].labelled.get("link_packets_sent", {}).get(b)
        segment = fit.links.get((a, b))
        entries.append({"from": a, "to": b, "packets_per_s": rate(before, after, interval),
                        "loop_loss": segment.loss if segment and segment.loops else None,
                        "loop_samples": segment.loops if segment else 0})
    return entries


def loop_counts(sample: Sample) -> Counts:
    """Return every loop count of a sample: each node's own loops and the client daemons'."""
    return looploss.merge(*(node_loops(r.labelled) for r in sample.nodes.values()),
                          sample.client_loops)


def report(topology: Topology, previous: Sample | None, current: Sample) -> dict[str, Any]:
    """Return the report of ``current`` (docs/monitoring.md, "The JSON report"): rates come
    from ``previous`` (None: no rates), loop loss from ``current``'s loop counts. Pure."""
    interval = current.time - previous.time if previous is not None else None
    if interval is not None and interval <= 0:
        interval = None
    counts = loop_counts(current)
    fit = looploss.fit(counts)
    nodes = []
    for spec in topology.nodes():
        reading = current.nodes.get(spec.name) or Reading(
            spec.name, State.UNKNOWN, error="not in the sample")
        nodes.append(node_entry(spec, reading, _previous_stats(previous, spec.name, reading),
                                interval, fit))
    return {
        "network": topology.network, "time": current.time, "interval": interval,
        "window": WINDOW, "nodes": nodes,
        "links": link_entries(topology, previous, current, interval, fit),
        "loops": {"returned": sum(r for r, _ in counts.values()),
                  "lost": sum(lost for _, lost in counts.values())},
        "down": [n["name"] for n in nodes if n["state"] == State.DOWN.value],
        "unknown": [n["name"] for n in nodes if n["state"] == State.UNKNOWN.value],
    }


# ==================================================================== reading the network (I/O)


def is_local(state_dir: Path, name: str) -> bool:
    """Return True if node ``name`` runs from ``state_dir``: its private key file is there."""
    return (state_dir / "private" / f"{name}.json").is_file()


def observable(topology: Topology, state_dir: Path) -> list[str]:
    """Return the nodes that can be read from here: local ones and those with a metrics_port."""
    return [n.name for n in topology.nodes()
            if is_local(state_dir, n.name) or n.metrics_port is not None]


def metrics_url(spec: NodeSpec) -> str:
    """Return the address of a node's Prometheus page (its metrics_port must be set)."""
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"http://{host}:{spec.metrics_port}/metrics"


def read_control(state_dir: Path, name: str, timeout: float) -> Reading | None:
    """Return a local node's reading from its control socket, or None if it does not answer
    ``stats`` within ``timeout`` seconds."""
    from zmix.runtime.metrics import control_path, query_control

    path = control_path(state_dir, name)
    text = query_control(path, "stats", timeout)
    if text is None:
        return None
    try:
        stats = parse_stats(text)
    except MetricsError:
        return None
    labelled = parse_labelled(query_control(path, "labelled", timeout))
    return Reading(name, State.UP, Source.CONTROL, None, stats, labelled)


def read_metrics(spec: NodeSpec, timeout: float) -> Reading:
    """Return a node's reading from its Prometheus page (DOWN, with the reason, if it cannot
    be read)."""
    url = metrics_url(spec)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http only)
            text = answer.read().decode("utf-8", errors="replace")
        flat, labelled = parse_metrics(text, spec.name)
    except (OSError, MetricsError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        return Reading(spec.name, State.DOWN, error=f"{url}: {reason}")
    return Reading(spec.name, State.UP, Source.METRICS, None, flat, labelled)


def read_node(spec: NodeSpec, state_dir: Path, timeout: float) -> Reading:
    """Return one node's reading from wherever it can be read (module docstring)."""
    local = is_local(state_dir, spec.name)
    if local:
        reading = read_control(state_dir, spec.name, timeout)
        if reading is not None:
            return reading
    if spec.metrics_port is not None:
        reading = read_metrics(spec, timeout)
        if local and reading.error is not None:
            reading = Reading(spec.name, State.DOWN, error=(
                f"no answer on its control socket in {timeout:g} s, nor from {reading.error}"))
        return reading
    if local:
        return Reading(spec.name, State.DOWN, error=(
            f"no answer on its control socket in {timeout:g} s (not running?), and no "
            f"metrics_port"))
    return Reading(spec.name, State.UNKNOWN,
                   error="no metrics_port, and not run from this state folder")


def read_client_loops(state_dir: Path, name: str, timeout: float) -> Counts:
    """Return the loop counts of client ``name``'s daemon, if one runs from ``state_dir``
    (none, or one that does not answer: no counts)."""
    from zmix.api.client import Client, socket_path

    if not socket_path(state_dir, name).exists():
        return {}
    try:
        with Client.connect(state=state_dir, name=name, timeout=timeout) as client:
            status = client.status()
    except (ZmixError, OSError):
        return {}
    return parse_client_loops(status.loop_routes)


def collect(topology: Topology, state_dir: Path, *, timeout: float) -> Sample:
    """Read every node of ``topology`` (and the loop counts of the client daemons running from
    ``state_dir``) at once, each read bounded by ``timeout`` seconds; return the sample, timed
    when the reads were started. The reads run in threads, so a whole network takes about one
    ``timeout`` at worst."""
    specs = list(topology.nodes())
    clients = [c.name for c in topology.clients]
    started = time.time()
    with ThreadPoolExecutor(max_workers=max(1, len(specs) + len(clients))) as pool:
        readings = [pool.submit(read_node, spec, state_dir, timeout) for spec in specs]
        loops = [pool.submit(read_client_loops, state_dir, name, timeout) for name in clients]
        nodes = {spec.name: future.result() for spec, future in zip(specs, readings,
                                                                     strict=True)}
        client_loops = looploss.merge(*(future.result() for future in loops))
    return Sample(started, nodes, client_loops)

