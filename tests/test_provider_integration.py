"""A real provider process: durability across SIGKILL, offline recipients, wrong keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from zmix import crypto, wire
from zmix.bench.common import make_network, network_launcher
from zmix.keys import load_directory, load_private
from zmix.runtime import links, metrics
from zmix.runtime.launcher import Launcher
from zmix.topology import Topology

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Topology, Path, Launcher]]:
    topology, state = make_network(tmp_path, clients=CLIENTS, loopix={
        "payload_rate": 50.0, "mean_delay": 0.002, "fetch_interval": 0.05})
    launcher = network_launcher(state, topology)  # the authority first, then every node
    launcher.start()
    try:
        yield topology, state, launcher
    finally:
        launcher.stop()


def cli(state: Path, module: str, *args: str, stdin: bytes | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", module, "--state", str(state), *args],
                          input=stdin, capture_output=True, timeout=timeout, check=False)


def kill_and_restart(state: Path, launcher: Launcher, name: str) -> None:
    os.kill(launcher.pids()[name], signal.SIGKILL)
    launcher.children[name].proc.wait()
    launcher.watch(time.monotonic())  # notices the death
    launcher.watch(time.monotonic() + 60)  # starts it again
    deadline = time.monotonic() + 30
    while metrics.query(state, name, "ping", 0.2) != "pong":
        assert time.monotonic() < deadline, f"{name} did not come back"


def test_sigkill_during_a_burst_loses_no_acknowledged_message_and_repeats_none(
        network: tuple[Topology, Path, Launcher]) -> None:
    _, state, launcher = network
    data = os.urandom(160_000)  # about a hundred fragments: two seconds at lambda_P = 50
    sender = subprocess.Popen(
        [sys.executable, "-m", "zmix.cli.send", "--state", str(state), "--from", "alice",
         "--to", "bob", "--timeout", "240"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sender.stdin is not None
    sender.stdin.write(data)
    sender.stdin.close()
    deadline = time.monotonic() + 60  # part of the burst is stored and acknowledged
    while (metrics.statistics(state, "provider-2") or {}).get("provider_acks_sent", 0) < 10:
        assert sender.poll() is None, "zmix-send exited before 10 fragments were acknowledged"
        assert time.monotonic() < deadline, "provider-2 acknowledged no 10 fragments in 60 s"
        time.sleep(0.05)
    assert sender.poll() is None, "the burst was over before the kill"
    kill_and_restart(state, launcher, "provider-2")
    assert sender.wait(240) == 0, sender.stderr.read() if sender.stderr else b""
    # Every fragment is acknowledged, so every fragment is on disk: kill again before bob looks.
    kill_and_restart(state, launcher, "provider-2")
    done = cli(state, "zmix.cli.recv", "--as", "bob", "--json", "--wait", "30")
    lines = [line for line in done.stdout.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and '"bytes": 160000' in lines[0], done.stderr.decode()
    again = cli(state, "zmix.cli.recv", "--as", "bob", "--json")
    assert again.returncode == 3, again.stderr.decode()  # 3: it asked, and nothing was shown
    assert again.stdout.strip() == b""  # nothing twice


def test_a_message_waits_for_a_recipient_who_comes_online_later(
        network: tuple[Topology, Path, Launcher]) -> None:
    _, state, _ = network
    sent = cli(state, "zmix.cli.send", "--from", "alice", "--to", "bob", "stored for later")
    assert sent.returncode == 0, sent.stderr.decode()
    # Acknowledged, so stored while bob is offline: the message waits in provider-2's mailbox
    # (the statistics are refreshed four times a second).
    deadline = time.monotonic() + 5
    while (metrics.statistics(state, "provider-2") or {}).get("mailbox_items") != 1:
        assert time.monotonic() < deadline, "provider-2's mailbox does not hold the message"
        time.sleep(0.05)
    got = cli(state, "zmix.cli.recv", "--as", "bob")
    assert b"from alice: stored for later" in got.stdout


def _client_link(ctx: zmq.Context[zmq.Socket[bytes]], topology: Topology, state: Path,
                 provider: str, public: bytes, private: bytes) -> zmq.Socket[bytes]:
    """A client's DEALER to ``provider`` with the CURVE keys ``public``, ``private``."""
    server = load_directory(state, topology)[provider].curve_public
    return links.connect_dealer(ctx, topology.node(provider).endpoint, server, public, private,
                                max_frame=wire.client_frame_limit(topology.sphinx, 8))


def _send_fetch(sock: zmq.Socket[bytes], topology: Topology, request_id: int) -> None:
    """Send a FETCH that acknowledges nothing."""
    sock.send(wire.encode_client(wire.Fetch(request_id), params=topology.sphinx))


def _fetch(sock: zmq.Socket[bytes], topology: Topology, request_id: int,
           timeout: float) -> wire.FetchReply | None:
    """Send a FETCH that acknowledges nothing; return its answer, None if none came."""
    _send_fetch(sock, topology, request_id)
    if not sock.poll(int(timeout * 1000)):
        return None
    reply = wire.decode(sock.recv(), params=topology.sphinx, slots=8)
    assert isinstance(reply, wire.FetchReply) and reply.request_id == request_id
    return reply


def _wait_denied(state: Path, provider: str, before: float) -> None:
    """Return once ``provider`` counted a refused CURVE handshake beyond ``before``."""
    deadline = time.monotonic() + 10
    while True:
        stats = metrics.statistics(state, provider)
        if stats is not None and stats["auth_denied"] > before:
            return
        assert time.monotonic() < deadline, f"{provider} refused no handshake in 10 s: {stats}"
        time.sleep(0.05)


def _auth_denied(state: Path, provider: str) -> float:
    stats = metrics.statistics(state, provider)
    assert stats is not None, f"{provider} does not answer on its control socket"
    return stats["auth_denied"]


def test_a_client_with_the_wrong_key_gets_nothing(
        network: tuple[Topology, Path, Launcher]) -> None:
    topology, state, _ = network
    sent = cli(state, "zmix.cli.send", "--from", "alice", "--to", "bob", "not for mallory")
    assert sent.returncode == 0, sent.stderr.decode()
    bob = load_private(state, "bob")
    denied = _auth_denied(state, "provider-2")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        mallory = _client_link(ctx, topology, state, "provider-2", *crypto.x25519_keypair())
        _send_fetch(mallory, topology, 1)
        _wait_denied(state, "provider-2", denied)  # a key nobody knows: refused at once
        assert not mallory.poll(300), "a FETCH on a refused link was answered"
        mallory.close(linger=0)
        # The same FETCH, on the same path, with bob's key: answered, with the message.
        link = _client_link(ctx, topology, state, "provider-2", bob.curve_public,
                            bob.curve_private)
        reply = _fetch(link, topology, 2, timeout=10)
        assert reply is not None, "bob's FETCH was not answered"
        assert len(reply.items) == 1
        link.close(linger=0)
    finally:
        ctx.destroy(linger=0)
    got = cli(state, "zmix.cli.recv", "--as", "bob")
    assert b"from alice: not for mallory" in got.stdout  # not acknowledged: still there


def test_another_providers_client_cannot_fetch_here(
        network: tuple[Topology, Path, Launcher]) -> None:
    topology, state, _ = network
    alice = load_private(state, "alice")  # a real client, but of provider-1
    keys = (alice.curve_public, alice.curve_private)
    denied = _auth_denied(state, "provider-2")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        elsewhere = _client_link(ctx, topology, state, "provider-2", *keys)
        _send_fetch(elsewhere, topology, 1)
        _wait_denied(state, "provider-2", denied)
        assert not elsewhere.poll(300), "provider-2 answered a client of provider-1"
        elsewhere.close(linger=0)
        # The same client and FETCH at its own provider: answered.
        home = _client_link(ctx, topology, state, "provider-1", *keys)
        reply = _fetch(home, topology, 2, timeout=10)
        assert reply is not None, "provider-1 did not answer its own client"
        home.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def test_a_nodes_fetch_is_dropped_as_bad_frame_and_not_answered(
        network: tuple[Topology, Path, Launcher]) -> None:
    # A node passes the handshake (its key is admitted) but is nobody's client: a control
    # frame from it is dropped (docs/protocol.md, "Frames").
    topology, state, _ = network
    before = metrics.statistics(state, "provider-2")
    assert before is not None
    node = load_private(state, "mix-a1")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = _client_link(ctx, topology, state, "provider-2", node.curve_public,
                            node.curve_private)
        _send_fetch(sock, topology, 1)
        deadline = time.monotonic() + 10
        while True:
            after = metrics.statistics(state, "provider-2")
            if after is not None and after["dropped_bad_frame"] > before["dropped_bad_frame"]:
                break
            assert time.monotonic() < deadline, f"no bad_frame drop in 10 s: {after}"
            time.sleep(0.05)
        assert not sock.poll(300), "a node's FETCH was answered"
        assert after["provider_fetches"] == before["provider_fetches"]
        assert after["auth_denied"] == before["auth_denied"]  # it was let in, then dropped
    finally:
        ctx.destroy(linger=0)
