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
from zmix.bench.common import make_network
from zmix.keys import load_directory
from zmix.runtime import links, metrics
from zmix.runtime.launcher import Launcher
from zmix.topology import Topology

CLIENTS = {"alice": "provider-1", "bob": "provider-2"}


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Topology, Path, Launcher]]:
    topology, state = make_network(tmp_path, clients=CLIENTS, loopix={
        "payload_rate": 50.0, "mean_delay": 0.002, "fetch_interval": 0.05})
    launcher = Launcher(state, list(topology.nodes()))
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
    time.sleep(0.7)  # part of the burst is stored and acknowledged
    assert sender.poll() is None, "the burst was over before the kill"
    kill_and_restart(state, launcher, "provider-2")
    assert sender.wait(240) == 0, sender.stderr.read() if sender.stderr else b""
    # Every fragment is acknowledged, so every fragment is on disk: kill again before bob looks.
    kill_and_restart(state, launcher, "provider-2")
    done = cli(state, "zmix.cli.recv", "--as", "bob", "--json", "--wait", "30")
    lines = [line for line in done.stdout.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and '"bytes": 160000' in lines[0], done.stderr.decode()
    again = cli(state, "zmix.cli.recv", "--as", "bob", "--json")
    assert again.stdout.strip() == b""  # nothing twice


def test_a_message_waits_for_a_recipient_who_comes_online_later(
        network: tuple[Topology, Path, Launcher]) -> None:
    _, state, _ = network
    sent = cli(state, "zmix.cli.send", "--from", "alice", "--to", "bob", "stored for later")
    assert sent.returncode == 0, sent.stderr.decode()
    time.sleep(1.0)  # bob is still offline
    got = cli(state, "zmix.cli.recv", "--as", "bob")
    assert b"from alice: stored for later" in got.stdout


def test_a_client_with_the_wrong_key_gets_nothing(
        network: tuple[Topology, Path, Launcher]) -> None:
    topology, state, _ = network
    sent = cli(state, "zmix.cli.send", "--from", "alice", "--to", "bob", "not for mallory")
    assert sent.returncode == 0, sent.stderr.decode()
    directory = load_directory(state, topology)
    provider = topology.node("provider-2")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    alice_keys = load_directory(state, topology)["alice"]
    intruders = [crypto.x25519_keypair()]  # a key nobody knows
    try:
        for public, private in intruders:
            sock = links.connect_dealer(ctx, provider.endpoint,
                                        directory["provider-2"].curve_public, public, private,
                                        max_frame=wire.client_frame_limit(topology.sphinx, 8))
            sock.send(wire.encode(wire.Fetch(1), params=topology.sphinx, slots=8))
            assert sock.poll(1500) == 0  # no answer at all
            sock.close(linger=0)
    finally:
        ctx.term()
    stats = metrics.statistics(state, "provider-2") or {}
    assert stats.get("auth_denied", 0) >= 1
    assert alice_keys.curve_public != directory["bob"].curve_public
    got = cli(state, "zmix.cli.recv", "--as", "bob")
    assert b"from alice: not for mallory" in got.stdout  # still there for bob


def test_another_providers_client_cannot_fetch_here(
        network: tuple[Topology, Path, Launcher]) -> None:
    topology, state, _ = network
    from zmix.keys import load_private

    alice = load_private(state, "alice")  # a real client, but of provider-1
    directory = load_directory(state, topology)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = links.connect_dealer(ctx, topology.node("provider-2").endpoint,
                                    directory["provider-2"].curve_public, alice.curve_public,
                                    alice.curve_private,
                                    max_frame=wire.client_frame_limit(topology.sphinx, 8))
        sock.send(wire.encode(wire.Fetch(1), params=topology.sphinx, slots=8))
        assert sock.poll(1500) == 0
        sock.close(linger=0)
    finally:
        ctx.term()
