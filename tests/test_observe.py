"""zmix.observe: the network's report from hand-made samples, and the pages nodes answer with.

The report is pure on samples, so these tests build samples by hand; tests/test_status.py runs a
real network under zmix-status.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from zmix import looploss, observe
from zmix.observe import MetricsError, Reading, Sample, Source, State
from zmix.runtime import metrics
from zmix.stats_schema import STATISTICS
from zmix.topology import Topology
from zmix.topology_yaml import parse_topology

UP, DOWN, UNKNOWN = State.UP, State.DOWN, State.UNKNOWN


def topology(metrics_ports: Mapping[str, int] | None = None) -> Topology:
    """Two providers, layers (mix-a1, mix-a2) and (mix-b1, mix-b2)."""
    ports = iter(range(7000, 7100))
    extra = metrics_ports or {}

    def node(name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "port": next(ports)}
        if name in extra:
            entry["metrics_port"] = extra[name]
        return entry

    return parse_topology({
        "network": "zmix-observe", "defaults": {"host": "127.0.0.1"},
        "layers": [[node("mix-a1"), node("mix-a2")], [node("mix-b1"), node("mix-b2")]],
        "providers": [node("provider-1"), node("provider-2")],
        "authorities": [{"name": "authority-1", "port": 7999}],
    }, "observe.yaml")


NET = topology()
NAMES = [n.name for n in NET.nodes()]


def up(name: str, source: Source = Source.CONTROL, labelled: Mapping[str, Any] | None = None,
       **stats: float) -> Reading:
    values = {"pid": 100.0, "uptime_seconds": 50.0, "received": 0.0, "sent": 0.0, **stats}
    return Reading(name, UP, source, None, values, dict(labelled or {}))


def sample(time: float, readings: list[Reading],
           client_loops: Mapping[tuple[str, ...], tuple[int, int]] | None = None) -> Sample:
    nodes = {r.name: r for r in readings}
    for name in NAMES:
        nodes.setdefault(name, up(name))
    return Sample(time, nodes, dict(client_loops or {}))


def entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in report["nodes"] if n["name"] == name)


# ---------------------------------------------------------------------- rates


def test_packet_rates_are_the_counters_difference_over_the_time_between_the_samples() -> None:
    before = sample(1000.0, [up("mix-a1", received=100, sent=90)])
    after = sample(1002.0, [up("mix-a1", received=300, sent=130, uptime_seconds=52)])
    report = observe.report(NET, before, after)
    assert report["interval"] == 2.0
    assert entry(report, "mix-a1")["packets_in_per_s"] == 100.0
    assert entry(report, "mix-a1")["packets_out_per_s"] == 20.0
    assert entry(report, "mix-a2")["packets_in_per_s"] == 0.0  # a positive control of "no rate"


def test_one_sample_alone_gives_no_rates_and_no_interval() -> None:
    report = observe.report(NET, None, sample(1000.0, [up("mix-a1", received=5)]))
    assert report["interval"] is None
    assert all(n["packets_in_per_s"] is None and n["packets_out_per_s"] is None
               for n in report["nodes"])


def test_a_node_that_restarted_between_the_samples_has_no_rate_that_round() -> None:
    before = sample(1000.0, [up("mix-a1", received=500, sent=10),
                             up("mix-a2", received=500, sent=10)])
    after = sample(1001.0, [
        up("mix-a1", received=600, sent=20, pid=101, uptime_seconds=1),  # a new process
        up("mix-a2", received=20, sent=30),  # same pid, but a counter went down
    ])
    report = observe.report(NET, before, after)
    assert entry(report, "mix-a1")["packets_in_per_s"] is None
    assert entry(report, "mix-a1")["packets_out_per_s"] is None
    assert entry(report, "mix-a2")["packets_in_per_s"] is None
    assert entry(report, "mix-a2")["packets_out_per_s"] == 20.0  # this counter did grow


def test_a_node_down_in_the_previous_sample_has_no_rate_and_one_down_now_has_no_figures(
        ) -> None:
    before = sample(1000.0, [Reading("mix-a1", DOWN, error="no answer"), up("mix-b1")])
    after = sample(1001.0, [up("mix-a1", received=10),
                            Reading("mix-b1", DOWN, error="no answer")])
    report = observe.report(NET, before, after)
    assert entry(report, "mix-a1")["packets_in_per_s"] is None
    b1 = entry(report, "mix-b1")
    assert (b1["up"], b1["state"], b1["source"], b1["error"]) == (False, "down", None,
                                                                  "no answer")
    assert b1["age"] is None and b1["queue"] is None and b1["stats"] == {}
    assert report["down"] == ["mix-b1"]


# ---------------------------------------------------------------------- node figures


def test_a_node_entry_carries_its_figures_and_drops_by_reason_without_the_prefix() -> None:
    stats = {s.name: 0.0 for s in STATISTICS}
    stats.update(dropped_replay=3, dropped_bad_mac=1, dropped_total=4, queue_depth=7,
                 workers=2, loops_sent=9, loops_returned=8, loops_lost=1, mailbox_items=5,
                 clients_online=2, uptime_seconds=61.5)
    report = observe.report(NET, None, sample(1.0, [up("provider-1", Source.METRICS, **stats),
                                                   up("mix-a1", **stats)]))
    p1 = entry(report, "provider-1")
    assert (p1["role"], p1["layer"], p1["address"]) == ("provider", None,
                                                        NET.node("provider-1").endpoint[6:])
    assert (p1["up"], p1["state"], p1["source"], p1["error"]) == (True, "up", "metrics", None)
    wanted_drops = {s.name[len("dropped_"):] for s in STATISTICS
                    if s.name.startswith("dropped_") and s.name != "dropped_total"}
    assert set(p1["drops"]) == wanted_drops
    assert p1["drops"]["replay"] == 3 and p1["drops"]["bad_mac"] == 1
    assert p1["dropped_total"] == 4 and p1["queue"] == 7 and p1["workers"] == 2
    assert (p1["loops_sent"], p1["loops_returned"], p1["loops_lost"]) == (9, 8, 1)
    assert (p1["mailbox_items"], p1["clients_online"], p1["age"]) == (5, 2, 61.5)
    assert p1["stats"]["dropped_replay"] == 3
    a1 = entry(report, "mix-a1")  # a mixnode has no mailbox, whatever it reports
    assert (a1["role"], a1["layer"], a1["mailbox_items"], a1["clients_online"]) == (
        "mixnode", 0, None, None)


def test_a_node_that_cannot_be_read_from_here_is_unknown_not_down() -> None:
    unknown = Reading("mix-a2", UNKNOWN, error="no metrics_port, and not run from this state "
                      "folder")
    report = observe.report(NET, None, sample(1.0, [unknown, Reading("mix-b2", DOWN,
                                                                       error="x")]))
    assert entry(report, "mix-a2")["up"] is False
    assert entry(report, "mix-a2")["state"] == "unknown"
    assert report["unknown"] == ["mix-a2"]
    assert report["down"] == ["mix-b2"]


def test_the_report_is_plain_json_with_the_documented_fields() -> None:
    report = observe.report(NET, sample(0.0, []), sample(1.0, []))
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert set(report) == {"network", "time", "interval", "window", "nodes", "links", "loops",
                           "down", "unknown"}
    assert report["network"] == "zmix-observe" and report["window"] == 120
    assert [n["name"] for n in report["nodes"]] == NAMES
    assert set(report["nodes"][0]) == {
        "name", "role", "layer", "address", "up", "state", "source", "error", "age",
        "packets_in_per_s", "packets_out_per_s", "drops", "dropped_total", "queue", "workers",
        "loops_sent", "loops_returned", "loops_lost", "mailbox_items", "clients_online",
        "loop_loss", "loop_samples", "stats"}


# ---------------------------------------------------------------------- links


def test_the_links_are_every_link_of_the_stratified_topology_in_order() -> None:
    report = observe.report(NET, None, sample(1.0, []))
    assert [(link["from"], link["to"]) for link in report["links"]] == [
        ("provider-1", "mix-a1"), ("provider-1", "mix-a2"),
        ("provider-2", "mix-a1"), ("provider-2", "mix-a2"),
        ("mix-a1", "mix-b1"), ("mix-a1", "mix-b2"), ("mix-a2", "mix-b1"), ("mix-a2", "mix-b2"),
        ("mix-b1", "provider-1"), ("mix-b1", "provider-2"),
        ("mix-b2", "provider-1"), ("mix-b2", "provider-2")]
    assert all(link["packets_per_s"] is None and link["loop_loss"] is None
               and link["loop_samples"] == 0 for link in report["links"])


def test_a_links_rate_is_its_senders_link_packets_sent_and_other_links_seen_are_added() -> None:
    def reading(a1_to_b1: float, time_sent: float) -> Reading:
        return up("mix-a1", labelled={"link_packets_sent": {"mix-b1": a1_to_b1,
                                                            "provider-1": time_sent}})
    report = observe.report(NET, sample(10.0, [reading(40, 0)]),
                            sample(14.0, [reading(60, 8)]))
    links = {(link["from"], link["to"]): link for link in report["links"]}
    assert links["mix-a1", "mix-b1"]["packets_per_s"] == 5.0
    assert links["mix-a1", "mix-b2"]["packets_per_s"] is None  # not counted on that link
    # Not a link of the stratified topology, but mix-a1 sent on it: listed after them.
    assert report["links"][-1]["from"] == "mix-a1" and report["links"][-1]["to"] == "provider-1"
    assert links["mix-a1", "provider-1"]["packets_per_s"] == 2.0


# ---------------------------------------------------------------------- loop loss

ROUTE_B1 = ("mix-a1", "mix-b1", "provider-1", "mix-a1")  # through mix-b1
ROUTE_B2 = ("mix-a1", "mix-b2", "provider-1", "mix-a1")  # the same, through mix-b2


def loops(counts: Mapping[tuple[str, ...], tuple[int, int]]) -> dict[str, dict[str, float]]:
    """Return a node's labelled loop statistics for ``counts`` (route -> returned, lost)."""
    return {"loop_route_returned": {looploss.route_label(r): c[0] for r, c in counts.items()},
            "loop_route_lost": {looploss.route_label(r): c[1] for r, c in counts.items()}}


def test_the_loop_loss_of_nodes_and_links_is_the_fit_of_every_nodes_and_clients_loops() -> None:
    client_route = ("alice", "provider-1", "mix-a2", "mix-b2", "provider-2", "alice")
    a1 = {ROUTE_B1: (3, 7), ROUTE_B2: (10, 0)}
    b2 = {("mix-b2", "provider-2", "mix-a2", "mix-b2"): (6, 1)}
    current = sample(1.0, [up("mix-a1", labelled=loops(a1)), up("mix-b2", labelled=loops(b2))],
                     client_loops={client_route: (4, 0)})
    report = observe.report(NET, None, current)
    fit = looploss.fit(looploss.merge(a1, b2, {client_route: (4, 0)}))
    for name in NAMES:
        segment = fit.nodes.get(name)
        assert entry(report, name)["loop_loss"] == (segment.loss if segment else None), name
        assert entry(report, name)["loop_samples"] == (segment.loops if segment else 0), name
    links = {(link["from"], link["to"]): link for link in report["links"]}
    assert links["mix-a1", "mix-b1"]["loop_loss"] == fit.links["mix-a1", "mix-b1"].loss
    assert links["mix-a1", "mix-b1"]["loop_samples"] == 10
    assert links["alice", "provider-1"]["loop_samples"] == 4  # a client's link, also shown
    assert report["loops"] == {"returned": 3 + 10 + 6 + 4, "lost": 7 + 1}


def test_a_node_that_loses_every_loop_shows_loss_near_one_and_the_others_near_zero() -> None:
    routes = {ROUTE_B1: (0, 20), ROUTE_B2: (20, 0),
              ("mix-a2", "mix-b1", "provider-2", "mix-a2"): (0, 20),
              ("mix-a2", "mix-b2", "provider-2", "mix-a2"): (20, 0)}
    report = observe.report(NET, None, sample(1.0, [up("mix-a1", labelled=loops(routes))]))
    assert entry(report, "mix-b1")["loop_loss"] > 0.9
    for name in ("mix-b2", "provider-1", "provider-2"):  # the loops' other interior nodes
        assert entry(report, name)["loop_loss"] < 0.1, name
    # The senders are no segment of their own loops (only the interior names are).
    assert entry(report, "mix-a1")["loop_loss"] is None


def test_routes_that_do_not_parse_are_left_out_of_the_fit() -> None:
    labelled = loops({ROUTE_B1: (5, 0)})
    labelled["loop_route_lost"]["mix-a1>>mix-a1"] = 9
    report = observe.report(NET, None, sample(1.0, [up("mix-a1", labelled=labelled)]))
    assert report["loops"] == {"returned": 5, "lost": 0}


# ---------------------------------------------------------------------- what nodes answer


class Labelled:
    """A collector of the node's labelled statistics, as the contract exports them."""

    def __init__(self, node: str) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        returned = GaugeMetricFamily("zmix_loop_route_returned", "loops back",
                                     labels=["node", "route"])
        returned.add_metric([self.node, "mix-a1>mix-b1>provider-1>mix-a1"], 4)
        sent = CounterMetricFamily("zmix_link_packets_sent", "sent", labels=["node", "peer"])
        sent.add_metric([self.node, "mix-b1"], 17)
        sent.add_metric([self.node, "mix-b2"], 3)
        yield returned
        yield sent


def page(node: str, values: dict[str, float]) -> str:
    snapshot = metrics.Snapshot(node)
    snapshot.update(values)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.Collector(snapshot))
    registry.register(Labelled(node))
    return generate_latest(registry).decode()


def test_a_prometheus_page_gives_back_the_statistics_under_their_own_names() -> None:
    values = {s.name: float(index) for index, s in enumerate(STATISTICS)}
    flat, labelled = observe.parse_metrics(page("mix-a1", values), "mix-a1")
    assert flat == values  # dropped_total included: zmix_dropped_total, not doubled
    assert labelled == {"loop_route_returned": {"mix-a1>mix-b1>provider-1>mix-a1": 4.0},
                        "link_packets_sent": {"mix-b1": 17.0, "mix-b2": 3.0}}


def test_a_page_of_another_node_or_of_garbage_is_refused() -> None:
    with pytest.raises(MetricsError,
                       match=r"no zmix sample of node mix-a2 \(it has samples of mix-a1\)"):
        observe.parse_metrics(page("mix-a1", {"received": 1.0}), "mix-a2")
    with pytest.raises(MetricsError):
        observe.parse_metrics("zmix_received_total{node=\"mix-a1\" 1\n", "mix-a1")
    assert observe.parse_metrics(page("mix-a1", {"received": 1.0}), "mix-a1")[0] == {
        "received": 1.0}


@given(st.text(max_size=300))
def test_any_page_gives_statistics_or_a_metrics_error(text: str) -> None:
    try:
        flat, labelled = observe.parse_metrics(text, "n")
    except MetricsError:
        return
    assert all(isinstance(v, float) for v in flat.values())
    assert all(isinstance(v, float) for d in labelled.values() for v in d.values())


@given(st.text(max_size=200))
def test_any_stats_answer_gives_statistics_or_a_metrics_error(text: str) -> None:
    with contextlib.suppress(MetricsError):
        assert all(isinstance(v, float) for v in observe.parse_stats(text).values())
    assert isinstance(observe.parse_labelled(text), dict)


def test_a_labelled_answer_that_is_an_error_or_missing_gives_no_labelled_statistics() -> None:
    assert observe.parse_labelled('{"error": "unknown request; use ping or stats"}') == {}
    assert observe.parse_labelled(None) == {}
    assert observe.parse_labelled('{"link_packets_sent": {"mix-b1": 4, "x": "no"}}') == {
        "link_packets_sent": {"mix-b1": 4.0}}
    assert observe.parse_stats('{"received": 3, "name": "x", "flag": true}') == {
        "received": 3.0}


def test_a_client_daemons_loop_routes_are_read_in_either_form_and_bad_entries_left_out(
        ) -> None:
    good = "alice>provider-1>mix-a1>provider-1>alice"
    assert observe.parse_client_loops({good: [3, 1]}) == {tuple(good.split(">")): (3, 1)}
    assert observe.parse_client_loops({good: {"returned": 2, "lost": 0}}) == {
        tuple(good.split(">")): (2, 0)}
    assert observe.parse_client_loops({good: [1], "a>b": [1, 1], good + ">": [1, 1]}) == {}
    assert observe.parse_client_loops(None) == {}
    assert observe.parse_client_loops({tuple(good.split(">")): (1, 2)}) == {
        tuple(good.split(">")): (1, 2)}


# ---------------------------------------------------------------------- where nodes are read


def test_a_node_with_no_private_key_here_and_no_metrics_port_is_unknown(tmp_path: Path) -> None:
    net = topology({"mix-a1": 1})  # port 1: nothing serves there
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "mix-b1.json").write_text("{}")  # local, not running
    sample = observe.collect(net, tmp_path, timeout=0.5)
    assert sample.nodes["mix-a2"].state is UNKNOWN
    assert sample.nodes["mix-a2"].error == "no metrics_port, and not run from this state folder"
    assert sample.nodes["mix-b1"].state is DOWN
    assert "control socket" in (sample.nodes["mix-b1"].error or "")
    assert sample.nodes["mix-a1"].state is DOWN
    assert "http://127.0.0.1:1/metrics" in (sample.nodes["mix-a1"].error or "")
    assert observe.observable(net, tmp_path) == ["mix-a1", "mix-b1"]


# ---------------------------------------------------------------------- the docs


def documented_fields(table_after: str) -> set[str]:
    """Return the field names of the first table after the line ``table_after`` in
    docs/monitoring.md's zmix-status section (a cell may name several: `a`, `b`)."""
    doc = (Path(__file__).parent.parent / "docs" / "monitoring.md").read_text()
    section = doc.split("## zmix-status", 1)[1].split("\n## ", 1)[0]
    rest = section.split(table_after, 1)[1]
    table = rest[rest.index("| field |"):].split("\n\n", 1)[0]
    cells = [line.split("|")[1] for line in table.splitlines()[2:]]
    return {name.strip().strip("`") for cell in cells for name in cell.split(",")}


def test_the_monitoring_doc_lists_exactly_the_reports_fields() -> None:
    current = sample(1.0, [up("mix-a1", labelled=loops({ROUTE_B1: (1, 0)}))])
    report = observe.report(NET, None, current)
    assert documented_fields("**The JSON report**") == set(report)
    assert documented_fields("Each entry of `nodes`:") == set(report["nodes"][0])
    assert documented_fields("Each entry of `links`") == set(report["links"][0])


def test_thirty_silent_nodes_are_read_at_once_in_about_one_timeout(tmp_path: Path) -> None:
    names = [f"mix-{i}" for i in range(30)]
    net = parse_topology({
        "network": "zmix-wide", "defaults": {"host": "127.0.0.1"},
        "layers": [[{"name": n, "port": 8000 + i} for i, n in enumerate(names)]],
        "providers": [{"name": "provider-1", "port": 7999}],
        "authorities": [{"name": "authority-1", "port": 7998}]}, "wide.yaml")
    (tmp_path / "private").mkdir()
    for name in names:  # local, with a control endpoint nobody answers on: each read times out
        (tmp_path / "private" / f"{name}.json").write_text("{}")
        metrics.control_path(tmp_path, name).parent.mkdir(parents=True)
        metrics.control_path(tmp_path, name).write_text(f"ipc://{tmp_path}/{name}.ipc")
    started = time.monotonic()
    sample = observe.collect(net, tmp_path, timeout=0.5)
    took = time.monotonic() - started
    assert all(sample.nodes[name].state is DOWN for name in names)
    assert sample.nodes["provider-1"].state is UNKNOWN
    assert 0.5 <= took < 3.0, f"30 reads of 0.5 s took {took:.1f} s: not read at once"
