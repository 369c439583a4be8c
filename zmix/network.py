"""The network's description, versioned, and the one holder that cores and runtimes consult.

What the network *is* (its members, their keys and addresses, the layers, the parameters) is one
frozen :class:`Network`: a version number, the :class:`~zmix.topology.Topology` data model,
every member's public keys and every node's Sphinx public key per key epoch
(:mod:`zmix.epochs`), with the lookups the cores need computed once when it is built. A process
builds its first version at start (:meth:`Network.build`); a newer version (the next epoch's
network document) replaces it at run time through the :class:`NetworkView` every core and runtime
of the process shares.

A node's Sphinx keys come only from ``epoch_keys`` (the per-epoch keys its descriptor published):
a sender builds each hop with the key of the epoch that hop processes the packet in
(:func:`zmix.routes.hops`). A client's ``public_key`` in ``keys`` is its end-to-end key; a node's
is not used for Sphinx.

The contract of the seam:

- Cores and runtimes keep the view, never a :class:`Network` or parts of one, and read
  ``view.current`` at the moment they decide (a route drawn, a next hop checked, a client served,
  a link dialled), so a replaced network takes effect at the next decision. Each read is a lookup
  on the current object, never a rebuild.
- :meth:`NetworkView.replace` takes only a newer version of the same network with the same packet
  geometry: ids derive from the network's name and every socket's frame limit from the Sphinx
  parameters, so neither can change while a process runs.
- What a core fixed when it was made stays as it was (a node's replay cache size, its delay
  queue's bound, the frame limits, a client's stream rates and ack timers); a newer version of
  those takes a restart.

Sans-IO: nothing here reads a file, a clock or a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from zmix import routes
from zmix.contacts import Contact, with_contacts
from zmix.epochs import EpochParams
from zmix.errors import LocalMisuse, ZmixError
from zmix.keys import PublicIdentity
from zmix.topology import ClientSpec, NodeSpec, Role, Topology


class NoKeyForEpoch(ZmixError):
    """A node published no Sphinx key for the epoch a packet needs it in (the network document
    does not cover that epoch, or the node left)."""

    def __init__(self, node: str, epoch: int) -> None:
        super().__init__(f"node {node!r} has no Sphinx key for epoch {epoch} in this network "
                         "description (it does not cover that epoch, or the node left)")
        self.node = node
        self.epoch = epoch


EpochKeys = Mapping[str, Mapping[int, bytes]]  # node name -> key epoch -> Sphinx public key


@dataclass(frozen=True, slots=True)
class Network:
    """One version of the network: its topology and every member's public keys.

    ``keys`` maps every member's name (nodes, clients, contacts) to its public identity (kept as
    a read-only copy). ``epoch_keys`` maps node names to their Sphinx public keys by key epoch
    (read-only copies; a node may have none). ``valid_until`` is when the network document this
    version comes from expires (None: not from a document). The other fields are derived
    lookups, computed once in :meth:`__post_init__`; raises LocalMisuse if a member has no keys,
    or ``epoch_keys`` names a non-node or holds a key that is not 32 bytes.
    """

    version: int
    topology: Topology
    keys: Mapping[str, PublicIdentity]
    epoch_keys: EpochKeys = field(default_factory=dict)
    valid_until: float | None = None
    # Derived: every node's id (the valid next hops), loopix.max_delay in us (within the wire's
    # field), how every sender draws a hop's delay.
    node_ids: frozenset[bytes] = field(init=False, compare=False)
    max_delay_us: int = field(init=False, compare=False)
    delays: routes.Delays = field(init=False, compare=False)
    _nodes: dict[str, NodeSpec] = field(init=False, repr=False, compare=False)
    _nodes_by_id: dict[bytes, NodeSpec] = field(init=False, repr=False, compare=False)
    _clients: dict[str, ClientSpec] = field(init=False, repr=False, compare=False)
    _client_names: dict[bytes, str] = field(init=False, repr=False, compare=False)
    _clients_of: dict[str, frozenset[bytes]] = field(init=False, repr=False, compare=False)
    _curve_keys: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        topo = self.topology
        missing = [name for name in topo.names() if name not in self.keys]
        if missing:
            raise LocalMisuse(f"no public keys for {', '.join(missing)}")
        nodes = topo.nodes()
        derived = {
            "keys": MappingProxyType(dict(self.keys)),  # a copy no caller can change
            "epoch_keys": _frozen_epoch_keys(topo, self.epoch_keys),
            "node_ids": frozenset(n.id for n in nodes),
            "max_delay_us": routes.max_delay_us(topo.loopix.max_delay),
            "delays": routes.Delays.from_loopix(topo.loopix),
            "_nodes": {n.name: n for n in nodes},
            "_nodes_by_id": {n.id: n for n in nodes},
            "_clients": {c.name: c for c in topo.clients},
            "_client_names": {c.id: c.name for c in topo.clients},
            "_clients_of": {p.name: frozenset(c.id for c in topo.clients_of(p.name))
                            for p in topo.providers},
            "_curve_keys": frozenset(self.keys[name].curve_public for name in topo.names()),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @classmethod
    def build(cls, topology: Topology, keys: Mapping[str, PublicIdentity],
              contacts: Iterable[Contact] = (), *, version: int = 1,
              epoch_keys: EpochKeys | None = None, valid_until: float | None = None) -> Network:
        """Return the network of ``topology`` with the key directory ``keys``
        (:func:`zmix.keys.load_directory`), extended by the registered clients ``contacts``
        (:func:`zmix.contacts.load_contacts`; a client's view of the network), with the nodes'
        Sphinx keys by epoch ``epoch_keys`` and the document's expiry ``valid_until``.

        Raises LocalMisuse as the constructor does."""
        topology, directory = with_contacts(topology, dict(keys), list(contacts))
        return cls(version, topology, directory, epoch_keys or {}, valid_until)

    # ------------------------------------------------------------------ the topology's parts

    @property
    def network(self) -> str:
        """The network's name (every id derives from it)."""
        return self.topology.network

    @property
    def layers(self) -> tuple[tuple[NodeSpec, ...], ...]:
        """The mixnodes, layer by layer."""
        return self.topology.layers

    @property
    def providers(self) -> tuple[NodeSpec, ...]:
        """The providers."""
        return self.topology.providers

    @property
    def epochs(self) -> EpochParams:
        """The key schedule (the topology's ``epoch`` section)."""
        return self.topology.epoch

    # ------------------------------------------------------------------ lookups

    def node(self, name: str) -> NodeSpec:
        """Return node ``name``; KeyError if there is none."""
        return self._nodes[name]

    def node_by_id(self, node_id: bytes) -> NodeSpec | None:
        """Return the node whose id is ``node_id``, or None."""
        return self._nodes_by_id.get(node_id)

    def client(self, name: str) -> ClientSpec:
        """Return client ``name``; KeyError if there is none."""
        return self._clients[name]

    def client_name(self, client_id: bytes) -> str | None:
        """Return the name of the client whose id is ``client_id``, or None."""
        return self._client_names.get(client_id)

    def is_client(self, name: str) -> bool:
        """Return True if ``name`` is a client of this network (with its keys)."""
        return name in self._clients

    def clients_of(self, provider: str) -> frozenset[bytes]:
        """Return the ids of the clients of provider ``provider`` (none for an unknown name)."""
        return self._clients_of.get(provider, frozenset())

    def is_member(self, name: str) -> bool:
        """Return True if ``name`` names a node or client of this network."""
        return name in self._nodes or name in self._clients

    def is_member_key(self, curve_public: bytes) -> bool:
        """Return True if ``curve_public`` is the CURVE key of a node or client of this network."""
        return curve_public in self._curve_keys

    def node_key(self, name: str, epoch: int) -> bytes:
        """Return node ``name``'s Sphinx public key for key epoch ``epoch``.

        Raises NoKeyForEpoch if the node published none for that epoch (or is not a node)."""
        key = self.epoch_keys.get(name, _NO_KEYS).get(epoch)
        if key is None:
            raise NoKeyForEpoch(name, epoch)
        return key

    def client_key(self, name: str) -> bytes:
        """Return client ``name``'s end-to-end public key (what fragments are sealed to and
        signed fragments checked with); KeyError if ``name`` is not a client (a node's
        long-term key is never used for Sphinx or sealing)."""
        if name not in self._clients:
            raise KeyError(name)
        return self.keys[name].public_key

    def curve_key(self, name: str) -> bytes:
        """Return member ``name``'s CURVE public key; KeyError if there is none."""
        return self.keys[name].curve_public

    def endpoint(self, node_id: bytes) -> tuple[str, bytes] | None:
        """Return the ZeroMQ endpoint and CURVE key of node ``node_id``, or None if no node of
        this network has that id."""
        node = self._nodes_by_id.get(node_id)
        if node is None:
            return None
        return node.endpoint, self.keys[node.name].curve_public

    def admitted_keys(self, node: str) -> dict[bytes, bytes]:
        """Return the CURVE keys node ``node``'s link gate admits, each with its peer's id: every
        other node, and on a provider its declared clients."""
        me = self._nodes[node]
        keys = {self.keys[n.name].curve_public: n.id for n in self._nodes.values()
                if n.name != node}
        if me.role is Role.PROVIDER:
            for client in self.topology.clients_of(node):
                keys[self.keys[client.name].curve_public] = client.id
        return keys


_NO_KEYS: Mapping[int, bytes] = MappingProxyType({})


def _frozen_epoch_keys(topology: Topology, epoch_keys: EpochKeys,
                       ) -> Mapping[str, Mapping[int, bytes]]:
    """Return a read-only copy of ``epoch_keys``; LocalMisuse if it names a non-node, an epoch
    that is not an int, or a key that is not 32 bytes."""
    nodes = {n.name for n in topology.nodes()}
    copy: dict[str, Mapping[int, bytes]] = {}
    for name, by_epoch in epoch_keys.items():
        if name not in nodes:
            raise LocalMisuse(f"Sphinx keys given for {name!r}, which is not a node")
        for epoch, key in by_epoch.items():
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise LocalMisuse(f"{name}'s key epoch {epoch!r} is not an integer")
            if not isinstance(key, bytes) or len(key) != 32:
                raise LocalMisuse(f"{name}'s Sphinx key for epoch {epoch} is not 32 bytes")
        copy[name] = MappingProxyType(dict(by_epoch))
    return MappingProxyType(copy)


class NetworkView:
    """The current :class:`Network` of a process, replaceable by a newer version.

    Every core and runtime of the process holds the same view and reads :attr:`current` when it
    decides; see the module docstring for the contract.
    """

    __slots__ = ("current",)

    def __init__(self, network: Network) -> None:
        self.current: Network = network  # read on hot paths: a plain attribute

    def replace(self, newer: Network) -> Network:
        """Make ``newer`` the current network; return the one it replaced.

        Raises LocalMisuse, and keeps the current network, if ``newer`` is not a newer version
        (its version number must be greater), names another network, or has another packet
        geometry (Sphinx parameters)."""
        current = self.current
        if newer.version <= current.version:
            raise LocalMisuse(f"network version {newer.version} is not newer than the current "
                              f"version {current.version}")
        if newer.network != current.network:
            raise LocalMisuse(f"network {newer.network!r} is not this process's network "
                              f"{current.network!r}")
        if newer.topology.sphinx != current.topology.sphinx:
            raise LocalMisuse(f"network version {newer.version} changes the Sphinx parameters "
                              f"({newer.topology.sphinx} instead of {current.topology.sphinx}); "
                              "that takes a restart")
        self.current = newer
        return current
