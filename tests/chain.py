"""A chain of two real mixnodes, mix-a -> mix-b, with the test playing provider-1 at both ends.

Shared by the integration tests of the node (test_node_integration, test_node_behaviour,
test_link_recovery): they send packets into mix-a and read what mix-b forwards. The topology's
authority runs as a real process; provider-1 is published like a real node (its epoch keys and
signed descriptor: zmix.bench.common.play_node), and packets use the document's keys per epoch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from zmix import wire
from zmix.bench.common import (
    PlayedNode,
    fetch_network,
    hops_at,
    make_network,
    play_node,
    start_authorities,
)
from zmix.keys import PrivateIdentity, PublicIdentity, load_directory, load_private
from zmix.network import Network
from zmix.runtime import links, metrics
from zmix.runtime.launcher import Launcher
from zmix.sphinx import FinalDelivery, create_forward_packet
from zmix.topology import Topology


@dataclass
class Chain:
    """mix-a -> mix-b as real processes; the test plays provider-1 at both ends."""

    topology: Topology
    state: Path
    launcher: Launcher
    directory: dict[str, PublicIdentity]
    provider: PrivateIdentity
    ctx: zmq.Context[zmq.Socket[bytes]]
    inbox: zmq.Socket[bytes]
    outbox: zmq.Socket[bytes]
    network: Network  # of the authority's document when the chain started
    played: PlayedNode  # provider-1, as the test plays it
    authorities: Launcher

    def packet(self, message: bytes, delays: tuple[float, float] = (0.0, 0.0)) -> bytes:
        """A packet for mix-a -> mix-b -> provider-1 built now with the document's keys of the
        epoch in which each hop will process it."""
        route = hops_at(self.network, ("mix-a", "mix-b", "provider-1"), (*delays, 0.0))
        return create_forward_packet(self.topology.sphinx, route, self.provider.id, message)

    def refresh(self) -> None:
        """Publish provider-1's keys of the epochs now ahead, and take the network of the
        current epoch's document (tests that run across epochs)."""
        self.played.refresh()
        self.network = fetch_network(self.state, self.topology)

    def send(self, packet: bytes) -> None:
        self.outbox.send(wire.encode(wire.Packet(packet), params=self.topology.sphinx, slots=8))

    def receive(self, count: int, timeout: float = 20.0) -> list[tuple[float, bytes]]:
        """Return ``(arrival time, message)`` for ``count`` packets arriving at provider-1."""
        got: list[tuple[float, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            if not self.inbox.poll(100):
                continue
            _, data = self.inbox.recv_multipart()
            frame = wire.decode(data, params=self.topology.sphinx, slots=8)
            # A node sends what is due for one next hop at once in one frame (PACKETS).
            packets = ([frame.packet] if isinstance(frame, wire.Packet)
                       else list(frame.packets) if isinstance(frame, wire.Packets) else [])
            for packet in packets:
                result = self.played.open(packet)
                assert isinstance(result, FinalDelivery)
                got.append((time.monotonic(), result.message))
        return got

    def stats(self, name: str) -> dict[str, float]:
        values = metrics.statistics(self.state, name)
        assert values is not None, f"{name} does not answer on its control socket"
        return values

    def wait_stats(self, name: str, ok: Callable[[dict[str, float]], bool], what: str,
                   timeout: float = 5.0) -> dict[str, float]:
        """Return ``name``'s statistics once ``ok`` holds for them; fail naming ``what`` was
        awaited and the last values read if it does not hold within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats(name)
            if ok(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: no {what} within {timeout} s; last values: {stats}")
            time.sleep(0.05)


@contextlib.contextmanager
def start_chain(tmp_path: Path, workers: int = 2, loopix: dict[str, float] | None = None,
                spare: tuple[str, ...] = (), **network: Any) -> Iterator[Chain]:
    """Run mix-a and mix-b as processes (``loopix``: Loopix parameters besides mix loops off;
    ``network``: more ``make_network`` options); the test plays provider-1, sending into mix-a
    and receiving from mix-b. ``spare`` names more layer-0 mixnodes of the topology that are
    neither started nor on the authority's allowlist (the test admits them)."""
    topology, state = make_network(
        tmp_path, layers=(("mix-a", *spare), ("mix-b",)), providers=("provider-1",),
        loopix={"mix_loop_rate": 0.0, **(loopix or {})}, workers=workers, **network)
    nodes = [topology.node("mix-a"), topology.node("mix-b")]
    authorities = start_authorities(state, topology, allow=["mix-a", "mix-b", "provider-1"])
    launcher = Launcher(state, nodes, verbosity=1)
    try:
        played = play_node(state, topology, "provider-1")
        launcher.start()
        net = fetch_network(state, topology)
    except BaseException:
        launcher.stop()
        authorities.stop()
        raise
    directory = load_directory(state, topology)
    provider = load_private(state, "provider-1")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gate = links.KeyGate({directory["mix-b"].curve_public: topology.node("mix-b").id})
    auth = links.start_authenticator(ctx, gate, topology.network)
    spec = topology.node("provider-1")
    limit = wire.node_frame_limit(topology.sphinx)
    inbox = links.bind_router(ctx, spec.endpoint, provider.curve_public, provider.curve_private,
                              topology.network, max_frame=limit)
    outbox = links.connect_dealer(ctx, topology.node("mix-a").endpoint,
                                  directory["mix-a"].curve_public, provider.curve_public,
                                  provider.curve_private, max_frame=limit)
    try:
        yield Chain(topology, state, launcher, directory, provider, ctx, inbox, outbox, net,
                    played, authorities)
    finally:
        for pid in launcher.pids().values():  # a failed test may leave a node stopped
            with contextlib.suppress(ProcessLookupError):  # or a test stopped it for good
                os.kill(pid, signal.SIGCONT)
        inbox.close()
        outbox.close()
        auth.stop()
        ctx.destroy(linger=0)  # closes a monitor socket a failed test left open
        launcher.stop()
        authorities.stop()


def child_pids(pid: int) -> list[int]:
    """Return the ids of the processes whose parent is ``pid`` (read from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, waiting to be reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_until_ready(proc: subprocess.Popen[str], ready: str = "ready") -> list[str]:
    """Return what ``proc`` printed up to its first line holding ``ready``; fail loudly with
    all it printed if it exits first (zmix-up gives up on a process after 60 s)."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # ends when the process exits
        lines.append(line)
        if ready in line:
            return lines
    proc.wait(30)
    raise AssertionError(f"{proc.args!r} did not get ready:\n" + "".join(lines))


def stop_process(proc: subprocess.Popen[str]) -> int:
    """Stop ``proc`` with SIGTERM and return its exit status (SIGKILL if it does not stop
    within 30 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()

