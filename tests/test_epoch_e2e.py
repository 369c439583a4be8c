"""Key epochs end to end, on a whole local network run by zmix-up (real processes and sockets).

Epochs of a few seconds make the network rotate every node's Sphinx keys, and change every
process's network document, while the tests run: a file crosses boundaries, and the authorities
are stopped to see what outlives them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain import stop_process
from test_launch import start_up

from zmix.bench.common import make_network
from zmix.runtime import metrics
from zmix.runtime.authority import query as authority_query
from zmix.runtime.client import ClientRuntime
from zmix.topology import Topology

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}
EPOCH = {"length": 4, "grace": 1}
# max_delay keeps the topology's rule (epoch.length >= 2 * max_hops * max_delay, docs/topology.md)
LOOPIX = {"payload_rate": 10.0, "mean_delay": 0.002, "fetch_interval": 0.05, "max_delay": 0.3,
          "loop_rate": 1.0, "drop_rate": 1.0, "mix_loop_rate": 1.0}


def node_stats(state: Path, topology: Topology) -> dict[str, dict[str, float]]:
    """Every node's statistics from its control socket (fail loudly if one does not answer)."""
    stats = {}
    for node in topology.nodes():
        got = metrics.statistics(state, node.name)
        assert got is not None, f"{node.name} does not answer on its control socket"
        stats[node.name] = got
    return stats


@pytest.fixture
def network(tmp_path: Path, request: pytest.FixtureRequest,
            ) -> Iterator[tuple[Topology, Path, subprocess.Popen[str]]]:
    """A local network run by zmix-up with the epochs given by the test's ``epochs`` mark."""
    mark = request.node.get_closest_marker("epochs")
    epoch = mark.args[0] if mark is not None else EPOCH
    topology, state = make_network(tmp_path, clients=CLIENTS, loopix=LOOPIX, epoch=epoch)
    up = start_up(tmp_path / "topology.yaml", state)
    try:
        yield topology, state, up
    finally:
        stop_process(up)


def run_clients(alice: ClientRuntime, bob: ClientRuntime, done: object, timeout: float) -> bool:
    """Run both clients' loops until ``done()`` (True) or ``timeout`` seconds (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if done():  # type: ignore[operator]
            return True
        for runtime in (alice, bob):
            runtime.step(time.time() + 0.01)
    return bool(done())  # type: ignore[operator]


def test_a_file_crosses_two_epoch_boundaries_with_every_fragment_delivered_once(
        network: tuple[Topology, Path, subprocess.Popen[str]]) -> None:
    topology, state, _ = network
    before = node_stats(state, topology)
    # 130 fragments at 10 a second: about 13 s. Two 4 s epochs need 8 s, 4.4 standard deviations
    # of the Poisson stream's time for 130 packets (sqrt(130) / 10 = 1.1 s) short of it; with 90
    # fragments a fast stream ended the transfer within two epochs now and then (seen in CI).
    data = os.urandom(130 * 1582)
    with ClientRuntime(state, "alice") as alice, ClientRuntime(state, "bob", drain=True) as bob:
        message_id = alice.core.submit(time.time(), "bob", data, filename="across.bin")
        total = alice.core.progress(message_id).fragments
        assert total >= 130  # the first fragment also carries the file name

        def delivered() -> bool:
            return bool(bob.core.inbox()) and alice.core.progress(message_id).acked == total

        assert run_clients(alice, bob, delivered, timeout=90.0), (
            alice.core.progress(message_id), alice.statistics(), bob.statistics())
        [message] = bob.core.inbox()
        assert (message.sender, message.filename, message.data) == ("alice", "across.bin", data)
        sent, got = alice.statistics(), bob.statistics()
        # Nothing lost: no fragment needed sending again, none arrived twice, every ack once.
        drops = {n: {k: v for k, v in s.items() if k.startswith("dropped_") and v}
                 for n, s in node_stats(state, topology).items()}
        assert sent["retransmissions"] == 0, (sent, drops)
        assert sent["acks_received"] == total and sent["duplicate_acks"] == 0, sent
        assert got["messages_received"] == 1 and got["duplicates_dropped"] == 0, got
        assert alice.view.current.version > before["provider-1"]["document_epoch"]
    after = node_stats(state, topology)
    for name, stats in after.items():
        # Every node moved on at least two epochs and erased keys as it went, and no packet
        # failed for want of its key.
        assert stats["epoch"] >= before[name]["epoch"] + 2, (name, stats)
        assert stats["document_epoch"] >= before[name]["document_epoch"] + 2, (name, stats)
        assert stats["sphinx_keys_erased"] >= 1, (name, stats)
        assert stats["dropped_bad_mac"] == 0, (name, stats)
        assert stats["forwarded"] + stats["delivered"] > 0, (name, stats)


def _authority_pids(state: Path, topology: Topology) -> list[int]:
    pids = []
    for authority in topology.authorities:
        # The authority answers ``stats`` on its control socket, like a node (docs/pki.md).
        got = authority_query(state, authority.name)
        assert got is not None, f"{authority.name} does not answer on its control socket"
        pids.append(int(json.loads(got)["pid"]))
    return pids


def _send(state: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmix.cli.send", "--state", str(state), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow  # about 27 s, the default run's longest: the document must expire
@pytest.mark.epochs({"length": 6, "grace": 2})
def test_with_every_authority_stopped_the_network_delivers_until_the_document_expires(
        network: tuple[Topology, Path, subprocess.Popen[str]]) -> None:
    topology, state, _ = network
    # A first message makes alice's client cache the documents (the current and, after the
    # vote time, the next one).
    first = _send(state, "--from", "alice", "--to", "bob", "while the authorities run")
    assert first.returncode == 0, first.stderr
    epochs = topology.epoch
    # Stop the authorities just after an epoch's vote time, once the clients' and nodes' caches
    # can hold the next epoch's document: the network then has until that one expires.
    now = time.time()
    vote = epochs.start(epochs.epoch_at(now) + 1) - epochs.length / 2
    time.sleep(max(0.0, vote + 0.5 - now))
    pids = _authority_pids(state, topology)
    sent_during = _send(state, "--from", "alice", "--to", "bob", "just before the stop")
    assert sent_during.returncode == 0, sent_during.stderr
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # stopped, not gone: nothing answers, nothing is lost
    try:
        stopped_at = time.time()
        last_valid = epochs.erase_at(epochs.epoch_at(stopped_at) + 1)
        # Within the cached documents' lifetime the network keeps delivering.
        during = _send(state, "--from", "alice", "--to", "bob", "with no authority",
                       timeout=30.0)
        assert during.returncode == 0, during.stderr
        assert time.time() < last_valid
        # After the last cached document expired, a client says why it cannot send.
        time.sleep(max(0.0, last_valid + 0.5 - time.time()))
        after = _send(state, "--from", "alice", "--to", "bob", "too late", timeout=30.0)
        assert after.returncode == 1, (after.stdout, after.stderr)
        assert "no valid network document" in after.stderr, after.stderr
        assert "expired" in after.stderr, after.stderr
        stats = node_stats(state, topology)
        assert all(s["document_valid_seconds"] < 0 for s in stats.values()), stats
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    # The authorities back: the next document comes, and sending works again.
    deadline = time.time() + 3 * epochs.length
    while True:
        again = _send(state, "--from", "alice", "--to", "bob", "the authorities are back",
                      timeout=30.0)
        if again.returncode == 0 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert again.returncode == 0, again.stderr
