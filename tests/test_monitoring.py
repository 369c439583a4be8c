"""zmix-up --export-monitoring: the Prometheus configuration, its rules and the Grafana dashboard
(zmix/monitoring.py; docs/monitoring.md, "Prometheus and Grafana")."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from zmix import monitoring
from zmix.bench.common import free_ports, make_network
from zmix.stats_schema import LABELLED_STATISTICS, STATISTICS
from zmix.topology import Topology
from zmix.topology_yaml import load_topology, parse_topology

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "monitoring.md"
FILES = {monitoring.PROMETHEUS_FILE, monitoring.RULES_FILE, monitoring.DASHBOARD_FILE}
SCHEMA_NAMES = frozenset(s.prometheus_name for s in (*STATISTICS, *LABELLED_STATISTICS))

TOPOLOGY = """\
network: zmix-mon
sphinx: {payload_length: 1024, max_hops: 4}
defaults: {host: 127.0.0.1, base_port: 41000, workers: 1}
providers:
  - {name: provider-1, metrics_port: 41101}
  - provider-2
layers:
  - [{name: mix-a1, metrics_port: 41111}, mix-a2]
  - [{name: mix-b1, host: "::1", metrics_port: 41121}]
authorities: [authority-1]
clients:
  - {name: alice, provider: provider-1}
"""
# What the topology above must give Prometheus: target -> labels.
TARGETS = {
    "127.0.0.1:41101": {"network": "zmix-mon", "node": "provider-1", "role": "provider"},
    "127.0.0.1:41111": {"network": "zmix-mon", "node": "mix-a1", "role": "mixnode",
                        "layer": "0"},
    "[::1]:41121": {"network": "zmix-mon", "node": "mix-b1", "role": "mixnode", "layer": "1"},
}


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return path


@pytest.fixture
def topology(topology_file: Path) -> Topology:
    return load_topology(topology_file)


def export(topology_file: Path, directory: Path, *extra: str,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmix.cli.up", str(topology_file),
                           "--export-monitoring", str(directory), *extra],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=cwd or directory.parent)


def section(heading: str) -> str:
    """The text of docs/monitoring.md's "### heading" under "## Prometheus and Grafana"."""
    text = DOCS.read_text().split("## Prometheus and Grafana\n", 1)[1].split("\n## ", 1)[0]
    return text.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]


def bullets(text: str) -> list[tuple[str, list[str]]]:
    """Each "- **NAME**...: `EXPR`; `EXPR` — meaning" line: its name and its expressions."""
    found = []
    for line in text.splitlines():
        match = re.match(r"- \*\*([^*]+)\*\*[^`]*?(`.*`) — ", line)
        if match:
            found.append((match[1], re.findall(r"`([^`]+)`", match[2])))
    return found


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: every name written before a ``{`` selector."""
    return set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", expr))


def unknown_metrics(expr: str) -> set[str]:
    """Names the expression selects, or zmix_ names it writes, that no node exports (and that
    are not Prometheus's own ``up``)."""
    names = metric_names(expr) | set(re.findall(r"\bzmix_[A-Za-z0-9_]+", expr))
    return names - SCHEMA_NAMES - monitoring.PROMETHEUS_SERIES


# ---------------------------------------------------------------------- the Grafana dashboard


def test_the_dashboard_has_one_panel_per_figure_the_docs_list_with_the_documented_promql(
        tmp_path: Path, topology_file: Path) -> None:
    assert export(topology_file, tmp_path / "out").returncode == 0
    board = json.loads((tmp_path / "out" / monitoring.DASHBOARD_FILE).read_text())
    documented = bullets(section("The panels"))
    assert len(documented) >= 20  # the list was found at all
    assert [p["title"] for p in board["panels"]] == [title for title, _ in documented]
    for panel, (title, exprs) in zip(board["panels"], documented, strict=True):
        drawn = [t["expr"] for t in panel["targets"]]
        if any("REASON" in e for e in exprs):  # one query per drop reason, as the docs say
            assert drawn == [exprs[0].replace("REASON", r) for r in monitoring.drop_reasons()]
        else:
            assert drawn == exprs, title
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(drawn))]


def test_drops_by_reason_has_one_stacked_series_per_dropped_statistic_but_the_total() -> None:
    reasons = {s.name.removeprefix("dropped_") for s in STATISTICS
               if s.name.startswith("dropped_")} - {"total"}
    (panel,) = [p for p in monitoring.panels() if p.title == "Drops by reason"]
    assert panel.stacked and {q.legend for q in panel.queries} == reasons
    assert len(panel.queries) == len(reasons) >= 10


def test_every_promql_expression_names_only_metrics_a_node_exports(topology: Topology) -> None:
    board = monitoring.dashboard(topology)
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    exprs += [a.expr for a in monitoring.alerts()]
    assert all(metric_names(e) for e in exprs)
    for expr in exprs:
        assert not unknown_metrics(expr), expr
    used = set().union(*(metric_names(e) for e in exprs))
    # The figures of the issue are all there, the labelled statistics included.
    for name in ("received", "sent", "forwarded", "queue_depth", "workers", "loops_lost",
                 "loop_route_lost", "link_packets_sent", "clients_online", "mailbox_items",
                 "loop_rtt_us_median", "document_valid_seconds", "links_down"):
        assert monitoring.metric(name) in used, name


def test_the_metric_check_catches_a_name_no_node_exports() -> None:
    # The positive control of the test above: a misspelt or undeclared name is caught.
    assert unknown_metrics('rate(zmix_recieved_total{node=~"$node"}[1m])') == {
        "zmix_recieved_total"}
    assert unknown_metrics("zmix_queue_depth_total > 0") == {"zmix_queue_depth_total"}
    assert unknown_metrics('zmix_queue_depth{node="a"} + up{job="zmix"}') == set()
    with pytest.raises(KeyError):
        monitoring.metric("recieved")


def test_the_dashboard_has_a_prometheus_source_a_network_and_a_node_variable(
        topology: Topology) -> None:
    board = json.loads(monitoring.files(topology)[monitoring.DASHBOARD_FILE])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["network"]["current"]["value"] == "zmix-mon"
    assert variables["node"]["multi"] and variables["node"]["includeAll"]
    assert board["uid"] == "zmix-zmix-mon" and board["title"] == "zmix network zmix-mon"
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert 'network="$network",node=~"$node"' in target["expr"]
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    places = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]}
    assert len(places) == len(ids)  # no panel drawn over another


def test_a_dashboard_uid_keeps_to_the_characters_and_length_grafana_allows() -> None:
    assert monitoring.dashboard_uid("zmix.local") == "zmix-zmix-local"
    long = monitoring.dashboard_uid("n" * 64)
    assert len(long) == 40 and re.fullmatch(r"[A-Za-z0-9_-]+", long)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian: apt install prometheus)")
def test_promtool_parses_every_expression_of_the_dashboard(
        tmp_path: Path, topology: Topology) -> None:
    # As recording rules, with Grafana's variables filled in as Grafana would.
    exprs = [t["expr"] for p in monitoring.dashboard(topology)["panels"] for t in p["targets"]]
    filled = [e.replace("$network", "zmix-mon").replace("$node", ".*")
              .replace("$__rate_interval", "1m") for e in exprs]
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"panel:{i}", "expr": e} for i, e in enumerate(filled)]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The positive control: promtool does refuse a broken expression.
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "rate(zmix_sent_total{node=~\"a\"}[$__rate_interval])"}]}]}))
    assert subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          check=False).returncode != 0


# ---------------------------------------------------------------------- the Prometheus side


def scrape_targets(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    (job,) = config["scrape_configs"]
    assert job["job_name"] == monitoring.JOB
    return {target: group["labels"] for group in job["static_configs"]
            for target in group["targets"]}


def test_the_prometheus_config_lists_every_metrics_port_of_the_topology_and_only_those(
        tmp_path: Path, topology_file: Path) -> None:
    assert export(topology_file, tmp_path / "out").returncode == 0
    text = (tmp_path / "out" / monitoring.PROMETHEUS_FILE).read_text()
    config = yaml.safe_load(text)
    assert scrape_targets(config) == TARGETS
    assert config["rule_files"] == [monitoring.RULES_FILE]
    assert config["scrape_configs"][0]["honor_labels"] is True
    # The nodes without a metrics port are named in a comment, and only they.
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "mix-a2 (mixnode, layer 0)" in comments and "provider-2 (provider)" in comments
    assert "mix-a1" not in comments and "provider-1" not in comments


def test_a_topology_without_metrics_ports_gives_a_job_without_targets(tmp_path: Path) -> None:
    path = tmp_path / "bare.yaml"
    path.write_text(re.sub(r"\{name: ([a-z0-9-]+)(, host: \"::1\")?, metrics_port: \d+\}",
                           r"\1", TOPOLOGY))
    topology = load_topology(path)
    assert all(n.metrics_port is None for n in topology.nodes())
    config = yaml.safe_load(monitoring.prometheus_yaml(topology))
    assert scrape_targets(config) == {}
    assert len(monitoring.unscraped(topology)) == len(topology.nodes()) == 5


def test_the_rules_file_holds_the_documented_alerts(topology: Topology) -> None:
    rules = yaml.safe_load(monitoring.files(topology)[monitoring.RULES_FILE])
    (group,) = rules["groups"]
    documented = bullets(section("The alerts"))
    assert len(documented) >= 4
    assert [(r["alert"], [r["expr"]]) for r in group["rules"]] == documented
    assert all(r["labels"]["severity"] in {"warning", "critical"} for r in group["rules"])


def test_the_docs_lists_are_what_python_m_zmix_monitoring_prints() -> None:
    printed = subprocess.run([sys.executable, "-m", "zmix.monitoring"], capture_output=True,
                             text=True, check=True).stdout
    panels, alerts = printed.strip().split("\n\n")
    assert panels in section("The panels")
    assert alerts in section("The alerts")


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian: apt install prometheus)")
def test_promtool_accepts_the_prometheus_config_and_its_rules(
        tmp_path: Path, topology_file: Path) -> None:
    assert export(topology_file, tmp_path / "out").returncode == 0
    checked = subprocess.run(["promtool", "check", "config",
                              str(tmp_path / "out" / monitoring.PROMETHEUS_FILE)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(monitoring.alerts())} rules found" in checked.stdout + checked.stderr


# ---------------------------------------------------------------------- the command


def test_export_monitoring_writes_the_three_files_and_starts_nothing(
        tmp_path: Path, topology_file: Path) -> None:
    out = tmp_path / "new" / "monitoring"  # made, parents too
    before = set(tmp_path.iterdir())
    done = export(topology_file, out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == FILES  # no temporary file left behind
    assert set(tmp_path.iterdir()) - before == {tmp_path / "new"}  # no state directory
    assert "zmix-mon" in done.stdout and "provider-2, mix-a2" in done.stdout
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / monitoring.DASHBOARD_FILE).write_text("{}")
    again = export(topology_file, out, cwd=tmp_path)  # overwrites, to the same bytes
    assert again.returncode == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_export_monitoring_refuses_a_bad_topology_naming_it(
        tmp_path: Path, topology_file: Path) -> None:
    topology_file.write_text(TOPOLOGY.replace("max_hops: 4", "max_hops: -4"))
    done = export(topology_file, tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {topology_file}: sphinx.max_hops")
    assert not (tmp_path / "out").exists()


def test_export_monitoring_refuses_a_directory_it_cannot_write_naming_the_path(
        tmp_path: Path, topology_file: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for out in (blocker, blocker / "monitoring"):
        done = export(topology_file, out, cwd=tmp_path)
        assert done.returncode == 2, out
        assert done.stderr.startswith(f"error: cannot write {'into ' * (out == blocker)}"
                                      f"{out}: "), done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert export(topology_file, tmp_path / "fine").returncode == 0  # the positive control


def test_export_monitoring_refuses_the_options_that_start_or_prepare_a_network(
        tmp_path: Path, topology_file: Path) -> None:
    for extra in (["--demo"], ["--keys-only"], ["--only", "mix-a1"],
                  ["--state", str(tmp_path / "s")]):
        done = export(topology_file, tmp_path / "out", *extra)
        assert done.returncode == 2, extra
        assert extra[0] in done.stderr and "--export-monitoring" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


# ---------------------------------------------------------------------- a real Prometheus


def prometheus_query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def filled(expr: str, network: str) -> str:
    """The expression as Grafana sends it with every node chosen."""
    return (expr.replace("$network", network).replace("$node", ".*")
            .replace("$__rate_interval", "20s"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus is not installed (Debian: apt install prometheus)")
def test_prometheus_scrapes_a_running_network_and_every_panel_draws_series(
        tmp_path: Path) -> None:
    names = ("provider-1", "mix-a1", "mix-b1")
    *metrics_ports, web = free_ports(len(names) + 1)
    topology, state = make_network(
        tmp_path, layers=(("mix-a1",), ("mix-b1",)), providers=("provider-1",),
        clients={"alice": "provider-1"}, loopix={"mix_loop_rate": 10.0},
        node_options={n: {"metrics_port": p} for n, p in zip(names, metrics_ports, strict=True)},
        network="zmix-prom")
    assert export(tmp_path / "topology.yaml", tmp_path / "mon").returncode == 0
    up = subprocess.Popen([sys.executable, "-m", "zmix.cli.up", str(tmp_path / "topology.yaml"),
                           "--state", str(state)], stdout=subprocess.PIPE, text=True)
    assert up.stdout is not None
    assert any("ready" in line for line in up.stdout)
    with (tmp_path / "prometheus.log").open("w") as log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'mon' / monitoring.PROMETHEUS_FILE}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        exprs = {(p["title"], t["legendFormat"]): filled(t["expr"], topology.network)
                 for p in monitoring.dashboard(topology)["panels"] for t in p["targets"]}
        empty = dict(exprs)
        deadline = time.monotonic() + 90  # two scrapes for rate(), and the loops' first round
        while empty:
            with contextlib.suppress(OSError):  # Prometheus is not listening yet
                empty = {k: e for k, e in empty.items() if not prometheus_query(web, e)}
            assert time.monotonic() < deadline, f"panels with no series: {sorted(empty)}"
            time.sleep(1)
        targets = {r["metric"]["node"]: r["value"][1] for r in prometheus_query(web, "up")}
        assert targets == dict.fromkeys(names, "1")
        for alert in monitoring.alerts():  # each rule's expression runs (a healthy network)
            prometheus_query(web, alert.expr)
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        up.terminate()
        assert up.wait(30) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["127.0.0.1", "::1", "10.0.0.7",
                                                          "node.example"])),
                min_size=3, max_size=9),
       st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(
           lambda name: name not in (".", "..")),  # the two names a topology refuses
       st.text(max_size=20))
def test_any_topology_gives_a_target_for_each_metrics_port_and_none_other(
        nodes: list[tuple[bool, str]], network: str, path: str) -> None:
    # Providers first, then one mixnode per layer; every node on its own port, metrics or not.
    names = [f"n{i}" for i in range(len(nodes))]
    specs = [{"name": name, "host": host, "port": 42000 + i,
              **({"metrics_port": 43000 + i} if scraped else {})}
             for i, (name, (scraped, host)) in enumerate(zip(names, nodes, strict=True))]
    topology = parse_topology({
        "network": network, "sphinx": {"payload_length": 1024, "max_hops": len(nodes) + 1},
        "providers": specs[:1], "layers": [[spec] for spec in specs[1:]],
        "authorities": [{"name": "authority-1", "host": "127.0.0.1", "port": 44000}],
    }, path)
    config = yaml.safe_load(monitoring.prometheus_yaml(topology))
    wanted = {(f"[{s['host']}]" if ":" in str(s["host"]) else str(s["host"]))
              + f":{s['metrics_port']}": s["name"] for s in specs if "metrics_port" in s}
    assert {t: labels["node"] for t, labels in scrape_targets(config).items()} == wanted
    board = json.loads(monitoring.files(topology)[monitoring.DASHBOARD_FILE])
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert {v["name"]: v for v in board["templating"]["list"]}["network"]["current"][
        "value"] == network
