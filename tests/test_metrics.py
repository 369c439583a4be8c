"""A node's statistics: one schema (zmix.stats_schema) for the node, Prometheus and the docs."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from zmix import wire
from zmix.bench.common import free_ports, make_network
from zmix.envelope import Envelope, encode_envelope
from zmix.keys import load_directory, load_private
from zmix.runtime import links, metrics
from zmix.runtime.launcher import Launcher
from zmix.sphinx import Hop, answer_surb, create_forward_packet, create_surb
from zmix.topology import Topology

NODES = ("mix-a", "provider-1")


@dataclass
class Net:
    topology: Topology
    state: Path
    ports: dict[str, int]

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
    launcher.start()
    try:
        yield Net(topology, state, ports)
    finally:
        launcher.stop()


def test_deliveries_refused_for_a_full_mailbox_or_a_stranger_count_as_drops_by_reason(
        net: Net) -> None:
    """Plays alice, the provider's client: two messages and a SURB reply for her one slot,
    and a message for someone who is not the provider's client."""
    params, provider = net.topology.sphinx, net.topology.node("provider-1")
    alice = load_private(net.state, "alice")
    public = load_directory(net.state, net.topology)["provider-1"]
    route = [Hop(provider.id, public.public_key, 0)]
    packets = [create_forward_packet(params, route, alice.id, encode_envelope(
        params, Envelope(None, b"message %d" % i))) for i in range(2)]
    surb, _ = create_surb(params, route, alice.id, b"\x42" * 16)
    packets.append(answer_surb(params, surb, b"a reply")[1])
    packets.append(create_forward_packet(params, route, b"\x09" * 16, encode_envelope(
        params, Envelope(None, b"for a stranger"))))
    before = net.stats("provider-1")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = links.connect_dealer(ctx, provider.endpoint, public.curve_public, alice.curve_public,
                                alice.curve_private, b"\x07" * 16,
                                max_frame=wire.client_frame_limit(params, 8))
    try:
        for packet in packets:
            sock.send(wire.encode(wire.Packet(packet), params=params, slots=8))
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
