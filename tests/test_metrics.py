"""A node's statistics: one schema (zmix.stats_schema) for the node, Prometheus and the docs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from zmix import wire
from zmix.bench.common import (
    authorities_running,
    fetch_network,
    free_ports,
    hops_at,
    make_network,
    start_authorities,
)
from zmix.envelope import Envelope, encode_envelope
from zmix.keys import load_directory, load_private
from zmix.network import Network
from zmix.runtime import links, metrics
from zmix.runtime.launcher import Launcher
from zmix.sphinx import answer_surb, create_forward_packet, create_surb
from zmix.stats_schema import (
    BY_NAME,
    LABELLED_BY_NAME,
    LABELLED_STATISTICS,
    LABELLED_TABLE_HEADER,
    STATISTICS,
    TABLE_HEADER,
    Kind,
    Reported,
    expected_names,
    labelled_markdown_table,
    table_row,
)
from zmix.topology import Topology

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
NODES = ("mix-a", "provider-1")


Sample = tuple[str, str, dict[str, str], float]


def parse(text: str) -> dict[str, Sample]:
    """Return, per sample name of a Prometheus text page, (type, HELP, labels, value); the
    samples of labelled statistics (a label besides ``node``) are left out: see
    :func:`parse_labelled`."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if set(sample.labels) != {"node"}:
                continue
            assert sample.name not in samples, f"{sample.name} is exported twice"
            samples[sample.name] = (family.type, family.documentation, sample.labels,
                                    sample.value)
    return samples


def parse_labelled(text: str) -> dict[tuple[str, str], Sample]:
    """Return, per (sample name, value of its second label), the samples of labelled
    statistics."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if set(sample.labels) == {"node"}:
                continue
            [label] = set(sample.labels) - {"node"}
            key = (sample.name, sample.labels[label])
            assert key not in samples, f"{key} is exported twice"
            samples[key] = (family.type, family.documentation, sample.labels, sample.value)
    return samples


def check_labelled_export(samples: dict[tuple[str, str], Sample],
                          labelled: dict[str, dict[str, float]], node: str) -> None:
    """Assert that ``samples`` are the labelled statistics ``labelled``, each typed, described
    and labelled as zmix.stats_schema's LABELLED_STATISTICS say."""
    wanted = {(LABELLED_BY_NAME[name].prometheus_name, label): (name, label, value)
              for name, by_label in labelled.items() for label, value in by_label.items()}
    assert set(samples) == set(wanted), (
        f"exported, not in the snapshot: {sorted(set(samples) - set(wanted))}; in the "
        f"snapshot, not exported: {sorted(set(wanted) - set(samples))}")
    for key, (kind, doc, labels, value) in samples.items():
        name, label, expected = wanted[key]
        statistic = LABELLED_BY_NAME[name]
        assert kind == statistic.kind.value and doc == statistic.help, key
        assert labels == {"node": node, statistic.label: label}, key
        assert value == expected, key


def check_export(samples: dict[str, Sample], values: dict[str, float], node: str) -> None:
    """Assert that ``samples`` are ``values``, each typed and described as the schema says."""
    wanted = {BY_NAME[key].prometheus_name: key for key in values}
    assert set(samples) == set(wanted), (
        f"exported but not in the snapshot: {sorted(set(samples) - set(wanted))}; "
        f"in the snapshot but not exported: {sorted(set(wanted) - set(samples))}")
    for sample_name, (kind, doc, labels, value) in samples.items():
        statistic = BY_NAME[wanted[sample_name]]
        assert kind == statistic.kind.value, f"{sample_name} is a {kind}, not a {statistic.kind}"
        assert doc == statistic.help and doc, f"{sample_name} has the HELP {doc!r}"
        assert labels == {"node": node}
        assert value == values[statistic.name], f"{sample_name}: {value} != {values}"


# ---------------------------------------------------------------------- the schema itself


def test_every_statistic_is_declared_once_with_a_kind_a_help_text_and_its_own_prometheus_name(
        ) -> None:
    names = [s.name for s in STATISTICS]
    assert len(names) == len(set(names)), "a statistic is declared twice"
    exported = [s.prometheus_name for s in STATISTICS]
    assert len(exported) == len(set(exported)), "two statistics share a Prometheus name"
    for statistic in STATISTICS:
        assert statistic.help and statistic.help == statistic.help.strip(), statistic.name
        # The help text is both a Prometheus HELP line and a markdown table cell.
        assert not set(statistic.help) & set("|`\n\\"), statistic.name
    assert BY_NAME["replay_tags"].kind is Kind.GAUGE  # levels, not running totals
    assert BY_NAME["dropped_mailbox_full"].kind is Kind.COUNTER


def test_every_labelled_statistic_is_declared_once_with_a_label_and_a_name_of_its_own() -> None:
    names = [s.name for s in LABELLED_STATISTICS]
    assert len(names) == len(set(names)) and not set(names) & set(BY_NAME)
    exported = {s.prometheus_name for s in LABELLED_STATISTICS}
    assert not exported & {s.prometheus_name for s in STATISTICS}
    for statistic in LABELLED_STATISTICS:
        assert statistic.label not in ("node", "") and statistic.label.isidentifier()
        assert statistic.help and not set(statistic.help) & set("|`\n\\"), statistic.name
    assert LABELLED_BY_NAME["link_packets_sent"].prometheus_name == (
        "zmix_link_packets_sent_total")
    assert LABELLED_BY_NAME["loop_route_lost"].prometheus_name == "zmix_loop_route_lost"


def test_the_operations_doc_lists_every_labelled_statistic_as_the_schema_says() -> None:
    text = DOCS.read_text()
    assert LABELLED_TABLE_HEADER[0] in text
    start = text.index(LABELLED_TABLE_HEADER[0])
    table = labelled_markdown_table()
    assert text[start:start + len(table)] == table, (
        "docs/operations.md's labelled statistics differ from zmix/stats_schema.py "
        "(python -m zmix.stats_schema labelled prints the table)")


def test_counters_are_exported_with_total_suffix_once() -> None:
    assert BY_NAME["sent"].prometheus_name == "zmix_sent_total"
    assert BY_NAME["dropped_total"].prometheus_name == "zmix_dropped_total"
    assert BY_NAME["queue_depth"].prometheus_name == "zmix_queue_depth"


def test_the_operations_doc_lists_every_statistic_with_the_schemas_kind_and_meaning() -> None:
    lines = DOCS.read_text().splitlines()
    assert TABLE_HEADER[0] in lines, f"docs/operations.md has no table {TABLE_HEADER[0]}"
    start = lines.index(TABLE_HEADER[0])
    assert lines[start + 1] == TABLE_HEADER[1]
    rows: dict[str, str] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        name = line.split("|")[1].strip().strip("`")
        assert name not in rows, f"docs/operations.md lists {name} twice"
        rows[name] = line
    missing = sorted(set(BY_NAME) - set(rows))
    extra = sorted(set(rows) - set(BY_NAME))
    assert not missing and not extra, (
        f"docs/operations.md's statistics table lacks {missing} and has {extra}, which "
        "zmix/stats_schema.py does not declare (python -m zmix.stats_schema prints the table)")
    for name, line in rows.items():
        assert line == table_row(BY_NAME[name]), (
            f"docs/operations.md's row of {name} differs from zmix/stats_schema.py:\n{line}\n"
            f"{table_row(BY_NAME[name])}")


# ---------------------------------------------------------------------- the exporter alone


def test_the_prometheus_export_types_and_describes_each_statistic_as_the_schema_says() -> None:
    snapshot = metrics.Snapshot("mix-x")
    values = {s.name: float(index) + 0.5 for index, s in enumerate(STATISTICS)}
    labelled = {s.name: {f"{s.label}-{i}": float(i) for i in range(3)}
                for s in LABELLED_STATISTICS}
    labelled["loop_route_lost"]["mix-x>mix-y>provider-1>mix-x"] = 2.0  # a route as a label
    snapshot.update(values, labelled)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.Collector(snapshot))
    page = generate_latest(registry).decode()
    check_export(parse(page), values, "mix-x")
    check_labelled_export(parse_labelled(page), labelled, "mix-x")


def test_a_statistic_missing_from_the_schema_is_exported_untyped_not_as_a_counter() -> None:
    snapshot = metrics.Snapshot("mix-x")
    snapshot.update({"received": 3, "not_declared_anywhere": 7})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.Collector(snapshot))
    samples = parse(generate_latest(registry).decode())
    assert samples["zmix_received_total"][:2] == ("counter", BY_NAME["received"].help)
    assert samples["zmix_not_declared_anywhere"] == (
        "unknown", metrics.UNDECLARED_HELP, {"node": "mix-x"}, 7.0)


# ---------------------------------------------------------------------- running nodes


@dataclass
class Net:
    topology: Topology
    state: Path
    ports: dict[str, int]
    network: Network  # of the authority's document

    def stats(self, name: str) -> dict[str, float]:
        values = metrics.statistics(self.state, name)
        assert values is not None, f"{name} does not answer on its control socket"
        return values

    def wait(self, name: str, done: Callable[[dict[str, float]], bool],
             what: str, timeout: float = 20.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            values = self.stats(name)
            if done(values):
                return values
            assert time.monotonic() < deadline, f"{name}: no {what} in {timeout} s: {values}"
            time.sleep(0.05)

    def prometheus(self, name: str) -> str:
        url = f"http://127.0.0.1:{self.ports[name]}/metrics"
        body: bytes = urllib.request.urlopen(url, timeout=5).read()
        return body.decode()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """mix-a and provider-1 (alice's, with room for one item) as processes, with metrics ports
    and frequent mix loops (so the loop medians are reported soon)."""
    ports = dict(zip(NODES, free_ports(len(NODES)), strict=True))
    topology, state = make_network(
        tmp_path_factory.mktemp("stats"), layers=(("mix-a",),), providers=("provider-1",),
        clients={"alice": "provider-1"}, loopix={"mix_loop_rate": 20.0},
        mailbox={"quota": 1}, node_options={n: {"metrics_port": p} for n, p in ports.items()})
    launcher = Launcher(state, [topology.node(n) for n in NODES])
    with authorities_running(state, topology, allow=NODES):
        try:
            launcher.start()
            yield Net(topology, state, ports, fetch_network(state, topology))
        finally:
            launcher.stop()


def test_a_running_node_reports_exactly_the_statistics_of_the_schema(net: Net) -> None:
    for name in NODES:
        values = net.wait(name, lambda v: "loop_rtt_us_median" in v, "mix loop back")
        wanted = expected_names(provider=name.startswith("provider"), loop_returned=True)
        missing, extra = sorted(wanted - set(values)), sorted(set(values) - wanted)
        assert not missing and not extra, (
            f"{name} reports {extra}, not in zmix/stats_schema.py; the schema has {missing}, "
            f"which {name} does not report")
    assert not any(s.reported is Reported.PROVIDERS for s in STATISTICS
                   if s.name in net.stats("mix-a"))


def test_the_prometheus_page_of_a_running_node_is_its_control_socket_answer(net: Net) -> None:
    for name in NODES:
        net.wait(name, lambda v: v.get("replay_tags", 0) > 0, "replay tags")
        deadline = time.monotonic() + 10
        while True:
            # The snapshot is refreshed four times a second (uptime_seconds always moves): two
            # equal control answers around the page mean the page shows that same snapshot.
            before, labelled = net.stats(name), metrics.labelled_statistics(net.state, name)
            page, after = net.prometheus(name), net.stats(name)
            if before == after:
                break
            assert time.monotonic() < deadline, "the snapshot never held still for one request"
        check_export(parse(page), before, name)
        assert labelled is not None
        check_labelled_export(parse_labelled(page), labelled, name)
        # mix loops went round this two-node network, and each node sent packets to the other
        routes = set(labelled["loop_route_returned"]) | set(labelled["loop_route_lost"])
        assert routes and all(r.split(">")[0] == r.split(">")[-1] == name for r in routes)
        other = next(n for n in NODES if n != name)
        assert labelled["link_packets_sent"].get(other, 0) > 0


def test_deliveries_refused_for_a_full_mailbox_or_a_stranger_count_as_drops_by_reason(
        net: Net) -> None:
    """Plays alice, the provider's client: two messages and a SURB reply for her one slot,
    and a message for someone who is not the provider's client."""
    params, provider = net.topology.sphinx, net.topology.node("provider-1")
    alice = load_private(net.state, "alice")
    public = load_directory(net.state, net.topology)["provider-1"]
    # Built and answered now: the provider processes them in this epoch (or, at a boundary,
    # still with this key in its grace).
    route = hops_at(net.network, ["provider-1"], [0.0])
    packets = [create_forward_packet(params, route, alice.id, encode_envelope(
        params, Envelope(None, b"message %d" % i))) for i in range(2)]
    surb, _ = create_surb(params, route, alice.id, b"\x42" * 16)
    packets.append(answer_surb(params, surb, b"a reply")[1])
    packets.append(create_forward_packet(params, route, b"\x09" * 16, encode_envelope(
        params, Envelope(None, b"for a stranger"))))
    before = net.stats("provider-1")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = links.connect_dealer(ctx, provider.endpoint, public.curve_public, alice.curve_public,
                                alice.curve_private, max_frame=wire.client_frame_limit(params, 8))
    try:
        for packet in packets:
            sock.send(wire.encode_client(wire.Packet(packet), params=params))
        after = net.wait("provider-1", lambda v: v["replies"] + v["delivered"] >= 4 +
                         before["replies"] + before["delivered"], "deliveries")
    finally:
        sock.close()
        ctx.term()
    assert after["provider_messages_stored"] - before["provider_messages_stored"] == 1
    assert after["mailbox_items"] == 1  # the first message took the one slot
    assert after["provider_refused_full"] - before["provider_refused_full"] == 2
    assert after["dropped_mailbox_full"] - before["dropped_mailbox_full"] == 2
    assert after["provider_unexpected_delivery"] - before["provider_unexpected_delivery"] == 1
    assert after["dropped_unexpected_delivery"] - before["dropped_unexpected_delivery"] == 1
    assert after["dropped_total"] - before["dropped_total"] >= 3


def test_a_node_answers_its_first_statistics_request_with_every_statistic(
        tmp_path: Path) -> None:
    # The control endpoint is published before the loop's first turn: a request arriving then
    # was answered with an empty snapshot (a restarted node's statistics without "pid").
    topology, state = make_network(tmp_path, layers=(("mix-a",),), providers=("provider-1",),
                                   loopix={"mix_loop_rate": 0.0})
    control = metrics.control_path(state, "mix-a")
    authorities = start_authorities(state, topology, allow=["mix-a"])
    proc = subprocess.Popen([sys.executable, "-m", "zmix.cli.node", "--state", str(state),
                             "--name", "mix-a"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not control.exists():
            assert proc.poll() is None, f"mix-a exited with status {proc.returncode}"
            assert time.monotonic() < deadline, "mix-a published no control endpoint in 20 s"
            time.sleep(0.001)
        first = metrics.statistics(state, "mix-a")
        assert first is not None, "mix-a did not answer its first request"
        wanted = expected_names(provider=False, loop_returned=False)
        assert wanted <= set(first), f"first answer lacks {sorted(wanted - set(first))}"
        assert first["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        authorities.stop()
