"""A node's statistics seen from outside: a control socket and a Prometheus endpoint.

The node loop refreshes one snapshot a few times a second: a flat ``dict[str, float]`` and the
labelled statistics (name -> label value -> number). The control socket (a REP socket on a
local ipc path, named in ``STATE/nodes/NAME/control``) answers ``ping``, ``stats`` and
``labelled`` (JSON), and, when the topology gives the node a ``metrics_port``, the
prometheus_client HTTP server serves the same snapshot in the Prometheus text format, each
statistic typed and described as :mod:`zmix.stats_schema` declares it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import zmq
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily
from prometheus_client.metrics_core import Metric

from zmix.stats_schema import BY_NAME, LABELLED_BY_NAME, Kind

UNDECLARED_HELP = "not declared in zmix.stats_schema (a bug: its kind is unknown)"


class Snapshot:
    """The latest statistics of the node, shared with the metrics thread."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._labelled: dict[str, dict[str, float]] = {}

    def update(self, values: dict[str, float],
               labelled: dict[str, dict[str, float]] | None = None) -> None:
        """Replace the snapshot (the labelled statistics too, when given)."""
        with self._lock:
            self._values = dict(values)
            if labelled is not None:
                self._labelled = {name: dict(by) for name, by in labelled.items()}

    def values(self) -> dict[str, float]:
        """Return a copy of the snapshot's flat statistics."""
        with self._lock:
            return dict(self._values)

    def labelled(self) -> dict[str, dict[str, float]]:
        """Return a copy of the snapshot's labelled statistics."""
        with self._lock:
            return {name: dict(by) for name, by in self._labelled.items()}


class Collector:
    """A prometheus_client collector of one node's snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yield one metric family per statistic, labelled with the node's name."""
        node = self._snapshot.node
        for key, value in sorted(self._snapshot.values().items()):
            family = _family(key)
            family.add_metric([node], value)
            yield family
        for key, by_label in sorted(self._snapshot.labelled().items()):
            statistic = LABELLED_BY_NAME.get(key)
            labelled: CounterMetricFamily | GaugeMetricFamily | UnknownMetricFamily
            if statistic is None:
                labelled = UnknownMetricFamily(f"zmix_{key}", UNDECLARED_HELP,
                                               labels=["node", "label"])
            elif statistic.kind is Kind.GAUGE:
                labelled = GaugeMetricFamily(f"zmix_{key}", statistic.help,
                                             labels=["node", statistic.label])
            else:
                labelled = CounterMetricFamily(f"zmix_{key}", statistic.help,
                                               labels=["node", statistic.label])
            for label, value in sorted(by_label.items()):
                labelled.add_metric([node, label], value)
            yield labelled


def _family(key: str) -> CounterMetricFamily | GaugeMetricFamily | UnknownMetricFamily:
    """Return an empty metric family for statistic ``key``, typed as the schema says.

    A statistic missing from the schema is still exported, untyped, rather than hidden or
    exported as a counter it may not be (tests keep the schema and the node in step)."""
    name = f"zmix_{key}"
    statistic = BY_NAME.get(key)
    if statistic is None:
        return UnknownMetricFamily(name, UNDECLARED_HELP, labels=["node"])
    if statistic.kind is Kind.GAUGE:
        return GaugeMetricFamily(name, statistic.help, labels=["node"])
    return CounterMetricFamily(name, statistic.help, labels=["node"])


def serve_prometheus(snapshot: Snapshot, host: str, port: int) -> None:
    """Serve ``snapshot`` as Prometheus text on ``http://host:port/metrics`` (daemon thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(snapshot))
    start_http_server(port, addr=host, registry=registry)


def control_path(state_dir: Path, name: str) -> Path:
    """Return the file that names the node's control endpoint."""
    return state_dir / "nodes" / name / "control"


def answer_control(sock: zmq.Socket[bytes], snapshot: Snapshot) -> None:
    """Answer one request waiting on the control REP socket."""
    request = sock.recv()
    if request == b"stats":
        sock.send(json.dumps(snapshot.values(), sort_keys=True).encode())
    elif request == b"labelled":
        sock.send(json.dumps(snapshot.labelled(), sort_keys=True).encode())
    elif request == b"ping":
        sock.send(b"pong")
    else:
        sock.send(b'{"error": "unknown request; use ping, stats or labelled"}')


def query(state_dir: Path, name: str, request: str = "stats", timeout: float = 2.0) -> str | None:
    """Ask a running node; return its answer, or None if it did not answer in ``timeout``."""
    return query_control(control_path(state_dir, name), request, timeout)


def query_control(path: Path, request: str = "stats", timeout: float = 2.0) -> str | None:
    """Ask the process whose control endpoint is written in ``path`` (a node's, an
    authority's); return its answer, or None if there is none or it did not answer in
    ``timeout`` seconds."""
    try:
        endpoint = path.read_text().strip()
    except OSError:
        return None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send(request.encode())
        if sock.poll(int(timeout * 1000)):
            answer: bytes = sock.recv()
            return answer.decode()
        return None
    finally:
        sock.close()


def statistics(state_dir: Path, name: str, timeout: float = 2.0) -> dict[str, float] | None:
    """Return a running node's statistics, or None if it does not answer."""
    text = query(state_dir, name, "stats", timeout)
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def labelled_statistics(state_dir: Path, name: str,
                        timeout: float = 2.0) -> dict[str, dict[str, float]] | None:
    """Return a running node's labelled statistics, or None if it does not answer."""
    text = query(state_dir, name, "labelled", timeout)
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) and "error" not in value else None
