"""Real node processes: what a node promises about shutdown, heartbeats and RELAY frames.

Each test checks a sentence of docs/operations.md ("The node loop") or docs/protocol.md
("Frames", "Heartbeats and reconnection"), with the numbers those pages give, and observes every
refusal (a counter moving, a log line) next to the same path succeeding.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from chain import Chain, start_chain

from zmix import crypto, wire
from zmix.bench.common import (
    PlayedNode,
    fetch_network,
    hops_at,
    make_network,
    play_node,
    start_authorities,
)
from zmix.keys import PrivateIdentity, load_directory, load_private
from zmix.network import Network
from zmix.runtime import links, metrics
from zmix.runtime.launcher import Launcher
from zmix.sphinx import ForwardHop, create_forward_packet
from zmix.topology import Topology

HEARTBEAT_INTERVAL = 1.0  # docs/protocol.md: a HEARTBEAT on a link that sent nothing for 1 s
PEER_ALIVE = 5.0  # docs/protocol.md: peers_alive counts peers heard from within 5 s
REFRESH = 0.25  # docs/operations.md: statistics are refreshed four times a second


def wait_stats(state: Path, name: str, ok: Callable[[dict[str, float]], bool], what: str,
               timeout: float = 10.0) -> dict[str, float]:
    """Return ``name``'s statistics once ``ok`` holds; fail naming ``what`` and the last values
    read when it does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        stats = metrics.statistics(state, name)
        if stats is not None and ok(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: no {what} within {timeout} s; last values: {stats}")
        time.sleep(0.05)


# ---------------------------------------------------------------------- drain_on_shutdown


def _stop_with_queued_packets(chain: Chain, count: int) -> tuple[float, str]:
    """Queue ``count`` packets at mix-a (20 s delay), SIGTERM mix-a; return the time it exited
    and its log."""
    chain.send(chain.packet(b"warm-up"))  # the workers are up: the next packets get queued
    assert [m for _, m in chain.receive(1)] == [b"warm-up"]
    for i in range(count):
        chain.send(chain.packet(f"queued {i}".encode(), delays=(20.0, 0.0)))
    wait_stats(chain.state, "mix-a", lambda s: s["queue_depth"] == count,
               f"{count} packets in mix-a's delay queue")
    proc = chain.launcher.children["mix-a"].proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    stopped = time.monotonic()
    return stopped, (chain.state / "nodes" / "mix-a" / "node.log").read_text()


def test_with_drain_on_shutdown_queued_packets_are_sent_at_once_on_sigterm(
        tmp_path: Path) -> None:
    with start_chain(tmp_path, node={"drain_on_shutdown": True}) as chain:
        stopped, log = _stop_with_queued_packets(chain, 5)
        got = chain.receive(5, timeout=10)
        # All five, and long before their 20 s delay at mix-a was over.
        assert sorted(m for _, m in got) == [f"queued {i}".encode() for i in range(5)]
        assert all(arrival - stopped < 5.0 for arrival, _ in got)
        assert "shutdown: 5 queued packets sent" in log


def test_without_drain_on_shutdown_queued_packets_are_dropped_and_logged(
        tmp_path: Path) -> None:
    # docs/operations.md: dropped and counted as dropped_shutdown. The counter dies with the
    # process (its control socket closes first), so what can be seen is the log's count.
    with start_chain(tmp_path, node={"drain_on_shutdown": False}) as chain:
        _, log = _stop_with_queued_packets(chain, 5)
        assert "shutdown: 5 queued packets dropped" in log
        assert chain.receive(5, timeout=2.0) == []  # a drained packet takes milliseconds


# ---------------------------------------------------------------------- heartbeats, peers_alive


def _inbox_frames(chain: Chain, until: float) -> list[tuple[float, wire.Frame]]:
    """Return ``(arrival, frame)`` for every frame reaching the test's provider-1 until
    ``until`` (a monotonic time)."""
    got: list[tuple[float, wire.Frame]] = []
    while (left := until - time.monotonic()) > 0:
        if chain.inbox.poll(int(left * 1000) + 1):
            _, data = chain.inbox.recv_multipart()
            got.append((time.monotonic(),
                        wire.decode(data, params=chain.topology.sphinx, slots=8)))
    return got


def _heartbeats(frames: list[tuple[float, wire.Frame]]) -> int:
    return sum(1 for _, frame in frames if isinstance(frame, wire.Heartbeat))


def test_an_idle_link_carries_heartbeats_that_keep_the_peer_alive_until_the_sender_stops(
        chain: Chain) -> None:
    chain.send(chain.packet(b"warm-up"))  # the workers are up, the links made
    assert [m for _, m in chain.receive(1)] == [b"warm-up"]
    # A busy link needs none: mix-b's link to provider-1 carries a packet every 0.25 s.
    start = time.monotonic()
    busy: list[tuple[float, wire.Frame]] = []
    for i in range(8):
        chain.send(chain.packet(f"busy {i}".encode()))
        busy += _inbox_frames(chain, start + (i + 1) * 0.25)
    busy += _inbox_frames(chain, time.monotonic() + 0.1)
    assert sum(1 for _, f in busy if isinstance(f, wire.Packet)) == 8
    assert _heartbeats(busy) == 0
    last_packet = time.monotonic()
    # Idle now: both links (mix-a -> mix-b, mix-b -> provider-1) get a HEARTBEAT every second,
    # and mix-b still counts mix-a as alive after PEER_ALIVE without a packet from it.
    idle = _inbox_frames(chain, last_packet + PEER_ALIVE + 2 * REFRESH)
    assert _heartbeats(idle) >= PEER_ALIVE / HEARTBEAT_INTERVAL - 1
    assert all(isinstance(f, wire.Heartbeat) for _, f in idle)
    beats = [t for t, f in idle if isinstance(f, wire.Heartbeat)]
    assert max(b - a for a, b in itertools.pairwise(beats)) < 2 * HEARTBEAT_INTERVAL
    alive = chain.stats("mix-b")
    assert alive["peers_alive"] == 1
    assert alive["heartbeats_received"] >= PEER_ALIVE / HEARTBEAT_INTERVAL - 1
    assert alive["received"] == 9  # heartbeats are not packets
    # The sender stops: mix-b stops counting it within PEER_ALIVE (and one refresh).
    proc = chain.launcher.children["mix-a"].proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    stopped = time.monotonic()
    gone = wait_stats(chain.state, "mix-b", lambda s: s["peers_alive"] == 0,
                      "mix-a no longer alive", timeout=PEER_ALIVE + 4 * REFRESH)
    assert gone["heartbeats_received"] >= alive["heartbeats_received"]
    assert time.monotonic() - stopped >= 1.0  # not at once: a second without a frame is alive


# ---------------------------------------------------------------------- RELAY


@dataclass
class RelayNet:
    """provider-1 as a process, with its client alice; the test plays mix-a (and alice)."""

    topology: Topology
    state: Path
    ctx: zmq.Context[zmq.Socket[bytes]]
    mix_a: zmq.Socket[bytes]  # the ROUTER bound on mix-a's address
    mix_a_keys: PrivateIdentity
    played: PlayedNode  # mix-a, published to the authority like a running node
    network: Network  # of the authority's document

    def dealer(self, name: str) -> zmq.Socket[bytes]:
        """Connect to provider-1 with ``name``'s CURVE keys."""
        keys = load_private(self.state, name)
        server = load_directory(self.state, self.topology)["provider-1"].curve_public
        return links.connect_dealer(
            self.ctx, self.topology.node("provider-1").endpoint, server, keys.curve_public,
            keys.curve_private, max_frame=wire.client_frame_limit(self.topology.sphinx, 8))

    def packet(self, message: bytes) -> bytes:
        """A packet for the route mix-a -> provider-1 (it could be a reply block's answer)."""
        route = hops_at(self.network, ("mix-a", "provider-1"), (0.0, 0.0))
        alice = self.topology.client("alice").id
        return create_forward_packet(self.topology.sphinx, route, alice, message)

    def relay(self, first_hop: bytes, packet: bytes) -> bytes:
        return wire.encode_client(wire.Relay(first_hop, packet), params=self.topology.sphinx)

    def arrivals(self, timeout: float, count: int = 1) -> list[bytes]:
        """Return the packets of the PACKET frames reaching mix-a within ``timeout`` seconds
        (``count`` at most; heartbeats are skipped)."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and (left := deadline - time.monotonic()) > 0:
            if self.mix_a.poll(int(left * 1000) + 1):
                _, data = self.mix_a.recv_multipart()
                frame = wire.decode(data, params=self.topology.sphinx, slots=8)
                if isinstance(frame, wire.Packet):
                    assert len(data) == 2 + self.topology.sphinx.packet_length  # node form
                    got.append(frame.packet)
        return got

    def stats(self) -> dict[str, float]:
        values = metrics.statistics(self.state, "provider-1")
        assert values is not None, "provider-1 does not answer on its control socket"
        return values


@pytest.fixture
def relay_net(tmp_path: Path) -> Iterator[RelayNet]:
    topology, state = make_network(tmp_path, layers=(("mix-a",),), providers=("provider-1",),
                                   clients={"alice": "provider-1"},
                                   loopix={"mix_loop_rate": 0.0})
    directory = load_directory(state, topology)
    mix_a = load_private(state, "mix-a")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gate = links.KeyGate({directory["provider-1"].curve_public: topology.node("provider-1").id})
    auth = links.start_authenticator(ctx, gate, topology.network)
    router = links.bind_router(ctx, topology.node("mix-a").endpoint, mix_a.curve_public,
                               mix_a.curve_private, topology.network,
                               max_frame=wire.node_frame_limit(topology.sphinx))
    authorities = start_authorities(state, topology)  # allows mix-a and provider-1
    launcher = Launcher(state, [topology.node("provider-1")])
    try:
        played = play_node(state, topology, "mix-a")
        launcher.start()
        yield RelayNet(topology, state, ctx, router, mix_a, played, fetch_network(state, topology))
    finally:
        launcher.stop()
        authorities.stop()
        router.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)


def test_a_clients_relay_is_passed_unprocessed_to_its_first_hop_at_once(
        relay_net: RelayNet) -> None:
    net = relay_net
    before = net.stats()
    alice = net.dealer("alice")
    packet = net.packet(b"through a reply block")
    sent_at = time.monotonic()
    alice.send(net.relay(net.topology.node("mix-a").id, packet))
    [forwarded] = net.arrivals(timeout=5)
    assert time.monotonic() - sent_at < 1.0  # not held for any delay
    assert forwarded == packet  # byte for byte: provider-1 did not process it
    # It is still the packet alice made: mix-a can process it, and it goes on to provider-1.
    hop = net.played.open(forwarded)
    assert isinstance(hop, ForwardHop) and hop.next_hop == net.topology.node("provider-1").id
    after = wait_stats(net.state, "provider-1", lambda s: s["relayed"] > before["relayed"],
                       "RELAY counted")
    assert after["relayed"] == before["relayed"] + 1
    assert after["client_frames"] == before["client_frames"] + 1
    assert after["received"] == before["received"]  # not taken in as a packet to process
    assert after["link_send_failed"] == before["link_send_failed"]
    alice.close(linger=0)


def test_a_relay_to_a_next_hop_that_is_not_a_node_is_counted_as_link_send_failed(
        relay_net: RelayNet) -> None:
    net = relay_net
    alice = net.dealer("alice")
    before = net.stats()
    for first_hop in (net.topology.client("alice").id, crypto.random_bytes(16)):
        alice.send(net.relay(first_hop, net.packet(b"to nowhere")))
    failed = wait_stats(net.state, "provider-1",
                        lambda s: s["link_send_failed"] >= before["link_send_failed"] + 2,
                        "two failed sends")
    assert failed["link_send_failed"] == before["link_send_failed"] + 2
    assert failed["client_frames"] == before["client_frames"] + 2
    assert failed["sent"] == before["sent"]
    # The same client, the same link, a node as first hop: passed on.
    packet = net.packet(b"to mix-a")
    alice.send(net.relay(net.topology.node("mix-a").id, packet))
    assert net.arrivals(timeout=5) == [packet]  # the first to reach mix-a
    alice.close(linger=0)


def test_a_relay_from_a_node_is_dropped_as_bad_frame_and_not_passed_on(
        relay_net: RelayNet) -> None:
    net = relay_net
    node = net.dealer("mix-a")  # a node of the topology: its key passes the handshake
    before = net.stats()
    node.send(net.relay(net.topology.node("mix-a").id, net.packet(b"from a node")))
    dropped = wait_stats(net.state, "provider-1",
                         lambda s: s["dropped_bad_frame"] > before["dropped_bad_frame"],
                         "RELAY from a node dropped")
    assert dropped["dropped_bad_frame"] == before["dropped_bad_frame"] + 1
    assert dropped["relayed"] == before["relayed"]
    assert dropped["client_frames"] == before["client_frames"]
    # The same RELAY from provider-1's client is passed on, and it is the only one to arrive.
    packet = net.packet(b"from alice")
    alice = net.dealer("alice")
    alice.send(net.relay(net.topology.node("mix-a").id, packet))
    assert net.arrivals(timeout=5) == [packet]  # the first to reach mix-a: the node's was not
    node.close(linger=0)
    alice.close(linger=0)


def test_a_relay_sent_to_a_mixnode_is_dropped_as_bad_frame(chain: Chain) -> None:
    # The test plays provider-1, a node: mix-a takes its packets but no control frame.
    before = chain.stats("mix-a")
    relay = wire.encode_client(
        wire.Relay(chain.topology.node("mix-b").id, chain.packet(b"relay me")),
        params=chain.topology.sphinx)
    chain.outbox.send(relay)
    dropped = wait_stats(chain.state, "mix-a",
                         lambda s: s["dropped_bad_frame"] > before["dropped_bad_frame"],
                         "RELAY dropped at mix-a")
    assert dropped["dropped_bad_frame"] == before["dropped_bad_frame"] + 1
    assert dropped["relayed"] == 0 and dropped["received"] == before["received"]
    chain.send(chain.packet(b"a packet on the same link"))
    # The first to arrive: the RELAY went nowhere before it.
    assert [m for _, m in chain.receive(1)] == [b"a packet on the same link"]


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with start_chain(tmp_path) as running:
        yield running
