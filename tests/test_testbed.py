"""Several hosts for real: topologies/testbed.yaml in the network-namespace test bed.

Each host is a network namespace with its own address of 198.51.100.0/24, joined to the others
by a bridge in a namespace of its own; each runs its share with ``zmix-up --only`` from its own
folder of ``zmix-up --export-hosts``. The clients run in hosts too, from their own folders. The
faults are those of docs/deploy.md: a host's cable pulled, a host killed with SIGKILL and started
again. Root only (network namespaces), and slow (each test starts the whole network).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zmix.api.client import Client
from zmix.runtime import testbed
from zmix.topology_yaml import load_topology

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "topologies" / "testbed.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the test bed needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="the test bed needs iproute2's ip"),
]


@pytest.fixture
def net() -> Iterator[testbed.TestbedNetwork]:
    """topologies/testbed.yaml running on its four namespace hosts; removed afterwards, whatever
    the test did (a prefix of this process, so that no other test bed is touched). Its folder
    is short: a client daemon's Unix socket path must fit in 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="ztb-", dir="/tmp"))
    network = testbed.TestbedNetwork(load_topology(TOPOLOGY), folder, prefix=f"zt{os.getpid()}")
    try:
        network.create()
        network.start_all()
        yield network
    finally:
        network.destroy()
        assert not [n for n in testbed.namespaces() if n.startswith(network.bed.prefix)]
        shutil.rmtree(folder, ignore_errors=True)


def zmix(command: str) -> list[str]:
    """The argv of a zmix command, run with this Python (no PATH needed in a namespace)."""
    return [sys.executable, "-m", f"zmix.cli.{command}"]


def status(net: testbed.TestbedNetwork, host: str) -> dict[str, Any]:
    """``zmix-status --json`` run in ``host`` from its own folder (it reads the other hosts'
    nodes on their metrics ports, across the bridge)."""
    where = net.bed.host(host)
    done = net.run(where, [*zmix("status"), "--state", str(net.host_state(where)), "--json",
                           "--interval", "0.5"], capture_output=True, timeout=60)
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def node(report: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(n for n in report["nodes"] if n["name"] == name)
    return entry


def until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Return ``check()``'s first true value; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.5)


def send(net: testbed.TestbedNetwork, host: str, sender: str, recipient: str, text: str
         ) -> subprocess.CompletedProcess[str]:
    return net.run(net.bed.host(host), [
        *zmix("send"), "--state", str(net.client_state(sender)), "--from", sender,
        "--to", recipient, text, "--timeout", "90"], capture_output=True, timeout=120)


def receive(net: testbed.TestbedNetwork, host: str, name: str, *extra: str,
            wait: float = 30) -> list[dict[str, Any]]:
    done = net.run(net.bed.host(host), [
        *zmix("recv"), "--state", str(net.client_state(name)), "--as", name, "--json",
        "--wait", str(wait), *extra], capture_output=True, timeout=wait + 60)
    assert done.returncode in (0, 3), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_topology_spread_over_four_namespace_hosts_delivers_between_clients_on_other_hosts(
        net: testbed.TestbedNetwork) -> None:
    hosts = {h.name: h for h in net.hosts}
    assert [h.address for h in net.hosts] == [f"198.51.100.{i}" for i in (1, 2, 3, 4)]
    # Each host runs its own members only, from a folder with only their private keys.
    for host in net.hosts:
        private = {p.name for p in (net.host_state(host) / "private").iterdir()}
        expected = ({f"{m}.json" for m in host.members} - {"authority-1.json"}) | {
            f"{m}.identity.json" for m in host.members}
        assert private == expected, private
        listening = net.run(host, ["ss", "-Htln"], capture_output=True, timeout=10).stdout
        assert f"{host.address}:31" in listening  # its nodes listen on its own address
    # The machine's own namespace got no address of the test bed: nothing leaves the machine.
    assert "198.51.100." not in subprocess.run(["ip", "-o", "addr"], capture_output=True,
                                               text=True, check=True).stdout
    # alice (provider-1 on h1) writes from h3, bob (provider-2 on h2) reads on h4, and back.
    sent = send(net, "h3", "alice", "bob", "from alice on h3 to bob on h4")
    assert sent.returncode == 0, sent.stderr
    assert [m["text"] for m in receive(net, "h4", "bob")] == ["from alice on h3 to bob on h4"]
    sent = send(net, "h4", "bob", "alice", "and back from h4")
    assert sent.returncode == 0, sent.stderr
    assert [m["text"] for m in receive(net, "h3", "alice")] == ["and back from h4"]
    # Every node is up as seen from one host (control sockets there, metrics ports elsewhere).
    report = status(net, "h1")
    assert {n["name"]: n["state"] for n in report["nodes"]} == dict.fromkeys(
        [m for h in net.hosts for m in h.members if m != "authority-1"], "up"), report
    assert hosts  # the hosts are named h1..h4 on the command line as well


def test_a_mixnode_host_cut_off_for_20_s_during_a_transfer_rejoins_and_the_file_arrives_whole(
        net: testbed.TestbedNetwork, tmp_path: Path) -> None:
    data = os.urandom(250_000)  # about 160 fragments: 8 s at lambda_P 20/s without the outage
    source = tmp_path / "report.bin"
    source.write_bytes(data)
    h3 = net.bed.host("mix-b1")
    pid = int((net.host_state(h3) / "nodes" / "mix-b1" / "lock").read_text().strip())
    transfer = net.popen(net.bed.host("h1"), [
        *zmix("send"), "--state", str(net.client_state("alice")), "--from", "alice", "--to",
        "bob", "--file", str(source), "--timeout", "240"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2)  # the transfer is under way
    assert transfer.poll() is None, "the transfer ended before the outage"
    net.bed.set_link(h3, up=False)
    cut = time.monotonic()
    assert not net.bed.link_is_up(h3)
    # mix-b1's peers lose their links to it (heartbeat time-out, 5 s) and, past the hold
    # (loopix.max_delay, 2 s), drop what they held for it rather than send it late.
    until("mix-a1 dropped the packets it held for mix-b1",
          lambda: node(status(net, "h1"), "mix-a1")["drops"].get("link_down", 0) > 0, 18)
    time.sleep(max(0.0, 20 - (time.monotonic() - cut)))
    alone = node(status(net, "h3"), "mix-b1")  # still up on its own host, cut off from all
    assert alone["state"] == "up"
    net.bed.set_link(h3, up=True)
    back = time.monotonic()
    out, err = transfer.communicate(timeout=240)
    assert transfer.returncode == 0, err.decode()
    assert b"acknowledged" in out
    print(f"transfer done {time.monotonic() - back:.1f} s after the link came back")
    (tmp_path / "inbox").mkdir()
    got = receive(net, "h4", "bob", "--out", str(tmp_path / "inbox"))
    assert len(got) == 1 and got[0]["bytes"] == len(data), got
    assert Path(got[0]["file"]).name == "report.bin"
    assert Path(got[0]["file"]).read_bytes() == data
    # mix-b1 rejoined without a restart: the same process, its own loops coming back again,
    # and packets flowing to it from layer 0.
    def rejoined() -> dict[str, Any] | None:
        report = status(net, "h3")
        b1 = node(report, "mix-b1")
        return report if b1["state"] == "up" and b1["stats"]["pid"] == pid and (
            b1["loops_returned"] > alone["loops_returned"]) else None

    after = until("mix-b1's own loops come back", rejoined, 60)
    assert node(after, "mix-b1")["drops"].get("bad_mac", 0) == 0, (
        "packets held through the outage reached mix-b1 after their keys were erased")
    held = {n["name"]: n["drops"].get("link_down", 0) for n in status(net, "h1")["nodes"]}
    print(f"packets dropped with links down too long (dropped_link_down): {held}")
    b1 = node(after, "mix-b1")["stats"]
    assert b1["received"] > alone["stats"]["received"] and b1["sent"] > alone["stats"]["sent"]


def test_a_provider_host_killed_in_a_burst_loses_no_acknowledged_message_and_repeats_none(
        net: testbed.TestbedNetwork) -> None:
    h1, h2, h3 = (net.bed.host(h) for h in ("h1", "h2", "h3"))
    daemon = net.popen(h3, [*zmix("client"), "--state", str(net.client_state("alice")), "--as",
                            "alice"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = until("alice's daemon answers", lambda: _connect(net, "alice"), 30)
        with client:
            ids = [client.send("bob", f"message {i:03} of the burst").message_id
                   for i in range(60)]
            until("a few messages acknowledged",
                  lambda: sum(client.progress(i).done for i in ids) >= 5, 60)
            net.crash(h2)  # provider-2 (bob's), mix-a2 and mix-c2: every process, SIGKILL
            assert net.bed.pids(h2) == []
            time.sleep(2)  # acknowledgements already on their way through the mixes land
            seen = {i for i in ids if client.progress(i).done}
            assert 5 <= len(seen) < len(ids), len(seen)  # the crash came in the burst
            time.sleep(3)
            net.start(h2)  # the host comes back from its own folder: mailbox.sqlite and keys
            restarted = time.monotonic()
            until("every message acknowledged after the restart",
                  lambda: all(client.progress(i).done for i in ids), 180)
            print(f"{len(seen)} of {len(ids)} acknowledged when h2 was killed; every one "
                  f"{time.monotonic() - restarted:.1f} s after it started again")
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
    texts = [m["text"] for m in receive(net, "h1", "bob", wait=10)]
    counts = {text: texts.count(text) for text in texts}
    assert sorted(counts) == [f"message {i:03} of the burst" for i in range(60)]
    assert set(counts.values()) == {1}, {t: c for t, c in counts.items() if c != 1}
    assert len(seen) >= 5 and net.bed.pids(h1)


def _connect(net: testbed.TestbedNetwork, name: str) -> Client | None:
    try:
        return Client.connect(state=net.client_state(name), name=name, timeout=10)
    except OSError:
        return None


def test_a_mixnode_host_back_after_three_epochs_with_its_old_state_rejoins(
        net: testbed.TestbedNetwork) -> None:
    # A host down for longer than its keys and documents last comes back with a stale state:
    # its cached network document expired, its Sphinx keys of the epochs it missed never
    # published, the others' documents without it. It must catch up by itself.
    h4 = net.bed.host("mix-b2")
    net.crash(h4)
    epoch = net.topology.epoch.length
    time.sleep(3 * epoch)  # 60 s: the documents of three epochs are made without mix-b2
    down = node(status(net, "h1"), "mix-b2")
    assert down["state"] == "down"
    net.start(h4)
    started = time.monotonic()

    def carries() -> dict[str, Any] | None:
        report = status(net, "h4")
        b2 = node(report, "mix-b2")
        return report if b2["state"] == "up" and (b2["loops_returned"] or 0) > 0 and (
            b2["stats"]["received"] > 0) else None

    until("mix-b2 carries traffic and its own loops come back", carries, 3 * epoch)
    print(f"mix-b2 rejoined {time.monotonic() - started:.1f} s after its host started")
    for i in range(4):  # messages cross layer 1: through mix-b2 about half the time
        sent = send(net, "h1", "carol", "dave", f"after the stale host came back {i}")
        assert sent.returncode == 0, sent.stderr
    assert len(receive(net, "h2", "dave")) == 4


def test_delay_and_loss_on_a_host_s_link_slow_messages_but_lose_none(
        net: testbed.TestbedNetwork) -> None:
    reason = testbed.netem_available()
    if reason is not None:
        pytest.skip(reason)
    h3, h4 = net.bed.host("h3"), net.bed.host("h4")
    net.bed.netem(h3, delay_ms=50, loss_percent=10)  # mix-b1's cable: slow and lossy
    net.bed.netem(h4, delay_ms=50, loss_percent=10)  # mix-b2's too: every route crosses one
    for i in range(3):
        sent = send(net, "h1", "carol", "dave", f"through a bad link {i}")
        assert sent.returncode == 0, sent.stderr
    net.bed.clear_netem(h3)
    net.bed.clear_netem(h4)
    assert sorted(m["text"] for m in receive(net, "h2", "dave")) == [
        f"through a bad link {i}" for i in range(3)]


def test_zmix_testbed_runs_the_walk_through_of_the_deploy_doc() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ztc-", dir="/tmp"))
    prefix = f"zc{os.getpid()}"

    def testbed_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*zmix("testbed"), "--dir", str(folder / "bed"), *args],
                              capture_output=True, text=True, timeout=180, check=False)

    try:
        up = testbed_cli("up", str(TOPOLOGY), "--prefix", prefix)
        assert up.returncode == 0, up.stderr
        assert "  h3  198.51.100.3    mix-b1\n" in up.stdout
        again = testbed_cli("up", str(TOPOLOGY), "--prefix", prefix)
        assert again.returncode == 2 and "down first" in again.stderr
        bundles = folder / "bed" / "bundles"
        sent = testbed_cli("exec", "h3", "--", *zmix("send"), "--state",
                           str(bundles / "clients" / "alice"), "--from", "alice", "--to", "bob",
                           "hello from host 3")
        assert sent.returncode == 0, sent.stderr
        got = testbed_cli("exec", "h4", "--", *zmix("recv"), "--state",
                          str(bundles / "clients" / "bob"), "--as", "bob", "--wait", "30")
        assert got.stdout == "from alice: hello from host 3\n", got.stderr
        assert testbed_cli("link", "h3", "down").stdout == "h3 (198.51.100.3): cable out\n"
        assert "h3    198.51.100.3     OUT" in testbed_cli("status").stdout
        assert testbed_cli("link", "mix-b1", "up").returncode == 0
        assert testbed_cli("crash", "provider-2").returncode == 0
        assert "h2    198.51.100.2     in     0 " in testbed_cli("status").stdout
        started = testbed_cli("start", "198.51.100.2")
        assert started.stdout == "h2 (198.51.100.2): provider-2, mix-a2, mix-c2 started\n"
        assert testbed_cli("exec", "h9", "--", "true").returncode == 2
        netem = testbed_cli("netem", "h4", "--delay", "5")
        assert netem.returncode == (0 if testbed.netem_available() is None else 1), netem.stderr
        assert testbed_cli("netem", "h4", "--clear").returncode == 0
    finally:
        down = testbed_cli("down")
        shutil.rmtree(folder, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert not [n for n in testbed.namespaces() if n.startswith(f"{prefix}-")]
