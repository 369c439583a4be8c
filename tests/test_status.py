"""zmix-status against a real local network: figures that move with traffic, a node stopped.

One network (two layers of two mixnodes, two providers, an authority) runs for the whole module;
the tests run in file order, and the last one kills mix-b1 for good.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zmix import looploss, observe
from zmix.bench.common import free_ports, make_network, network_launcher
from zmix.runtime.launcher import Launcher
from zmix.topology import Topology

LAYERS = (("mix-a1", "mix-a2"), ("mix-b1", "mix-b2"))
PROVIDERS = ("provider-1", "provider-2")
WITH_METRICS = ("mix-a2", "provider-2")  # also serve /metrics: read there when not local
# The loss the fit may put on a node that loses nothing. Every loop through a live node but not
# the dead one comes back well before its deadline (2 s of slack on ~4 ms of drawn delays), and
# the fit puts the loss of the loops that went through both on the dead one; what remains is
# the fit's estimation error over a few hundred loops (docs/monitoring.md, "How the loss of each
# node and link is estimated"), well under 10 %.
NEAR_ZERO = 0.10


@dataclass
class Net:
    topology: Topology
    state: Path
    launcher: Launcher

    def status(self, *args: str, state: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zmix.cli.status", "--state", str(state or self.state),
             "--interval", "0.5", "--timeout", "1", *args],
            capture_output=True, text=True, timeout=60, check=False)

    def report(self, *args: str, state: Path | None = None) -> tuple[int, dict[str, Any]]:
        done = self.status("--json", *args, state=state)
        lines = done.stdout.splitlines()
        assert len(lines) == 1, (done.stdout, done.stderr)
        return done.returncode, json.loads(lines[0])

    def wait_report(self, done: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
        """Return the first report (read in this process) for which ``done`` holds."""
        deadline = time.monotonic() + timeout
        previous = observe.collect(self.topology, self.state, timeout=1)
        while True:
            time.sleep(0.5)  # rates and loop counts need time to move between two samples
            current = observe.collect(self.topology, self.state, timeout=1)
            report = observe.report(self.topology, previous, current)
            if done(report):
                return report
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {report}"
            previous = current


def node(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in report["nodes"] if n["name"] == name)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    ports = dict(zip(WITH_METRICS, free_ports(len(WITH_METRICS)), strict=True))
    topology, state = make_network(
        tmp_path_factory.mktemp("status"), layers=LAYERS, providers=PROVIDERS,
        clients={"alice": "provider-1", "bob": "provider-2"},
        loopix={"mix_loop_rate": 8.0, "mean_delay": 0.001},
        node_options={n: {"metrics_port": p} for n, p in ports.items()})
    launcher = network_launcher(state, topology)
    daemon: subprocess.Popen[str] | None = None
    try:
        launcher.start()
        # alice's client daemon: its loops count too (the status op's loop_routes)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "zmix.cli.client", "--state", str(state), "--as", "alice"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert daemon.stdout is not None
        ready = daemon.stdout.readline()  # printed once online (EOF if it exits)
        assert ready.startswith("ready api="), f"zmix-client said {ready!r}"
        yield Net(topology, state, launcher)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        launcher.stop()


def test_every_node_is_shown_up_and_its_figures_move_between_two_runs(net: Net) -> None:
    net.wait_report(lambda r: r["loops"]["returned"] >= 20 and any(
        link["from"] == "alice" and link["loop_samples"] for link in r["links"]),
        "mix loops and alice's loops back")
    status, first = net.report()
    sent = subprocess.run(
        [sys.executable, "-m", "zmix.cli.send", "--state", str(net.state), "--from", "alice",
         "--to", "bob", "hello through the mixnet"],
        capture_output=True, text=True, timeout=60, check=False)
    assert sent.returncode == 0, sent.stderr
    status2, second = net.report()
    assert status == status2 == 0
    assert first["down"] == second["down"] == [] and second["unknown"] == []
    assert 0.4 < second["interval"] < 2
    for name in net.topology.names()[:6]:
        a, b = node(first, name), node(second, name)
        assert (b["up"], b["state"], b["source"], b["error"]) == (True, "up", "control", None)
        assert b["stats"]["received"] > a["stats"]["received"], name
        assert b["stats"]["loops_sent"] > a["stats"]["loops_sent"], name
        assert b["packets_in_per_s"] > 0 and b["packets_out_per_s"] > 0, name
        assert b["age"] > a["age"] and b["workers"] == 1 and b["queue"] is not None, name
        assert b["dropped_total"] is not None and b["loops_lost"] is not None, name
    # bob's message and its acknowledgement's way: stored at provider-2 for bob
    assert node(second, "provider-2")["stats"]["delivered"] > node(first, "provider-2")[
        "stats"]["delivered"]
    assert node(second, "provider-2")["mailbox_items"] >= 1
    assert node(second, "mix-a1")["mailbox_items"] is None
    # The 2x2 links provider -> layer 0, layer 0 -> 1, layer 1 -> provider come first, each
    # carrying loops (any other link packets were sent on would follow them).
    links = second["links"][:12]
    assert {(link["from"], link["to"]) for link in links} == set(
        observe.stratified_links(net.topology))
    assert all(link["packets_per_s"] is not None for link in links)
    assert sum(link["packets_per_s"] for link in links) > 0
    assert second["loops"]["returned"] > first["loops"]["returned"]
    # alice's daemon's loops: her link with her provider is seen, after the stratified ones
    client_link = next(link for link in second["links"]
                       if (link["from"], link["to"]) == ("alice", "provider-1"))
    assert client_link["loop_samples"] > 0 and client_link["packets_per_s"] is None


def test_the_table_names_every_node_and_says_up(net: Net) -> None:
    done = net.status()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "6 nodes: 6 up, 0 down, 0 unknown" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:9] if line}
    assert set(rows) == {"NODE", *net.topology.names()[:6]}
    for name in net.topology.names()[:6]:  # NODE, ROLE ("provider" or "mix L0"), STATE
        assert rows[name][2 if name.startswith("provider") else 3] == "up", rows[name]


def test_from_a_folder_without_the_nodes_keys_only_their_metrics_ports_are_read(
        net: Net, tmp_path: Path) -> None:
    shutil.copy(net.state / "topology.yaml", tmp_path / "topology.yaml")
    status, report = net.report(state=tmp_path)
    assert status == 0  # the unknown ones do not count as down
    for entry in report["nodes"]:
        if entry["name"] in WITH_METRICS:
            assert (entry["state"], entry["source"]) == ("up", "metrics"), entry
            assert entry["stats"]["received"] > 0 and entry["stats"]["pid"] > 0
        else:
            assert (entry["state"], entry["source"], entry["error"]) == (
                "unknown", None, "no metrics_port, and not run from this state folder")
    assert report["unknown"] == [n for n in net.topology.names()[:6] if n not in WITH_METRICS]


def test_a_killed_mixnode_is_shown_down_its_loop_loss_rises_and_the_others_stay_near_zero(
        net: Net) -> None:
    before = net.wait_report(lambda r: node(r, "mix-b1")["loop_samples"] >= 50,
                             "loops through mix-b1")
    assert node(before, "mix-b1")["loop_loss"] < NEAR_ZERO
    process = net.launcher.children["mix-b1"].proc
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    after = net.wait_report(lambda r: (node(r, "mix-b1")["loop_loss"] or 0) > 0.25,
                            "loop loss at mix-b1", timeout=40)
    for name in ("mix-a1", "mix-a2", "mix-b2", "provider-1", "provider-2"):
        entry = node(after, name)
        assert entry["up"] and entry["loop_samples"] > 0, entry
        assert entry["loop_loss"] < NEAR_ZERO, (name, entry["loop_loss"], after["loops"])
    status, report = net.report()
    assert status == 1
    dead = node(report, "mix-b1")
    assert (dead["up"], dead["state"], dead["source"]) == (False, "down", None)
    assert "control socket" in dead["error"] and report["down"] == ["mix-b1"]
    table = net.status()
    assert table.returncode == 1
    assert any(line.split()[:4] == ["mix-b1", "mix", "L1", "DOWN"]
               for line in table.stdout.splitlines())
    assert "mix-b1: down: no answer on its control socket" in table.stdout


# ---------------------------------------------------------------------- without a network


def status_of(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmix.cli.status", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_a_state_folder_or_topology_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    missing = status_of("--state", str(tmp_path / "none"))
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    empty = status_of("--state", str(tmp_path))
    assert empty.returncode == 2 and "topology.yaml: topology: no such file" in empty.stderr
    _, state = make_network(tmp_path / "net", layers=(("mix-a",),), providers=("provider-1",))
    observer = tmp_path / "observer"  # the topology, no private key, no metrics_port
    observer.mkdir()
    shutil.copy(state / "topology.yaml", observer / "topology.yaml")
    blind = status_of("--state", str(observer))
    assert blind.returncode == 2 and "none can be read from here" in blind.stderr
    given = status_of("--state", str(observer), "--topology", str(state / "topology.yaml"),
                      "--timeout", "0.2", "--interval", "0.1")
    assert given.returncode == 2  # the same topology, still nothing local in that folder
    # Positive control: from the nodes' own folder they can be read (and are down: not running).
    down = status_of("--state", str(state), "--timeout", "0.2", "--interval", "0.1")
    assert down.returncode == 1 and "2 nodes: 0 up, 2 down, 0 unknown" in down.stdout


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_watch_prints_one_json_line_per_refresh_and_exits_with_the_last_ones_status(
        tmp_path: Path, stop: signal.Signals) -> None:
    _, state = make_network(tmp_path, layers=(("mix-a",),), providers=("provider-1",))
    watcher = subprocess.Popen(
        [sys.executable, "-m", "zmix.cli.status", "--state", str(state), "--json", "--watch",
         "0.2", "--timeout", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    try:
        lines = [watcher.stdout.readline() for _ in range(3)]  # blocks until each refresh
        watcher.send_signal(stop)
        rest, err = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
        watcher.wait()
    reports = [json.loads(line) for line in lines + rest.splitlines()]
    assert len(reports) >= 3 and all(r["down"] == ["provider-1", "mix-a"] for r in reports)
    assert all(0.15 < r["interval"] < 2 for r in reports)
    assert [r["time"] for r in reports] == sorted(r["time"] for r in reports)
    assert watcher.returncode == 1, err  # both nodes were down at the last refresh
    assert "Traceback" not in err


def test_the_table_shows_missing_figures_as_dashes_nonzero_drops_and_lossy_links() -> None:
    from zmix.cli.status import render
    from zmix.observe import Reading, Sample, State

    net = make_topology()
    stats = {"uptime_seconds": 3725.0, "pid": 1.0, "received": 10.0, "sent": 5.0,
             "dropped_replay": 3.0, "dropped_bad_mac": 0.0, "dropped_total": 3.0,
             "queue_depth": 4.0, "workers": 2.0, "loops_sent": 9.0, "loops_returned": 7.0,
             "loops_lost": 2.0, "mailbox_items": 1.0, "clients_online": 0.0}
    loops = {"loop_route_returned": {"provider-1>mix-a>provider-1": 1.0},
             "loop_route_lost": {"provider-1>mix-a>provider-1": 3.0}}
    current = Sample(5.0, {
        "provider-1": Reading("provider-1", State.UP, observe.Source.CONTROL, None, stats,
                              loops),
        "mix-a": Reading("mix-a", State.DOWN, None, "no answer")})
    text = render(observe.report(net, None, current), threshold=5.0)
    lines = text.splitlines()
    assert "2 nodes: 1 up, 1 down, 0 unknown  no rates yet" in lines[0]
    provider = next(line for line in lines if line.startswith("provider-1 ")).split()
    # provider-1 is the loops' sender, not a segment of them: no loss of its own
    assert provider == ["provider-1", "provider", "up", "1h02m", "-", "-", "4", "2", "9/7/2",
                        "1", "0", "-", "replay:3"]
    # mix-a is down (no figures) and the one node the lost loops went through
    fit = looploss.fit({("provider-1", "mix-a", "provider-1"): (1, 3)})
    assert next(line for line in lines if line.startswith("mix-a ")).split() == [
        "mix-a", "mix", "L0", "DOWN", *["-"] * 8, f"{100 * fit.nodes['mix-a'].loss:.1f}%",
        "of", "4", "-"]
    assert "links with loop loss above 5% (2 of 2, 2 with loop samples):" in text
    link = fit.links["provider-1", "mix-a"].loss
    assert f"provider-1 -> mix-a  {100 * link:.1f}% of 4  -" in text
    assert lines[-1] == "mix-a: down: no answer"


def make_topology() -> Topology:
    from zmix.topology_yaml import parse_topology

    return parse_topology({
        "network": "zmix-table", "defaults": {"host": "127.0.0.1"},
        "layers": [[{"name": "mix-a", "port": 7001}]],
        "providers": [{"name": "provider-1", "port": 7002}],
        "authorities": [{"name": "authority-1", "port": 7003}]}, "table.yaml")
