"""The network's data model: a frozen :class:`Topology` of nodes, clients and parameters.

:mod:`zmix.topology_yaml` reads and validates the YAML file (docs/topology.md) into these objects;
:mod:`zmix.network` adds the members' keys and a version number. Nothing here reads a file.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zmix import crypto
from zmix.epochs import EpochParams
from zmix.errors import LocalMisuse
from zmix.sphinx import MAX_DELAY_US, SphinxParams

if TYPE_CHECKING:  # at run time the loader comes through __getattr__ (an import cycle)
    from zmix.topology_yaml import load_topology, parse_topology

__all__ = ["MAX_DELAY", "MAX_RATE", "AuthoritySpec", "ClientSpec", "LoopixParams",
           "MailboxParams", "NodeParams", "NodeSpec", "Role", "Topology", "WebParams", "entity_id",
           "load_topology", "parse_topology", "valid_name"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The longest per-hop delay a packet can carry: the routing command's u32 of microseconds.
MAX_DELAY = MAX_DELAY_US / 1_000_000  # seconds (4294.967295, about 71.6 minutes)
# The fastest Poisson stream (packets per second). A node or client spends more than a core on
# Sphinx long before this; the bound keeps the timers' arithmetic meaningful (at 1e12/s the next
# due time would not move past the current one in floating point, and the loop would spin).
MAX_RATE = 10_000.0


def valid_name(name: object) -> bool:
    """Return True if ``name`` may name a node or client: 1-64 letters, digits, '_', '.', '-',
    but not ``.`` or ``..`` (names become folders: STATE/nodes/NAME, ./NETWORK)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and name not in (".", "..")


def entity_id(network: str, name: str) -> bytes:
    """Return the 16-byte id of node or client ``name`` in ``network``."""
    return crypto.blake2b(network.encode() + b"\0" + name.encode(), size=16, key=b"zmix-id-v1")


class Role(enum.Enum):
    """What a node does."""

    MIXNODE = "mixnode"
    PROVIDER = "provider"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: where it listens and how many Sphinx workers it runs."""

    name: str
    id: bytes
    role: Role
    layer: int | None  # 0..n-1 for mixnodes, None for providers
    host: str
    port: int
    workers: int
    metrics_port: int | None

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint the node's ROUTER binds and its peers dial."""
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AuthoritySpec:
    """One directory authority: where it serves its documents and, if the file pins it, its
    Ed25519 identity public key (None: read from ``STATE/public/NAME.identity.json``)."""

    name: str
    host: str
    port: int
    identity_public: bytes | None = None

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint the authority binds and nodes and clients dial."""
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client and the provider it belongs to."""

    name: str
    id: bytes
    provider: str


@dataclass(frozen=True, slots=True)
class LoopixParams:
    """The Loopix rates and delays (docs/topology.md gives the paper's symbols)."""

    mean_delay: float = 0.05  # seconds, 1/mu
    payload_rate: float = 10.0  # lambda_P, per second
    loop_rate: float = 2.0  # lambda_L
    drop_rate: float = 2.0  # lambda_D
    mix_loop_rate: float = 1.0  # lambda_M
    fetch_interval: float = 0.5  # seconds
    max_delay: float = 60.0  # seconds; larger per-hop delays are dropped


@dataclass(frozen=True, slots=True)
class MailboxParams:
    """Provider mailbox policy."""

    quota: int = 10_000  # items per client
    ttl: float = 7 * 24 * 3600.0  # seconds
    open_registration: bool = False
    fetch_slots: int = 8  # items per (constant-size) fetch answer
    registration_limit: int = 1_000  # clients one provider admits at run time, at most


@dataclass(frozen=True, slots=True)
class NodeParams:
    """Node runtime policy."""

    queue_limit: int = 100_000
    drain_on_shutdown: bool = False
    replay_capacity: int = 1_000_000
    taps: bool = False  # write STATE/taps/NAME.jsonl: measurement only (docs/privacy.md)


@dataclass(frozen=True, slots=True)
class WebParams:
    """Where ``zmix-up`` serves the live web view (the YAML's ``web:``; docs/monitoring.md).
    Loopback by default: the view is unauthenticated."""

    port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole network, as validated from one YAML file."""

    path: str
    network: str
    sphinx: SphinxParams
    layers: tuple[tuple[NodeSpec, ...], ...]
    providers: tuple[NodeSpec, ...]
    clients: tuple[ClientSpec, ...]
    loopix: LoopixParams
    mailbox: MailboxParams
    runtime: NodeParams  # the YAML's ``node:`` section
    epoch: EpochParams = field(default_factory=EpochParams)  # the key schedule (zmix.epochs)
    authorities: tuple[AuthoritySpec, ...] = ()
    # Signatures a network document needs. 1 when there is no authority (a Topology built by
    # hand): never 0, which would accept an unsigned document.
    authority_threshold: int = 1
    web: WebParams | None = None  # the web view's address; None: none unless zmix-up --web

    def __post_init__(self) -> None:
        top = max(1, len(self.authorities))
        if isinstance(self.authority_threshold, bool) or not (
                isinstance(self.authority_threshold, int)
                and 1 <= self.authority_threshold <= top):
            raise LocalMisuse(f"the authority threshold must be an integer from 1 to {top}, "
                              f"not {self.authority_threshold!r}")

    def nodes(self) -> tuple[NodeSpec, ...]:
        """Return every node: providers first, then mixnodes layer by layer."""
        return self.providers + tuple(n for layer in self.layers for n in layer)

    def names(self) -> tuple[str, ...]:
        """Return the name of every member: the nodes (as :meth:`nodes`), then the clients."""
        return tuple(n.name for n in self.nodes()) + tuple(c.name for c in self.clients)

    def node(self, name: str) -> NodeSpec:
        """Return node ``name``; KeyError if there is none."""
        for node in self.nodes():
            if node.name == name:
                return node
        raise KeyError(name)

    def client(self, name: str) -> ClientSpec:
        """Return client ``name``; KeyError if there is none."""
        for client in self.clients:
            if client.name == name:
                return client
        raise KeyError(name)

    def authority(self, name: str) -> AuthoritySpec:
        """Return directory authority ``name``; KeyError if there is none."""
        for authority in self.authorities:
            if authority.name == name:
                return authority
        raise KeyError(name)

    def by_id(self, entity: bytes) -> NodeSpec | ClientSpec | None:
        """Return the node or client whose id is ``entity``, or None."""
        for node in self.nodes():
            if node.id == entity:
                return node
        for client in self.clients:
            if client.id == entity:
                return client
        return None

    def clients_of(self, provider: str) -> tuple[ClientSpec, ...]:
        """Return the clients of provider ``provider``."""
        return tuple(c for c in self.clients if c.provider == provider)


def __getattr__(name: str) -> Any:
    """Return :func:`load_topology` and :func:`parse_topology` from :mod:`zmix.topology_yaml`,
    where they live now, for code that imports them from here."""
    if name in ("load_topology", "parse_topology"):
        from zmix import topology_yaml
        return getattr(topology_yaml, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
