"""The network's description, versioned, and the one holder that cores and runtimes consult.

What the network *is* (its members, their keys and addresses, the layers, the parameters) is one
frozen :class:`Network`: a version number, the :class:`~zmix.topology.Topology` data model and
every member's public keys, with the lookups the cores need computed once when it is built. A
process builds version 1 at start from its state directory (:meth:`Network.build`); a newer
version (key rotation, a directory authority) replaces it at run time through the
:class:`NetworkView` every core and runtime of the process shares.

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
from zmix.errors import LocalMisuse
from zmix.keys import PublicIdentity
from zmix.topology import ClientSpec, NodeSpec, Role, Topology


@dataclass(frozen=True, slots=True)
class Network:
    """One version of the network: its topology and every member's public keys.

    ``keys`` maps every member's name (nodes, clients, contacts) to its public identity (kept as
    a read-only copy). The other fields are derived lookups, computed once in
    :meth:`__post_init__`; raises LocalMisuse if a member has no keys.
    """

    version: int
    topology: Topology
    keys: Mapping[str, PublicIdentity]
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
              contacts: Iterable[Contact] = (), *, version: int = 1) -> Network:
        """Return the network of ``topology`` with the key directory ``keys``
        (:func:`zmix.keys.load_directory`), extended by the registered clients ``contacts``
        (:func:`zmix.contacts.load_contacts`; a client's view of the network).

        Raises LocalMisuse if a member has no keys."""
        topology, directory = with_contacts(topology, dict(keys), list(contacts))
        return cls(version, topology, directory)

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

    def sphinx_key(self, name: str) -> bytes:
        """Return member ``name``'s Sphinx (nodes) or end-to-end (clients) public key;
        KeyError if there is none."""
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
