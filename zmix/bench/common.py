"""Throw-away networks on loopback for benchmarks and integration tests.

``make_network`` writes a topology YAML with free loopback ports and generates its keys, exactly as
``zmix-up`` would, so benchmarks and tests run the real node processes on real sockets. Nodes take
their network from the directory authorities' documents, so whoever starts nodes without zmix-up
runs the authorities first (:func:`start_authorities`, with an allowlist of exactly the nodes that
will run or be played); a test that plays a node itself publishes it with :func:`play_node`, and
builds packets with the documents' keys per epoch (:func:`fetch_network`, :func:`hops_at`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from zmix import pki
from zmix.epochkeys import EpochKeyStore
from zmix.errors import ZmixError
from zmix.keys import ensure_authority_keys, ensure_keys
from zmix.network import Network
from zmix.sphinx import FinalDelivery, ForwardHop, Hop, SurbReply
from zmix.sphinx.packet import process_packet_keys
from zmix.topology import NodeSpec, Topology
from zmix.topology_yaml import load_topology

if TYPE_CHECKING:
    from zmix.runtime.launcher import Launcher

HOST = "127.0.0.1"


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# The sphinx: section of every network make_network writes, unless the caller gives its own keys
# (tests/conftest.py's --sphinx-profile sets "profile" here for a whole test run).
DEFAULT_SPHINX: dict[str, Any] = {"payload_length": 2048, "max_hops": 5}


def make_network(
    directory: Path,
    *,
    layers: Sequence[Sequence[str]] = (("mix-a1", "mix-a2"), ("mix-b1", "mix-b2"),
                                       ("mix-c1", "mix-c2")),
    providers: Sequence[str] = ("provider-1", "provider-2"),
    clients: Mapping[str, str] | None = None,
    loopix: Mapping[str, float] | None = None,
    mailbox: Mapping[str, Any] | None = None,
    node: Mapping[str, Any] | None = None,
    sphinx: Mapping[str, Any] | None = None,
    workers: int = 1,
    network: str = "zmix-test",
    node_options: Mapping[str, Mapping[str, Any]] | None = None,
    epoch: Mapping[str, Any] | None = None,
    authorities: Sequence[str] = ("authority-1",),
    authority_threshold: int | None = None,
) -> tuple[Topology, Path]:
    """Write ``directory/topology.yaml``, generate keys into ``directory/state``.

    Every network declares its directory authorities (``authorities``, each on a free port);
    ``epoch`` is the topology's ``epoch:`` section (a short one needs a small
    ``loopix.max_delay``: docs/topology.md). Returns the loaded topology (from the state
    directory's copy) and the state directory.
    """
    names = [*providers, *(n for layer in layers for n in layer), *authorities]
    ports = iter(free_ports(len(names)))
    options = node_options or {}

    def entry(name: str) -> dict[str, Any]:
        return {"name": name, "port": next(ports), **options.get(name, {})}

    spec: dict[str, Any] = {
        "network": network,
        "sphinx": {**DEFAULT_SPHINX, **(sphinx or {})},
        "loopix": {"mean_delay": 0.001, "payload_rate": 20.0, "loop_rate": 1.0,
                   "drop_rate": 1.0, "mix_loop_rate": 0.5, "fetch_interval": 0.1,
                   "max_delay": 30.0, **(loopix or {})},
        "mailbox": {"quota": 10_000, "ttl": 86_400, "open_registration": False,
                    "fetch_slots": 8, **(mailbox or {})},
        "node": {"queue_limit": 100_000, "drain_on_shutdown": False,
                 "replay_capacity": 1_000_000, **(node or {})},
        "defaults": {"host": HOST, "workers": workers},
        "layers": [[entry(n) for n in layer] for layer in layers],
        "providers": [entry(n) for n in providers],
        "clients": [{"name": c, "provider": p} for c, p in (clients or {}).items()],
        "authorities": [{"name": a, "port": next(ports)} for a in authorities],
    }
    if epoch is not None:
        spec["epoch"] = dict(epoch)
    if authority_threshold is not None:
        spec["authority_threshold"] = authority_threshold
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    state = directory / "state"
    ensure_keys(state, load_topology(path))
    ensure_authority_keys(state, authorities)  # as zmix-up makes them on first use
    return load_topology(state / "topology.yaml"), state


# ---------------------------------------------------------------------------- the authorities
#
# A node takes its network only from the authorities' documents (docs/pki.md), so every test or
# benchmark that starts nodes without zmix-up runs the topology's authorities first. An authority
# freezes the current epoch's document as soon as every identity on its allowlist uploaded a
# descriptor, and otherwise only after a bounded wait (up to 30 s): allowlist exactly the nodes
# that will run or be played, or every start waits that long.


def write_allowlists(state: Path, topology: Topology, allow: Iterable[str]) -> None:
    """Write the allowlist of every authority of ``topology`` (replacing any): the identity
    keys of the nodes named in ``allow``, in the documented format (docs/pki.md)."""
    from zmix.authority import format_allowlist
    from zmix.keys import load_identity_public
    from zmix.runtime.authority import ALLOWLIST, authority_dir, write_atomically

    keys = {load_identity_public(state, name): name for name in allow}
    for authority in topology.authorities:
        path = authority_dir(state, authority.name) / ALLOWLIST
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, format_allowlist(keys).encode())


def start_authorities(state: Path, topology: Topology, allow: Iterable[str] | None = None,
                      verbosity: int = 1) -> Launcher:
    """Write the allowlists (``allow``: node names; default every node of ``topology``), start
    one ``zmix-authority`` process per authority of ``topology`` and return their launcher once
    each answers a request over CURVE with its pinned key. The caller stops them with
    ``.stop()`` (or use :func:`authorities_running`)."""
    from zmix.runtime.directory import authority_peers
    from zmix.runtime.launcher import Launcher

    names = [n.name for n in topology.nodes()] if allow is None else list(allow)
    write_allowlists(state, topology, names)
    launcher = Launcher(state, [], verbosity=verbosity,
                        authorities=authority_peers(topology, state))
    try:
        launcher.start()
    except BaseException:
        launcher.stop()
        raise
    return launcher


def network_launcher(state: Path, topology: Topology, nodes: Iterable[str] | None = None,
                     allow: Iterable[str] | None = None, verbosity: int = 1) -> Launcher:
    """Return a launcher (not started) of every authority of ``topology`` and of the nodes
    named in ``nodes`` (default: every node), as zmix-up runs them: its ``start()`` starts the
    authorities first. The allowlists are written now: ``allow`` (default: ``nodes``) names the
    nodes admitted, so add the ones a test plays itself."""
    from zmix.runtime.directory import authority_peers
    from zmix.runtime.launcher import Launcher

    names = [n.name for n in topology.nodes()] if nodes is None else list(nodes)
    write_allowlists(state, topology, names if allow is None else allow)
    return Launcher(state, [topology.node(n) for n in names], verbosity=verbosity,
                    authorities=authority_peers(topology, state))


@contextlib.contextmanager
def authorities_running(state: Path, topology: Topology, allow: Iterable[str] | None = None,
                        verbosity: int = 1) -> Iterator[Launcher]:
    """:func:`start_authorities` as a context: the authorities stop when it ends."""
    launcher = start_authorities(state, topology, allow, verbosity)
    try:
        yield launcher
    finally:
        launcher.stop()


def fetch_network(state: Path, topology: Topology, epoch: int | None = None,
                  timeout: float = 40.0) -> Network:
    """Return the network of the authorities' document of ``epoch`` (default: the current
    one), as a sender outside the network sees it (the clients' keys from ``state``): its nodes'
    Sphinx keys per epoch are :meth:`Network.node_key`'s. Waits up to ``timeout`` seconds for
    the document (DirectoryUnavailable if none comes)."""
    from zmix.directory import network_from_document
    from zmix.keys import load_directory
    from zmix.runtime.directory import authority_peers, fetch_document

    wanted = topology.epoch.epoch_at(time.time()) if epoch is None else epoch
    document = fetch_document(authority_peers(topology, state), topology.authority_threshold,
                              topology.network, topology.epoch, wanted, timeout)
    return network_from_document(document, topology,
                                 load_directory(state, topology, clients_only=True))


def hops_at(network: Network, names: Sequence[str], delays: Sequence[float],
            now: float | None = None) -> list[Hop]:
    """Return the Sphinx hops of a packet sent at ``now`` (default: now) through the nodes
    ``names`` of ``network``, hop ``i`` holding it ``delays[i]`` seconds: each hop's key is the
    node's key of the epoch in which it will process the packet (docs/sphinx.md)."""
    delays_us = [int(d * 1e6) for d in delays]
    epochs = network.epochs.hop_epochs(time.time() if now is None else now, delays_us)
    specs = [network.topology.node(n) for n in names]
    return [Hop(s.id, network.node_key(s.name, e), d)
            for s, e, d in zip(specs, epochs, delays_us, strict=True)]


@dataclass
class PlayedNode:
    """A node a test plays itself (it binds the node's sockets itself): its Sphinx keys per
    epoch in the node's key directory, and the descriptor it uploaded, so that the authorities'
    documents list it like a running node (:func:`play_node`)."""

    state: Path
    topology: Topology
    name: str
    store: EpochKeyStore

    @property
    def spec(self) -> NodeSpec:
        return self.topology.node(self.name)

    def private(self, epoch: int) -> bytes:
        """Return the node's Sphinx private key of ``epoch`` (KeyError if it has none)."""
        return self.store.private(epoch)

    def accepted(self, now: float | None = None) -> list[tuple[int, bytes]]:
        """Return ``(epoch, private key)`` in the order a node tries them at ``now``."""
        return self.store.accepted(self.topology.epoch, time.time() if now is None else now)

    def open(self, packet: bytes,
             now: float | None = None) -> ForwardHop | FinalDelivery | SurbReply:
        """Strip one Sphinx layer of ``packet`` as the node would at ``now`` (its accepted keys
        in its order); InvalidPacket as a worker would refuse it."""
        return process_packet_keys(self.topology.sphinx, self.accepted(now), packet)[1]

    def descriptor(self, now: float) -> bytes:
        """Return the node's signed descriptor with the Sphinx keys it holds (as
        NodeProcess.descriptor makes it)."""
        from zmix.keys import load_identity, load_private

        spec, identity = self.spec, load_identity(self.state, self.name)
        described = pki.Descriptor(
            self.topology.network, spec.name, spec.id, spec.role.value, spec.layer, spec.host,
            spec.port, load_private(self.state, self.name).curve_public, identity.public,
            tuple(sorted(self.store.public_keys().items())), self.topology.epoch.epoch_at(now))
        return pki.sign_descriptor(described, identity.secret)

    def refresh(self, timeout: float = 10.0) -> None:
        """Make the keys of the current epoch and those ahead, erase the expired ones, and
        upload the descriptor to every authority, waiting until each answered (ZmixError
        naming the refusals if one refused it or did not answer within ``timeout``)."""
        now = time.time()
        self.store.ensure(self.topology.epoch.wanted(now))
        self.store.erase_expired(self.topology.epoch, now)
        upload_descriptor(self.state, self.topology, self.descriptor(now), timeout)


def upload_descriptor(state: Path, topology: Topology, blob: bytes, timeout: float) -> None:
    """Give the signed descriptor ``blob`` to every authority of ``topology`` and wait until
    each accepted it; ZmixError saying what each answered otherwise."""
    import zmq

    from zmix.runtime.directory import DirectoryClient, authority_peers

    peers = authority_peers(topology, state)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        client = DirectoryClient(ctx, peers, topology.authority_threshold, topology.network,
                                 topology.epoch)
        poller = zmq.Poller()
        for sock in client.sockets():
            poller.register(sock, zmq.POLLIN)
        client.upload(blob, time.time())
        deadline = time.monotonic() + timeout
        while len(client.upload_results) < len(peers) and time.monotonic() < deadline:
            if poller.poll(100):
                client.on_readable(time.time())
            client.on_timer(time.time())
        said = {p.name: client.upload_results.get(p.name, "no answer") for p in peers}
        if any(answer != "accepted" for answer in said.values()):
            raise ZmixError(f"descriptor upload: {said}")
    finally:
        ctx.destroy(linger=0)


def play_node(state: Path, topology: Topology, name: str, timeout: float = 10.0) -> PlayedNode:
    """Make node ``name``'s Sphinx keys (this epoch and ``ahead`` more, in
    ``STATE/nodes/NAME/sphinx/`` like a running node's) and upload its signed descriptor to
    every authority, so that the documents list it; the test then plays the node (binds its
    address, opens packets with :meth:`PlayedNode.open`). Call :meth:`PlayedNode.refresh` again
    to publish the keys of later epochs."""
    from zmix.epochkeys import key_directory

    played = PlayedNode(state, topology, name, EpochKeyStore(key_directory(state, name)))
    played.refresh(timeout)
    return played
