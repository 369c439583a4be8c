"""ClientRuntime driven from a poll loop that is not its own, against real node processes.

A long-running client daemon registers the runtime's sockets in its own ``zmq.Poller`` and calls
``on_readable`` / ``on_timer`` itself; these tests do exactly that, with no ``step`` or
``run_until``, on a small real network (one mixnode, one provider, both clients on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import zmq

from zmix.bench.common import make_network, network_launcher
from zmix.client import ReceivedMessage
from zmix.runtime.client import ClientRuntime
from zmix.stats_schema import client_names

FETCH_INTERVAL = 0.05


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    topology, state = make_network(
        tmp_path, layers=(("mix-a",),), providers=("provider-1",),
        clients={"alice": "provider-1", "bob": "provider-1"},
        loopix={"payload_rate": 50.0, "loop_rate": 2.0, "drop_rate": 2.0, "mean_delay": 0.001,
                "mix_loop_rate": 0.5, "fetch_interval": FETCH_INTERVAL})
    launcher = network_launcher(state, topology, verbosity=0)  # the authority, then the nodes
    launcher.start()
    try:
        yield state
    finally:
        launcher.stop()


class OuterLoop:
    """The test's own poll loop over several client runtimes, as a daemon would run it."""

    def __init__(self, runtimes: dict[str, ClientRuntime]) -> None:
        self.runtimes = runtimes
        self.poller = zmq.Poller()
        self.owner: dict[zmq.Socket[bytes], str] = {}
        for name, runtime in runtimes.items():
            for sock in runtime.sockets():
                self.poller.register(sock, zmq.POLLIN)
                self.owner[sock] = name
        self.received: dict[str, list[ReceivedMessage]] = {name: [] for name in runtimes}
        self.longest_wait = 0.0

    def turn(self, cap: float) -> None:
        """Run every timer that is due, then wait for a socket or the next deadline (the
        runtime's times are unix times)."""
        now = time.time()
        for runtime in self.runtimes.values():
            if runtime.next_deadline() <= now:
                runtime.on_timer(now)
        wake = min(r.next_deadline() for r in self.runtimes.values())
        wait = max(0.0, min(wake - time.time(), cap))
        self.longest_wait = max(self.longest_wait, wait)
        for sock, _ in self.poller.poll(wait * 1000):
            name = self.owner[sock]  # type: ignore[index]
            self.received[name] += self.runtimes[name].on_readable(time.time())

    def run_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not done():
            assert time.time() < deadline, f"{what} did not happen within {timeout} s"
            self.turn(cap=1.0)


def test_a_client_driven_by_an_outer_poll_loop_sends_fetches_and_receives(state: Path) -> None:
    with ExitStack() as stack:
        alice = stack.enter_context(ClientRuntime(state, "alice"))
        bob = stack.enter_context(ClientRuntime(state, "bob", drain=True))
        loop = OuterLoop({"alice": alice, "bob": bob})
        message_id = alice.core.submit(time.time(), "bob", b"through the daemon's poller")
        loop.run_until(lambda: bool(loop.received["bob"]), 30, "bob receiving the message")
        assert [(m.sender, m.data) for m in loop.received["bob"]] == [
            ("alice", b"through the daemon's poller")]
        loop.run_until(lambda: alice.core.progress(message_id).acked == 1, 30,
                       "alice receiving the provider's acknowledgement")
        # The loop slept on the runtimes' deadlines, never as long as its own cap.
        assert 0 < loop.longest_wait < 1.0
        for runtime in (alice, bob):
            stats = runtime.statistics()
            assert tuple(stats) == client_names(runtime=True)
            assert stats["fetches_sent"] >= stats["fetch_answers"] > 0
            assert stats["bad_frames"] == stats["provider_errors"] == stats["link_full"] == 0
        assert bob.statistics()["messages_received"] == 1
        assert alice.statistics()["acks_received"] == 1


def test_on_timer_sends_only_what_is_due_however_often_it_is_called(state: Path) -> None:
    with ClientRuntime(state, "alice") as alice:
        now = time.time()
        alice.on_timer(now)  # the first FETCH is due at once
        assert alice.statistics()["fetches_sent"] == 1
        for _ in range(5):
            alice.on_timer(now)  # nothing new is due at the same instant
        assert alice.statistics()["fetches_sent"] == 1
        assert now < alice.next_deadline() <= now + 2.0  # the answer's retry time at the latest
        later = alice.next_deadline()
        alice.on_timer(later)  # a packet or a FETCH was due then; the deadline moves on
        assert alice.next_deadline() > later
        start = time.time()
        alice.on_readable(start)  # takes what is there and returns, never waits for more
        assert time.time() - start < 0.5


def test_an_offline_runtime_has_no_sockets_and_no_statistics(state: Path) -> None:
    runtime = ClientRuntime(state, "alice")
    with pytest.raises(RuntimeError, match="not online"):
        runtime.sockets()
    with pytest.raises(RuntimeError, match="not online"):
        runtime.statistics()
    with runtime:
        # Positive control: online, it has its DEALER to the provider and one to each authority.
        assert len(runtime.sockets()) == 1 + len(runtime.local.authorities)
