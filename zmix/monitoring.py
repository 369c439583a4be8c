"""Prometheus and Grafana configuration for a topology's nodes: a Topology in, dicts and text out.

``zmix-up TOPOLOGY --export-monitoring DIR`` writes what :func:`files` returns: a Prometheus scrape
configuration with one target per node that has a ``metrics_port``, the alerting rules it loads,
and a Grafana dashboard whose panels are :func:`panels`. Every PromQL expression names its
metrics through :func:`metric`, so a statistic renamed in :mod:`zmix.stats_schema` breaks here
at once rather than in a blank Grafana panel. docs/monitoring.md lists the panels and the alerts
as ``python -m zmix.monitoring`` prints them, and a test keeps the two in step.

Nothing here reads a file, a clock or a socket.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from zmix.errors import LocalMisuse
from zmix.looploss import LOOP_WINDOW
from zmix.stats_schema import BY_NAME, LABELLED_BY_NAME
from zmix.topology import NodeSpec, Role, Topology

JOB = "zmix"  # the scrape job's name; the dashboard and the rules select on it
PROMETHEUS_FILE = "prometheus.yml"
RULES_FILE = "zmix-rules.yml"
DASHBOARD_FILE = "grafana-dashboard.json"
SCRAPE_INTERVAL = "5s"  # nodes refresh their statistics four times a second; 5 s costs nothing
EVALUATION_INTERVAL = "15s"  # how often Prometheus evaluates the alerting rules
# Every expression of the dashboard selects the series of the chosen network and nodes with this
# (two dashboard variables; a Prometheus may scrape several networks whose node names repeat).
SELECTOR = '{network="$network",node=~"$node"}'
RATE = "[$__rate_interval]"  # Grafana's window for rate(): at least four scrape intervals
# The one series the dashboard and the rules use that no node reports: Prometheus makes it for
# each target on each scrape (1 if the scrape worked, 0 if not).
PROMETHEUS_SERIES = frozenset({"up"})
DROP_PREFIX = "dropped_"


def metric(name: str) -> str:
    """Return the Prometheus sample name of statistic ``name`` (flat or labelled), as the node
    exports it. Raises KeyError if :mod:`zmix.stats_schema` declares no such statistic."""
    if name in BY_NAME:
        return BY_NAME[name].prometheus_name
    return LABELLED_BY_NAME[name].prometheus_name


def drop_reasons() -> tuple[str, ...]:
    """Return the reasons a node drops packets for, in the schema's order: the names of its
    ``dropped_*`` statistics without the prefix (``dropped_total``, their sum, left out)."""
    return tuple(s.name.removeprefix(DROP_PREFIX) for s in BY_NAME.values()
                 if s.name.startswith(DROP_PREFIX) and s.name != "dropped_total")


# ==================================================================== the Prometheus side


def target(node: NodeSpec) -> str:
    """Return the ``host:port`` Prometheus scrapes for ``node`` (an IPv6 host in brackets).
    Raises LocalMisuse if the node has no metrics port."""
    if node.metrics_port is None:
        raise LocalMisuse(f"node {node.name} has no metrics port to scrape")
    host = f"[{node.host}]" if ":" in node.host else node.host
    return f"{host}:{node.metrics_port}"


def target_labels(topology: Topology, node: NodeSpec) -> dict[str, str]:
    """Return the labels Prometheus adds to every series of ``node``: network, node, role and,
    for a mixnode, its layer (counted from 0)."""
    labels = {"network": topology.network, "node": node.name, "role": node.role.value}
    if node.layer is not None:
        labels["layer"] = str(node.layer)
    return labels


def scraped(topology: Topology) -> tuple[NodeSpec, ...]:
    """Return the nodes with a metrics port, in the topology's order."""
    return tuple(n for n in topology.nodes() if n.metrics_port is not None)


def unscraped(topology: Topology) -> tuple[NodeSpec, ...]:
    """Return the nodes without a metrics port: Prometheus cannot see them."""
    return tuple(n for n in topology.nodes() if n.metrics_port is None)


def prometheus_config(topology: Topology) -> dict[str, Any]:
    """Return the Prometheus configuration of the topology: one job, one static target per node
    with a metrics port, labelled by :func:`target_labels`, and the rules file."""
    job = {
        "job_name": JOB,
        "scrape_interval": SCRAPE_INTERVAL,
        "metrics_path": "/metrics",
        # The node labels its own series node="NAME", the very value of the target's label:
        # honouring it keeps one `node` label instead of a second one named `exported_node`.
        "honor_labels": True,
        "static_configs": [{"targets": [target(n)], "labels": target_labels(topology, n)}
                           for n in scraped(topology)],
    }
    return {"global": {"scrape_interval": "15s", "evaluation_interval": EVALUATION_INTERVAL},
            "rule_files": [RULES_FILE], "scrape_configs": [job]}


def _describe(node: NodeSpec) -> str:
    if node.role is Role.PROVIDER:
        return f"{node.name} (provider)"
    return f"{node.name} (mixnode, layer {node.layer})"


def prometheus_yaml(topology: Topology) -> str:
    """Return :func:`prometheus_config` as YAML, after comments saying where it comes from and
    naming the nodes it cannot scrape (no metrics port)."""
    # One comment line of characters YAML reads, whatever the path holds.
    source = "".join(c if c.isprintable() else "?" for c in str(topology.path))
    lines = [f"# Prometheus scrape configuration of zmix network {topology.network}, written by",
             f"# zmix-up --export-monitoring from {source}.",
             f"# Alerting rules: {RULES_FILE} (beside this file). Run:",
             f"#   prometheus --config.file={PROMETHEUS_FILE}"]
    missing = unscraped(topology)
    if missing:
        lines.append("# Not scraped: these nodes have no metrics_port in the topology (give them "
                     "one to see them here):")
        lines += [f"#   {_describe(n)}" for n in missing]
    body = yaml.safe_dump(prometheus_config(topology), sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


@dataclass(frozen=True, slots=True)
class Alert:
    """One alerting rule: its name, PromQL condition, how long it must hold, and its meaning."""

    name: str
    expr: str
    duration: str
    severity: str
    meaning: str


def _loss_ratio(window: str, selector: str) -> str:
    """Return the share of a node's own mix loops lost over ``window``."""
    lost = f"rate({metric('loops_lost')}{selector}{window})"
    returned = f"rate({metric('loops_returned')}{selector}{window})"
    return f"{lost} / ({returned} + {lost})"


def alerts() -> tuple[Alert, ...]:
    """Return the alerting rules of the rules file."""
    job = f'{{job="{JOB}"}}'
    return (
        Alert("ZmixNodeDown", f"up{job} == 0", "1m", "critical",
              "Prometheus could not scrape the node for a minute: it is down, or its metrics "
              "port is unreachable"),
        Alert("ZmixLoopLoss", f"{_loss_ratio('[5m]', job)} > 0.1", "5m", "warning",
              "more than a tenth of the node's own mix loops did not come back over 5 minutes: "
              "a node or link on their routes loses packets (the dashboard's loop loss by route "
              "and zmix-status tell which)"),
        Alert("ZmixLinksDown", f"{metric('links_down')}{job} > 0", "2m", "warning",
              "an outbound link of the node has had no connection for 2 minutes: its next hop "
              "is down or unreachable"),
        Alert("ZmixNetworkDocumentExpired", f"{metric('document_valid_seconds')}{job} < 0", "1m",
              "critical", "the network document the node uses expired and no newer one came "
              "from the authorities: its mix loops stop once the document has no key for the "
              "epoch (loops_unbuilt)"),
        Alert("ZmixInternalErrors", f"increase({metric('internal_errors')}{job}[10m]) > 0", "0s",
              "warning", "the node loop caught an unexpected error (a bug in zmix: the "
              "traceback is in the node's node.log)"),
    )


def rules() -> dict[str, Any]:
    """Return the Prometheus rules file: one group holding :func:`alerts`."""
    return {"groups": [{"name": JOB, "rules": [
        {"alert": a.name, "expr": a.expr, "for": a.duration,
         "labels": {"severity": a.severity},
         "annotations": {"summary": f"{{{{ $labels.node }}}}: {a.meaning}"}}
        for a in alerts()]}]}


# ==================================================================== the Grafana side


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL expression of a panel and the legend of its series (Grafana's
    ``{{label}}`` placeholders)."""

    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    """One figure of the dashboard.

    ``summary`` is set when the expressions are many of one shape (one per drop reason): it is
    the expression docs/monitoring.md shows, with ``REASON`` standing for each."""

    title: str
    queries: tuple[Query, ...]
    meaning: str
    unit: str = "short"  # Grafana's unit id
    stacked: bool = False
    summary: str | None = None

    def documented(self) -> tuple[str, ...]:
        """Return the expressions as docs/monitoring.md writes them."""
        if self.summary is not None:
            return (self.summary,)
        return tuple(q.expr for q in self.queries)


def _rate(name: str) -> str:
    return f"rate({metric(name)}{SELECTOR}{RATE})"


def _gauge(name: str) -> str:
    return f"{metric(name)}{SELECTOR}"


def _one(title: str, expr: str, meaning: str, unit: str = "short",
         legend: str = "{{node}}") -> Panel:
    return Panel(title, (Query(expr, legend),), meaning, unit)


def _drops_panel() -> Panel:
    queries = tuple(Query(f"sum(rate({metric(DROP_PREFIX + reason)}{SELECTOR}{RATE}))", reason)
                    for reason in drop_reasons())
    summary = f"sum(rate(zmix_{DROP_PREFIX}REASON_total{SELECTOR}{RATE}))"  # docs only
    return Panel("Drops by reason", queries,
                 "packets dropped per second over the chosen nodes, one colour per reason "
                 "(REASON is each dropped_ statistic of docs/operations.md but dropped_total): "
                 "replay or bad_mac mean bad or replayed traffic, queue_full an overloaded node, "
                 "unknown_next_hop a topology mismatch", "pps", stacked=True, summary=summary)


def _loop_panels() -> tuple[Panel, ...]:
    route_lost, route_returned = _gauge("loop_route_lost"), _gauge("loop_route_returned")
    return (
        Panel("Mix loops", (Query(_rate("loops_sent"), "{{node}} sent"),
                            Query(_rate("loops_returned"), "{{node}} returned"),
                            Query(_rate("loops_lost"), "{{node}} lost")),
              "the node's own mix loops sent, returned and declared lost per second: returned "
              "follows sent a few seconds later on a healthy network", "pps"),
        _one("Loop loss ratio", _loss_ratio(RATE, SELECTOR),
             "the share of the node's own mix loops that did not come back by their deadline: "
             "near 0 on a healthy network; when it rises on many nodes at once, one node or "
             "link on their routes is losing packets", "percentunit"),
        _one("Loops in flight", _gauge("loops_in_flight"),
             "the node's own mix loops sent and not yet back or lost: grows when loops stop "
             "coming back"),
        _one("Loop loss by route", f"{route_lost} / ({route_returned} + {route_lost})",
             "per route a node's loops took (sender > hops > sender), the share lost over the "
             f"last {LOOP_WINDOW:.0f} s: the routes that lose loops share the node or link at "
             "fault",
             "percentunit", "{{route}}"),
        _one("Loop round trip", _gauge("loop_rtt_us_median"),
             "median round trip of the node's own mix loops (the last 1,000) in microseconds: "
             "the latency a packet sees through the network, Loopix delays included", "µs"),
        _one("Loop time per hop", _gauge("loop_per_hop_us_median"),
             "the same round trip divided by the loop's hops: about loopix.mean_delay plus "
             "transit on a healthy network; far above it, a node holds packets too long", "µs"),
    )


def _node_panels() -> tuple[Panel, ...]:
    cpu = f"{_rate('cpu_seconds_node')} + {_rate('cpu_seconds_workers')}"
    return (
        _one("Nodes up", f'up{{job="{JOB}",network="$network",node=~"$node"}}',
             "1 while Prometheus scrapes the node, 0 when it does not answer (stopped, crashed, "
             "or its metrics port unreachable)"),
        _one("Packets in", _rate("received"),
             "packets received per second", "pps"),
        _one("Packets out", _rate("sent"),
             "packets sent on outbound links per second (forwarded packets, acknowledgements, "
             "loops, relays)", "pps"),
        _one("Forwarded", _rate("forwarded"),
             "packets scheduled to a next hop per second: the node's share of the mixing",
             "pps"),
        _drops_panel(),
        _one("Drops by node", _rate("dropped_total"),
             "packets dropped per second by each node, every reason together", "pps"),
        _one("Delay queue", _gauge("queue_depth"),
             "packets waiting out their Loopix delay now: about the packet rate times "
             "loopix.mean_delay; growing without bound, the node falls behind"),
        _one("Workers", _gauge("workers"),
             "Sphinx worker processes running: below the configured count, workers are dying "
             "(see worker_restarts and node.log)"),
        _one("Worker utilisation", _gauge("worker_utilisation"),
             "the workers' CPU share: near 1, the node is CPU-bound and needs more workers or "
             "cores", "percentunit"),
        _one("CPU", cpu, "CPU seconds per second used by the node process and its workers "
             "together (1 is one core)"),
    )


def _provider_and_link_panels() -> tuple[Panel, ...]:
    return (
        _one("Mailbox items", _gauge("mailbox_items"),
             "messages and SURB replies the provider holds for its clients until they fetch "
             "and acknowledge them: grows while clients stay offline (providers only)"),
        _one("Clients online", _gauge("clients_online"),
             "the provider's clients heard from recently (providers only)"),
        _one("Link packets per peer", _rate("link_packets_sent"),
             "packets sent per second on each outbound link, by next hop: a link that "
             "falls to 0 while its neighbours carry traffic is the one to look at", "pps",
             "{{node}} > {{peer}}"),
        _one("Links down", _gauge("links_down"),
             "outbound links with no connection now: above 0 for long, a next hop is down or "
             "unreachable"),
        _one("Link disconnects", _rate("link_disconnects"),
             "outbound connections lost per second (each is re-dialled at once; frames in "
             "flight may be lost with it)"),
        _one("Peers alive", _gauge("peers_alive"),
             "peers heard from in the last 5 s: falls when neighbours go down"),
        _one("Network document validity", _gauge("document_valid_seconds"),
             "seconds until the network document the node uses expires: negative once it has "
             "(no newer document came from the authorities)", "s"),
        _one("Internal errors", _rate("internal_errors"),
             "unexpected errors the node loop caught and survived per second: above 0 is a bug "
             "in zmix (the traceback is in node.log)"),
    )


def panels() -> tuple[Panel, ...]:
    """Return the panels of the dashboard, in the order they are laid out."""
    return (*_node_panels(), *_loop_panels(), *_provider_and_link_panels())


PANEL_WIDTH, PANEL_HEIGHT = 12, 8  # Grafana's grid is 24 columns wide: two panels a row


def _ref_id(index: int) -> str:
    """Return Grafana's query id of the query at ``index``: A..Z, then AA, AB..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel_json(panel: Panel, index: int) -> dict[str, Any]:
    """Return the Grafana time-series panel of ``panel``, placed at ``index`` on the grid."""
    per_row = 24 // PANEL_WIDTH
    custom = {"fillOpacity": 40 if panel.stacked else 10, "lineWidth": 1,
              "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"}}
    return {
        "id": index + 1, "type": "timeseries", "title": panel.title,
        "description": panel.meaning, "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": PANEL_WIDTH * (index % per_row),
                    "y": PANEL_HEIGHT * (index // per_row)},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": _ref_id(i), "datasource": DATASOURCE, "expr": q.expr,
                     "legendFormat": q.legend, "range": True}
                    for i, q in enumerate(panel.queries)],
    }


def _variables(topology: Topology) -> list[dict[str, Any]]:
    """Return the dashboard's variables: the Prometheus data source, the network (the
    topology's by default) and the nodes (all by default)."""
    up = f'up{{job="{JOB}"}}'
    nodes = f'label_values(up{{job="{JOB}",network="$network"}}, node)'
    networks = f"label_values({up}, network)"
    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus", "hide": 0},
        {"name": "network", "label": "Network", "type": "query", "datasource": DATASOURCE,
         "query": networks, "refresh": 1, "hide": 0,
         "current": {"text": topology.network, "value": topology.network}},
        {"name": "node", "label": "Node", "type": "query", "datasource": DATASOURCE,
         "query": nodes, "refresh": 2, "hide": 0, "multi": True,
         "includeAll": True, "allValue": ".*", "sort": 1,
         "current": {"text": ["All"], "value": ["$__all"]}},
    ]


def dashboard_uid(network: str) -> str:
    """Return the dashboard's uid: ``zmix-NETWORK`` made of the characters Grafana allows, at
    most 40 of them."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"zmix-{network}")[:40]


def dashboard(topology: Topology) -> dict[str, Any]:
    """Return the Grafana dashboard of the topology (the JSON model Grafana imports): the
    variables of :func:`_variables` and one panel per entry of :func:`panels`."""
    return {
        "uid": dashboard_uid(topology.network), "title": f"zmix network {topology.network}",
        "description": f"zmix nodes of {topology.network} (zmix-up --export-monitoring)",
        "tags": ["zmix"], "timezone": "browser", "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": _variables(topology)},
        "panels": [panel_json(p, i) for i, p in enumerate(panels())],
    }


def files(topology: Topology) -> dict[str, str]:
    """Return the files ``--export-monitoring`` writes, by name: the Prometheus configuration,
    its rules and the Grafana dashboard."""
    return {
        PROMETHEUS_FILE: prometheus_yaml(topology),
        RULES_FILE: yaml.safe_dump(rules(), sort_keys=False, allow_unicode=True),
        DASHBOARD_FILE: json.dumps(dashboard(topology), indent=2, ensure_ascii=False) + "\n",
    }


# ==================================================================== docs/monitoring.md


def doc_line(panel: Panel) -> str:
    """Return the panel's line in docs/monitoring.md: title, PromQL, meaning."""
    exprs = "; ".join(f"`{e}`" for e in panel.documented())
    return f"- **{panel.title}**: {exprs} — {panel.meaning}"


def alert_line(alert: Alert) -> str:
    """Return the alert's line in docs/monitoring.md: name, condition, duration, meaning."""
    held = "" if alert.duration == "0s" else f", for {alert.duration}"
    return f"- **{alert.name}** ({alert.severity}{held}): `{alert.expr}` — {alert.meaning}"


if __name__ == "__main__":
    print("\n".join(doc_line(p) for p in panels()))
    print()
    print("\n".join(alert_line(a) for a in alerts()))
