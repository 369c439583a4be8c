"""Links heal by themselves after a peer stalls past the heartbeat timeout (SIGSTOP, SIGCONT).

A stalled peer's links are closed by the heartbeat timeout and re-dialled; the re-dialled
connection must be taken by the receiving ROUTER, and the lost connection must show in a counter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from chain import Chain, start_chain
from zmq.utils.monitor import recv_monitor_message

from zmix import crypto
from zmix.bench.common import free_ports, make_network, network_launcher, play_node
from zmix.runtime import links
from zmix.runtime.client import ClientRuntime

# The heartbeat timeout closes a link to a stalled process within this long (the timeout runs
# from the first unanswered ZMTP PING, sent within a heartbeat interval), with room to spare.
STALL_MAX = (links.HEARTBEAT_TIMEOUT_MS + links.HEARTBEAT_MS) / 1000 + 2
STALL = links.HEARTBEAT_TIMEOUT_MS / 1000 + 2  # the client's provider is stopped this long
HEAL = 4 * links.HEARTBEAT_MS / 1000  # "within a few heartbeat periods"


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with start_chain(tmp_path, workers=1) as running:
        yield running


def messages(chain: Chain, count: int, timeout: float) -> list[bytes]:
    """Return the messages of the packets reaching provider-1 (``count`` at most)."""
    return [message for _, message in chain.receive(count, timeout)]


def test_a_re_dialled_link_is_heard_by_a_router_still_holding_the_lost_connection() -> None:
    # connect_dealer makes every link: node to node, client to provider, zmix-register's.
    server, peer = crypto.x25519_keypair(), crypto.x25519_keypair()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = links.start_authenticator(ctx, links.KeyGate({peer[0]: b"P" * 16}), "net")
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    limit = 1_024
    router = links.bind_router(ctx, endpoint, *server, "net", max_frame=limit)
    dealer = links.connect_dealer(ctx, endpoint, server[0], *peer, max_frame=limit)
    watch = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        _wait_event(watch, zmq.EVENT_HANDSHAKE_SUCCEEDED, 5)
        dealer.send(b"first")
        assert router.poll(5_000) and router.recv_multipart()[1] == b"first"  # the link works
        # A part longer than the ROUTER takes makes libzmq drop the connection; the ROUTER
        # deals with its end only when next read, and the DEALER re-dials before that.
        dealer.send(bytes(limit + 1))
        _wait_event(watch, zmq.EVENT_DISCONNECTED, 5)
        _wait_event(watch, zmq.EVENT_HANDSHAKE_SUCCEEDED, 5)
        dealer.send(b"after the re-dial")
        assert router.poll(3_000), "the ROUTER ignored the re-dialled connection"
        assert router.recv_multipart()[1] == b"after the re-dial"
    finally:
        dealer.disable_monitor()
        watch.close(linger=0)
        dealer.close(linger=0)
        router.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)  # closes a monitor socket a failed test left open


def test_a_node_s_links_count_handshakes_refusals_losses_and_frames_queued_while_down() -> None:
    server, node, stranger = (crypto.x25519_keypair() for _ in range(3))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = links.start_authenticator(ctx, links.KeyGate({node[0]: b"N" * 16}), "net")
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    limit = 1_024
    router = links.bind_router(ctx, endpoint, *server, "net", max_frame=limit)
    admitted = links.Links(ctx, *node, lambda _: (endpoint, server[0]), max_frame=limit)
    refused = links.Links(ctx, *stranger, lambda _: (endpoint, server[0]), max_frame=limit)
    poller = zmq.Poller()

    def until(out: links.Links, ok: Callable[[dict[str, int]], bool]) -> dict[str, int]:
        """Feed ``out`` its monitors' events until ``ok(out.statistics())``; fail after 5 s."""
        for monitor in out.take_new_sockets():
            poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + 5
        while not ok(stats := out.statistics()):
            assert time.monotonic() < deadline, stats
            out.on_events(dict(poller.poll(50)))
        return stats

    try:
        assert admitted.send(b"peer", b"first", time.monotonic())
        up = until(admitted, lambda s: s["link_handshakes"] == 1 and s["links_down"] == 0)
        assert router.poll(5_000) and router.recv_multipart()[1] == b"first"
        assert refused.send(b"peer", b"never read", time.monotonic())
        assert until(refused, lambda s: s["link_handshakes_failed"] >= 1)["links_down"] == 1
        assert admitted.send(b"peer", bytes(limit + 1), time.monotonic())  # the ROUTER drops it
        down = until(admitted, lambda s: s["link_disconnects"] == 1)
        assert up["link_disconnects"] == 0 and up["link_queued_while_down"] == 0
        assert admitted.send(b"peer", b"after the loss", time.monotonic())
        assert down["link_queued_while_down"] == 0
        again = until(admitted, lambda s: s["link_handshakes"] == 2 and s["links_down"] == 0)
        assert again["link_queued_while_down"] == 1 and again["link_handshakes_failed"] == 0
        assert router.poll(5_000) and router.recv_multipart()[1] == b"after the loss"
    finally:
        for out in (admitted, refused):
            out.close()
        router.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)  # closes a monitor socket a failed test left open


def test_a_link_refused_by_the_peers_gate_is_dialled_again_once_the_peer_admits_it() -> None:
    # At an epoch's change a node may dial a peer whose gate does not know it yet (the peer has
    # not got the document that lists it). libzmq does not try a refused handshake again by
    # itself; the link is closed and made anew after a backoff, so it comes up once admitted.
    server, node = crypto.x25519_keypair(), crypto.x25519_keypair()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gate = links.KeyGate({})
    auth = links.start_authenticator(ctx, gate, "net")
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    router = links.bind_router(ctx, endpoint, *server, "net", max_frame=1_024)
    out = links.Links(ctx, *node, lambda _: (endpoint, server[0]), max_frame=1_024)
    poller = zmq.Poller()

    def turn(now: float) -> dict[str, int]:
        for monitor in out.take_new_sockets():
            poller.register(monitor, zmq.POLLIN)
        out.on_events(dict(poller.poll(50)))
        for monitor in out.redial(now):  # closed: no longer polled
            poller.unregister(monitor)
        return out.statistics()

    try:
        assert out.send(b"peer", b"too early", time.monotonic())
        deadline = time.monotonic() + 5
        while turn(time.monotonic())["link_handshakes_failed"] < 1:
            assert time.monotonic() < deadline, out.statistics()
        assert not router.poll(200)  # refused: nothing arrives
        gate.add(node[0], b"N" * 16)  # the peer learns of the node
        deadline = time.monotonic() + 10
        while turn(time.monotonic())["link_handshakes"] < 1:
            assert time.monotonic() < deadline, out.statistics()
            out.send(b"peer", b"admitted now", time.monotonic())
        assert router.poll(5_000) and router.recv_multipart()[1] == b"admitted now"
        assert out.statistics()["links_down"] == 0
    finally:
        out.close()
        router.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)


def test_packets_held_on_a_link_down_longer_than_the_hold_are_dropped_and_counted_not_sent_late(
        ) -> None:
    # A next hop unreachable for long (a host's cable pulled) must not get, when it is back, a
    # burst of packets held past any delay the network allows: their keys may be erased by then
    # and their timing gives them away. The hold is loopix.max_delay; 0.5 s here.
    server, node = crypto.x25519_keypair(), crypto.x25519_keypair()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = links.start_authenticator(ctx, links.KeyGate({node[0]: b"N" * 16}), "net")
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"  # nobody listens there yet
    short = links.Links(ctx, *node, lambda _: (endpoint, server[0]), max_frame=1_024, hold=0.5)
    long = links.Links(ctx, *node, lambda _: (endpoint, server[0]), max_frame=1_024, hold=30)
    poller = zmq.Poller()
    router = None

    def turn(out: links.Links) -> dict[str, int]:
        for monitor in out.take_new_sockets():
            poller.register(monitor, zmq.POLLIN)
        out.on_events(dict(poller.poll(20)))
        for monitor in out.redial(time.monotonic()):
            poller.unregister(monitor)
        return out.statistics()

    try:
        for text in (b"held 1", b"held 2", b"held 3"):
            assert short.send(b"peer", text, time.monotonic())
        assert short.send(b"peer", b"heartbeat", time.monotonic(), packet=False)
        assert long.send(b"peer", b"held within the hold", time.monotonic())
        deadline = time.monotonic() + 5
        while turn(short)["dropped_link_down"] == 0:
            assert time.monotonic() < deadline, short.statistics()
        assert short.statistics()["dropped_link_down"] == 3  # packets only, not the heartbeat
        assert short.peers() == []  # closed with what it held
        router = links.bind_router(ctx, endpoint, *server, "net", max_frame=1_024)
        assert short.send(b"peer", b"after the hold", time.monotonic())  # dialled anew
        got = set()
        deadline = time.monotonic() + 10
        while got != {b"after the hold", b"held within the hold"}:
            assert time.monotonic() < deadline, got
            turn(short)
            turn(long)
            if router.poll(50):
                got.add(router.recv_multipart()[1])
        assert not router.poll(300), "a packet held past the hold was sent late"
        assert long.statistics()["dropped_link_down"] == 0  # the control: held, then sent
        assert short.statistics()["dropped_link_down"] == 3
    finally:
        for out in (short, long):
            out.close()
        if router is not None:
            router.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)


@pytest.mark.slow  # 7 s: past one heartbeat time-out while the peer talks back
def test_a_next_hop_that_talks_back_on_a_link_neither_stalls_nor_drops_it() -> None:
    # Nothing legitimate comes back on a node's outbound link. Left unread, what a peer sends
    # anyway fills the link's queue; libzmq then stops reading the connection, heartbeats
    # included, and drops it at the heartbeat time-out, again and again.
    server, node = crypto.x25519_keypair(), crypto.x25519_keypair()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = links.start_authenticator(ctx, links.KeyGate({node[0]: b"N" * 16}), "net")
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    router = links.bind_router(ctx, endpoint, *server, "net", max_frame=1_024)
    out = links.Links(ctx, *node, lambda _: (endpoint, server[0]), max_frame=1_024)
    poller = zmq.Poller()
    try:
        assert out.send(b"peer", b"first", time.monotonic())
        assert router.poll(5_000)
        routing_id, _ = router.recv_multipart()
        received = 0
        end = time.monotonic() + (links.HEARTBEAT_TIMEOUT_MS + 2 * links.HEARTBEAT_MS) / 1000
        while time.monotonic() < end:
            with contextlib.suppress(zmq.Again):
                router.send_multipart([routing_id, b"talking back"], zmq.NOBLOCK)
            for sock in out.take_new_sockets():
                poller.register(sock, zmq.POLLIN)
            out.on_events(dict(poller.poll(10)))
            out.send(b"peer", b"packet", time.monotonic())
            while router.poll(0):
                router.recv_multipart()
                received += 1
        stats = out.statistics()
        assert stats["link_disconnects"] == 0 and stats["links_down"] == 0, stats
        assert stats["link_frames_discarded"] > links.NODE_LINK_RCVHWM  # read, and discarded
        assert received > 100  # packets kept flowing the whole time
    finally:
        out.close()
        router.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)


_FIRST_IDENTITY = """
import zmq
from zmix import crypto
from zmix.bench.common import free_ports
from zmix.runtime import links
ctx = zmq.Context()
server, peer = crypto.x25519_keypair(), crypto.x25519_keypair()
auth = links.start_authenticator(ctx, links.KeyGate({peer[0]: b"P" * 16}), "net")
endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
router = links.bind_router(ctx, endpoint, *server, "net", max_frame=1024)
dealer = links.connect_dealer(ctx, endpoint, server[0], *peer, max_frame=1024)
dealer.send(b"x")
print(router.recv_multipart()[0].hex() if router.poll(5000) else "nothing")
for sock in (dealer, router):
    sock.close(linger=0)
auth.stop()
ctx.term()
"""


def test_the_routing_identity_a_router_gives_first_cannot_be_known_in_advance() -> None:
    # libzmq numbers the identities a ROUTER gives from a rand() value; a peer that knew the
    # next one could claim it first, and libzmq aborts the process when it then makes it.
    firsts = [subprocess.run([sys.executable, "-c", _FIRST_IDENTITY], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
              for _ in range(2)]
    for first in firsts:  # given by the ROUTER (the DEALER sent none): a zero byte, 32 bits
        assert len(first) == 10 and first.startswith("00"), firsts
    assert firsts[0] != firsts[1]  # the same in every process before: 00e43c9869 here


def test_packets_flow_again_after_the_middle_node_stalled_past_the_heartbeat_timeout(
        chain: Chain) -> None:
    chain.send(chain.packet(b"before the stall"))
    assert messages(chain, 1, timeout=10) == [b"before the stall"]  # the chain works
    before = chain.stats("mix-a")
    # The far end of mix-b's link (the test's ROUTER, as provider-1) is watched, not read, until
    # the packets after the stall are awaited: like a busy node, it deals with the lost
    # connection's end only when it next reads, and by then the re-dialled connection is there.
    # A re-dial that presented the lost connection's routing identity again was ignored for
    # good; only the ROUTER's own heartbeat saw the loss.
    watch = chain.inbox.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    middle = chain.launcher.pids()["mix-b"]
    os.kill(middle, signal.SIGSTOP)
    try:
        _wait_event(watch, zmq.EVENT_DISCONNECTED, STALL_MAX)  # provider-1 dropped mix-b
        down = chain.wait_stats(  # and mix-a dropped its link to mix-b
            "mix-a", lambda s: s["link_disconnects"] > before["link_disconnects"],
            "lost link to mix-b", STALL_MAX)
        chain.send(chain.packet(b"during the stall"))  # queued on mix-a's link while it is down
        chain.wait_stats(
            "mix-a", lambda s: s["link_queued_while_down"] > down["link_queued_while_down"],
            "frame queued while the link is down")
    finally:
        os.kill(middle, signal.SIGCONT)
    _wait_event(watch, zmq.EVENT_HANDSHAKE_SUCCEEDED, HEAL)  # mix-b re-dialled provider-1
    up = chain.wait_stats(  # mix-a re-dialled mix-b
        "mix-a", lambda s: s["link_handshakes"] > down["link_handshakes"] and s["links_down"] == 0,
        "re-dialled link to mix-b", HEAL)
    chain.inbox.disable_monitor()
    watch.close(linger=0)
    chain.send(chain.packet(b"after the stall"))
    got = messages(chain, 2, timeout=HEAL)
    assert sorted(got) == [b"after the stall", b"during the stall"], (
        "the packets sent after the links dropped did not arrive")
    assert up["link_disconnects"] == before["link_disconnects"] + 1


@pytest.mark.slow  # about 10 s; the re-dial test above covers this link's socket at once
def test_a_client_fetches_again_after_its_provider_stalled_past_the_heartbeat_timeout(
        tmp_path: Path) -> None:
    topology, state = make_network(
        tmp_path, layers=(("mix-a",),), providers=("provider-1",), clients={"alice": "provider-1"},
        loopix={"mix_loop_rate": 0.0, "fetch_interval": 60.0}, workers=1)
    # provider-1 runs; mix-a is only published (the provider's network needs its layer).
    def publish() -> None:
        play_node(state, topology, "mix-a")

    launcher = network_launcher(state, topology, ["provider-1"], allow=["provider-1", "mix-a"])
    launcher.start(on_authority_up=lambda _: publish())
    provider = launcher.pids()["provider-1"]
    try:
        with ClientRuntime(state, "alice") as client:
            client.fetch_now()
            assert client.run_until(lambda: client.fetches == 1, timeout=10)  # it answers
            os.kill(provider, signal.SIGSTOP)
            try:
                client.run_until(lambda: False, timeout=STALL)  # the client keeps running
            finally:
                os.kill(provider, signal.SIGCONT)
            client.fetch_now()
            assert client.run_until(lambda: client.fetches >= 2, timeout=HEAL), (
                "the provider never answered the client's re-dialled link")
    finally:
        os.kill(provider, signal.SIGCONT)
        launcher.stop()


def _wait_event(monitor: zmq.Socket[bytes], event: int, timeout: float) -> None:
    """Read ``monitor`` until ``event`` comes; fail if it does not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if monitor.poll(int(left * 1000) + 1) and (
                recv_monitor_message(monitor)["event"] == event):
            return
    raise AssertionError(f"no socket event {event:#x} within {timeout} s")


def test_frames_sent_together_arrive_in_order_and_are_held_and_dropped_like_single_sends(
        ) -> None:
    # The node loop sends a round of results' packets per next hop in one call: the link must
    # keep their order, and count them as held while it is down exactly as one send at a time.
    server, node = crypto.x25519_keypair(), crypto.x25519_keypair()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = links.start_authenticator(ctx, links.KeyGate({node[0]: b"N" * 16}), "net")
    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"  # nobody listens there yet
    out = links.Links(ctx, *node, lambda peer: (endpoint, server[0]) if peer == b"peer" else None,
                      max_frame=1_024, hold=0.5)
    poller = zmq.Poller()
    router = None

    def turn() -> dict[str, int]:
        for sock in out.take_new_sockets():
            poller.register(sock, zmq.POLLIN)
        out.on_events(dict(poller.poll(20)))
        for sock in out.redial(time.monotonic()):
            poller.unregister(sock)
        return out.statistics()

    try:
        assert out.send_frames(b"nobody", [b"x"], time.monotonic()) == 0  # not a next hop
        assert out.send_frames(b"peer", [b"held 1", b"held 2", b"held 3"], time.monotonic()) == 3
        deadline = time.monotonic() + 5
        while turn()["dropped_link_down"] == 0:
            assert time.monotonic() < deadline, out.statistics()
        assert out.statistics()["dropped_link_down"] == 3  # all three, as three sends would be
        router = links.bind_router(ctx, endpoint, *server, "net", max_frame=1_024)
        frames = [f"packet {i}".encode() for i in range(20)]
        assert out.send_frames(b"peer", frames, time.monotonic()) == len(frames)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < len(frames):
            assert time.monotonic() < deadline, got
            turn()
            if router.poll(50):
                got.append(router.recv_multipart()[1])
        assert got == frames
        assert b"peer" in out.last_sent and out.statistics()["dropped_link_down"] == 3
    finally:
        out.close()
        if router is not None:
            router.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)
