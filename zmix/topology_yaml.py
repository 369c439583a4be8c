"""Topology files: YAML in, a frozen :class:`~zmix.topology.Topology` out, or a ConfigError
(file, key path, problem).

The format is documented in docs/topology.md. Validation happens before anything starts: unknown
keys (typos) are errors, every number is range-checked, names and ports must be unique, and every
client's provider must exist. Ports left out are assigned deterministically from
``defaults.base_port`` in file order (providers, then layers), skipping ports given explicitly, so
every host that reads the same file computes the same addresses. The data model itself is
:mod:`zmix.topology`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from zmix.epochs import MIN_LENGTH, EpochParams
from zmix.errors import ConfigError, LocalMisuse
from zmix.pki import MAX_EPOCH
from zmix.sphinx import WIRE_PROFILES, Profile, SphinxParams
from zmix.topology import (
    MAX_DELAY,
    MAX_RATE,
    AuthoritySpec,
    ClientSpec,
    LoopixParams,
    MailboxParams,
    NodeParams,
    NodeSpec,
    Role,
    Topology,
    WebParams,
    entity_id,
    valid_name,
)
from zmix.yamlfile import read_yaml_file

T = TypeVar("T")

def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; raises ConfigError (file, key path, problem)."""
    return parse_topology(read_yaml_file(path), str(path))


class _Reader:
    """Reads one mapping, remembering the key path and which keys were used."""

    def __init__(self, path: str, key: str, data: object) -> None:
        self.path, self.key = path, key
        if not isinstance(data, Mapping):
            raise ConfigError(path, key or "(top level)", f"must be a mapping, got {_kind(data)}")
        self.data: Mapping[Any, Any] = data
        self.used: set[str] = set()

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def section(self, name: str) -> _Reader:
        """Read the mapping under ``name``; absent or null is an empty section, any other
        non-mapping (even an empty list or ``false``) is an error."""
        self.used.add(name)
        value = self.data.get(name)
        return _Reader(self.path, self.sub(name), {} if value is None else value)

    def get(self, name: str, conv: Callable[[str, object], T], default: T | None = None,
            required: bool = False) -> T:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            if required or default is None:  # an empty list default is a real default
                raise ConfigError(self.path, self.sub(name), "is required")
            return default
        return self._convert(name, conv)

    def optional(self, name: str, conv: Callable[[str, object], T]) -> T | None:
        self.used.add(name)
        if self.data.get(name) is None:
            return None
        return self._convert(name, conv)

    def _convert(self, name: str, conv: Callable[[str, object], T]) -> T:
        try:
            return conv(self.sub(name), self.data[name])
        except ConfigError as exc:  # the value checks do not know the file
            raise ConfigError(self.path, exc.key, exc.problem) from None

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.data if str(k) not in self.used)
        if unknown:
            raise ConfigError(self.path, self.sub(unknown[0]),
                              f"unknown key (known here: {', '.join(sorted(self.used))})")


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing"}.get(type(value),
                                                                              type(value).__name__)


def parse_topology(data: object, path: str) -> Topology:
    """Validate already-parsed YAML ``data`` read from ``path``; raises ConfigError."""
    top = _Reader(path, "", data)
    network = top.get("network", _name, required=True)
    sphinx = _sphinx(path, top)
    loopix = _loopix(path, top)
    epoch = _epoch(path, top, sphinx, loopix)
    mailbox = _mailbox(path, top)
    node = _node_params(path, top)
    defaults = top.section("defaults")
    host = defaults.get("host", _host, "127.0.0.1")
    base_port = defaults.get("base_port", _int_range(1, 65535), 31000)
    workers = defaults.get("workers", _int_range(1, 256), os.cpu_count() or 1)
    defaults.finish()
    raw_providers = top.get("providers", _list, required=True)
    raw_layers = top.get("layers", _list, required=True)
    raw_clients: list[object] = top.get("clients", _list, [])
    raw_authorities = top.optional("authorities", _list)
    raw_threshold = top.optional("authority_threshold", _int_range(1, 1000))
    web = _web(top)
    top.finish()
    if not raw_layers:
        raise ConfigError(path, "layers", "needs at least one layer of mixnodes")
    if not raw_providers:
        raise ConfigError(path, "providers", "needs at least one provider")
    if not raw_authorities:
        raise ConfigError(path, "authorities", NO_AUTHORITY)
    if len(raw_layers) + 2 > sphinx.max_hops:
        raise ConfigError(path, "layers", f"{len(raw_layers)} layers make routes of "
                          f"{len(raw_layers) + 2} hops, more than sphinx.max_hops "
                          f"({sphinx.max_hops})")
    entries: list[tuple[str, object, Role, int | None]] = [
        (f"providers[{i}]", p, Role.PROVIDER, None) for i, p in enumerate(raw_providers)]
    for li, layer in enumerate(raw_layers):
        if not isinstance(layer, list) or not layer:
            raise ConfigError(path, f"layers[{li}]", "must be a non-empty list of nodes")
        entries += [(f"layers[{li}][{j}]", n, Role.MIXNODE, li) for j, n in enumerate(layer)]
    specs, authorities = _members(path, network, entries, raw_authorities, host, base_port,
                                  workers)
    threshold = _threshold(path, raw_threshold, len(authorities))
    _web_address_free(path, web, specs, authorities)
    providers = tuple(s for s in specs if s.role is Role.PROVIDER)
    layers = tuple(tuple(s for s in specs if s.layer == li) for li in range(len(raw_layers)))
    clients = _clients(path, network, raw_clients, {p.name for p in providers},
                       {s.name for s in specs}, {a.name for a in authorities})
    return Topology(path, network, sphinx, layers, providers, clients, loopix, mailbox, node,
                    epoch, authorities, threshold, web)


# The refusal of a file without authorities says what to add (docs/topology.md, "authorities").
NO_AUTHORITY = ("is required: every network runs at least one directory authority, from which "
                "nodes and clients learn the network; add for example "
                "'authorities: [{name: authority-1, port: 30999}]'")


def _sphinx(path: str, top: _Reader) -> SphinxParams:
    r = top.section("sphinx")
    params = SphinxParams(max_hops=r.get("max_hops", _int_range(3, 16), 5),
                          payload_length=r.get("payload_length", _int_range(512, 1 << 20), 2048),
                          profile=r.get("profile", _wire_profile, Profile.V1))
    r.finish()
    return params


def _wire_profile(key: str, value: object) -> Profile:
    names = [p.value for p in WIRE_PROFILES]
    if not isinstance(value, str) or value not in names:
        raise ConfigError("", key, f"must be one of {', '.join(names)}, got {value!r}")
    return Profile(value)


def _loopix(path: str, top: _Reader) -> LoopixParams:
    r = top.section("loopix")
    d = LoopixParams()
    rate = _number(0.0, high=MAX_RATE)
    wire = " (the longest delay a packet can carry: 2^32-1 microseconds)"
    params = LoopixParams(
        mean_delay=r.get("mean_delay", _number(0.0, high=MAX_DELAY, why=wire), d.mean_delay),
        payload_rate=r.get("payload_rate", _number(0.0, positive=True, high=MAX_RATE),
                           d.payload_rate),
        loop_rate=r.get("loop_rate", rate, d.loop_rate),
        drop_rate=r.get("drop_rate", rate, d.drop_rate),
        mix_loop_rate=r.get("mix_loop_rate", rate, d.mix_loop_rate),
        fetch_interval=r.get("fetch_interval", _number(0.0, positive=True), d.fetch_interval),
        max_delay=r.get("max_delay", _number(0.0, positive=True, high=MAX_DELAY, why=wire),
                        d.max_delay),
    )
    r.finish()
    if params.max_delay < params.mean_delay:
        raise ConfigError(path, "loopix.max_delay", f"must be at least loopix.mean_delay "
                          f"({params.mean_delay}), got {params.max_delay}")
    return params


def _epoch(path: str, top: _Reader, sphinx: SphinxParams, loopix: LoopixParams) -> EpochParams:
    r = top.section("epoch")
    d = EpochParams()
    length = r.get("length", _whole_seconds(int(MIN_LENGTH)), d.length)
    origin = r.get("origin", _whole_seconds(0), d.origin)
    grace = r.get("grace", _whole_seconds(0), d.grace)
    ahead = r.get("ahead", _int_range(1, 16), d.ahead)
    r.finish()
    if grace >= length / 2:
        raise ConfigError(path, "epoch.grace", f"must be under half of epoch.length "
                          f"({length / 2:g} s), got {grace:g}")
    longest = sphinx.max_hops * loopix.max_delay
    if length < 2 * longest:
        raise ConfigError(path, "epoch.length", f"must be at least 2 * sphinx.max_hops * "
                          f"loopix.max_delay = 2 * {sphinx.max_hops} * {loopix.max_delay:.10g} = "
                          f"{2 * longest:.10g} s, so that a reply block outlives the delays of its "
                          f"route by at least half an epoch; got {length:.10g} (lengthen the epoch "
                          f"or lower loopix.max_delay)")
    try:
        return EpochParams(length=length, origin=origin, grace=grace, ahead=ahead)
    except LocalMisuse as exc:  # the checks above cover EpochParams' own; this is a backstop
        raise ConfigError(path, "epoch", str(exc)) from None


def _threshold(path: str, raw: int | None, members: int) -> int:
    """Return the signatures a document needs: ``raw``, or a majority of ``members``."""
    if raw is None:
        return members // 2 + 1
    if raw > members:
        raise ConfigError(path, "authority_threshold", f"must be at most the number of "
                          f"authorities ({members}), got {raw}")
    return raw


# The web view is unauthenticated: it listens on loopback unless the file says otherwise, whatever
# defaults.host is.
DEFAULT_WEB_HOST = "127.0.0.1"


def _web(top: _Reader) -> WebParams | None:
    """Return the ``web:`` section (the address of zmix-up's web view), or None if absent."""
    if top.data.get("web") is None:
        top.used.add("web")
        return None
    r = top.section("web")
    params = WebParams(port=r.get("port", _int_range(1, 65535), required=True),
                       host=r.get("host", _host, DEFAULT_WEB_HOST))
    r.finish()
    return params


def _web_address_free(path: str, web: WebParams | None, nodes: list[NodeSpec],
                      authorities: tuple[AuthoritySpec, ...]) -> None:
    """Raise ConfigError if the web view's address is a node's or an authority's."""
    if web is None:
        return
    taken: list[tuple[str, int | None, str]] = [(n.host, n.port, f"node {n.name}'s port")
                                                for n in nodes]
    taken += [(n.host, n.metrics_port, f"node {n.name}'s metrics_port") for n in nodes]
    taken += [(a.host, a.port, f"authority {a.name}'s port") for a in authorities]
    for host, port, what in taken:
        if (host, port) == (web.host, web.port):
            raise ConfigError(path, "web.port", f"duplicate address '{host}:{port}' (also "
                              f"{what})")


def _mailbox(path: str, top: _Reader) -> MailboxParams:
    r = top.section("mailbox")
    d = MailboxParams()
    params = MailboxParams(
        quota=r.get("quota", _int_range(1, 10**9), d.quota),
        ttl=r.get("ttl", _number(0.0, positive=True), d.ttl),
        open_registration=r.get("open_registration", _bool, d.open_registration),
        fetch_slots=r.get("fetch_slots", _int_range(1, 64), d.fetch_slots),
        registration_limit=r.get("registration_limit", _int_range(0, 10**7),
                                 d.registration_limit),
    )
    r.finish()
    return params


def _node_params(path: str, top: _Reader) -> NodeParams:
    r = top.section("node")
    d = NodeParams()
    params = NodeParams(
        queue_limit=r.get("queue_limit", _int_range(1, 10**8), d.queue_limit),
        drain_on_shutdown=r.get("drain_on_shutdown", _bool, d.drain_on_shutdown),
        replay_capacity=r.get("replay_capacity", _int_range(1_000, 10**9), d.replay_capacity),
        taps=r.get("taps", _bool, d.taps),
    )
    r.finish()
    return params


def _members(path: str, network: str, entries: list[tuple[str, object, Role, int | None]],
             raw_authorities: list[object], host: str, base_port: int,
             workers: int) -> tuple[list[NodeSpec], tuple[AuthoritySpec, ...]]:
    """Return the nodes and the authorities, with ports assigned (nodes first, in file order,
    then the authorities) and names, addresses and pinned identity keys checked for
    duplicates."""
    nodes = [_node_fields(path, key, raw, host, workers) for key, raw, _, _ in entries]
    auths = [_authority_fields(path, f"authorities[{i}]", raw, host)
             for i, raw in enumerate(raw_authorities)]
    keys = [key for key, _, _, _ in entries] + [f"authorities[{i}]" for i in range(len(auths))]
    names = [f[0] for f in nodes] + [a[0] for a in auths]
    hosts = [f[1] for f in nodes] + [a[1] for a in auths]
    _unique(path, [(f"{k}.name", n) for k, n in zip(keys, names, strict=True)], "name")
    # One key pinned twice would count twice towards the threshold.
    _unique(path, [(f"authorities[{i}].identity_public", a[3].hex())
                   for i, a in enumerate(auths) if a[3] is not None], "identity key")
    metrics = [f[4] for f in nodes] + [None] * len(auths)
    ports = _assign_ports(path, hosts, [f[2] for f in nodes] + [a[2] for a in auths], metrics,
                          base_port)
    addresses = [(f"{k}.port", f"{h}:{p}") for k, h, p in zip(keys, hosts, ports, strict=True)]
    addresses += [(f"{k}.metrics_port", f"{h}:{m}")
                  for k, h, m in zip(keys, hosts, metrics, strict=True) if m is not None]
    _unique(path, addresses, "address")
    specs = [NodeSpec(f[0], entity_id(network, f[0]), role, layer, f[1], port, f[3], f[4])
             for (_, _, role, layer), f, port in zip(entries, nodes, ports, strict=False)]
    authorities = tuple(AuthoritySpec(a[0], a[1], port, a[3])
                        for a, port in zip(auths, ports[len(nodes):], strict=True))
    return specs, authorities


def _node_fields(path: str, key: str, raw: object, host: str,
                 workers: int) -> tuple[str, str, int | None, int, int | None]:
    """Return a node entry's (name, host, port or None, workers, metrics_port or None)."""
    r = _Reader(path, key, {"name": raw} if isinstance(raw, str) else raw)
    fields = (r.get("name", _name, required=True), r.get("host", _host, host),
              r.optional("port", _int_range(1, 65535)), r.get("workers", _int_range(1, 256),
                                                               workers),
              r.optional("metrics_port", _int_range(1, 65535)))
    r.finish()
    return fields


def _authority_fields(path: str, key: str, raw: object,
                      host: str) -> tuple[str, str, int | None, bytes | None]:
    """Return an authority entry's (name, host, port or None, pinned identity key or None)."""
    r = _Reader(path, key, {"name": raw} if isinstance(raw, str) else raw)
    fields = (r.get("name", _name, required=True), r.get("host", _host, host),
              r.optional("port", _int_range(1, 65535)),
              r.optional("identity_public", _identity_key))
    r.finish()
    return fields


def _assign_ports(path: str, hosts: list[str], explicit: list[int | None],
                  metrics: list[int | None], base_port: int) -> list[int]:
    """Return every member's port: its own, or the next one from ``base_port`` that no member
    of the same host has taken (explicit ports and metrics ports are reserved first)."""
    taken = {(h, p) for h, p in zip(hosts, explicit, strict=True) if p is not None}
    taken |= {(h, m) for h, m in zip(hosts, metrics, strict=False) if m is not None}
    ports, next_port = [], base_port
    for member_host, port in zip(hosts, explicit, strict=True):
        if port is None:
            while (member_host, next_port) in taken:
                next_port += 1
            if next_port > 65535:
                raise ConfigError(path, "defaults.base_port", "ran out of ports to assign")
            port = next_port
            taken.add((member_host, port))
        ports.append(port)
    return ports


def _clients(path: str, network: str, raw: list[object], providers: set[str],
             node_names: set[str], authority_names: set[str]) -> tuple[ClientSpec, ...]:
    clients = []
    for i, item in enumerate(raw):
        r = _Reader(path, f"clients[{i}]", item)
        name = r.get("name", _name, required=True)
        provider = r.get("provider", _name, required=True)
        r.finish()
        if provider not in providers:
            raise ConfigError(path, f"clients[{i}].provider", f"no provider named {provider!r} "
                              f"(providers: {', '.join(sorted(providers))})")
        if name in node_names:
            raise ConfigError(path, f"clients[{i}].name", f"{name!r} is already a node's name")
        if name in authority_names:
            raise ConfigError(path, f"clients[{i}].name",
                              f"{name!r} is already an authority's name")
        clients.append(ClientSpec(name, entity_id(network, name), provider))
    _unique(path, [(f"clients[{i}].name", c.name) for i, c in enumerate(clients)], "name")
    return tuple(clients)


def _unique(path: str, items: list[tuple[str, str]], what: str) -> None:
    seen: dict[str, str] = {}
    for key, value in items:
        if value in seen:
            raise ConfigError(path, key, f"duplicate {what} {value!r} (also at {seen[value]})")
        seen[value] = key


# ---------------------------------------------------------------------------- value checks


def _name(key: str, value: object) -> str:
    if not isinstance(value, str) or not valid_name(value):
        raise ConfigError("", key, f"must be a name of 1-64 letters, digits, '_', '.' or '-' "
                          f"(not . or ..), got {value!r}")
    return value


def _identity_key(key: str, value: object) -> bytes:
    if not (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdefABCDEF" for c in value)):
        raise ConfigError("", key, f"must be an Ed25519 public key as 64 hex digits (in quotes), "
                          f"got {value!r}")
    return bytes.fromhex(value)


def _host(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ConfigError("", key, f"must be a host name or address, got {value!r}")
    return value


def _list(key: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError("", key, f"must be a list, got {_kind(value)}")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError("", key, f"must be true or false, got {value!r}")
    return value


def _int_range(low: int, high: int) -> Callable[[str, object], int]:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError("", key, f"must be an integer from {low} to {high}, got {value!r}")
        return value
    return check


def _whole_seconds(low: int) -> Callable[[str, object], float]:
    """A time in whole seconds (20 or 20.0): the network documents carry whole seconds."""
    def check(key: str, value: object) -> float:
        number = _number(low)(key, value)
        if number != int(number) or number >= MAX_EPOCH:
            raise ConfigError("", key, f"must be a whole number of seconds from {low} to "
                              f"{MAX_EPOCH - 1} (the authorities' documents carry whole "
                              f"seconds), got {value!r}")
        return number
    return check


def _number(low: float, positive: bool = False,
            high: float | None = None, why: str = "") -> Callable[[str, object], float]:
    def check(key: str, value: object) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or value != value or value in (float("inf"), float("-inf")):
            raise ConfigError("", key, f"must be a number, got {value!r}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise ConfigError("", key, f"must be a number within float range, got an integer "
                              f"of {len(str(value))} digits") from None
        if positive and number <= low:
            raise ConfigError("", key, f"must be a number > {low:g}, got {value!r}")
        if number < low:
            raise ConfigError("", key, f"must be a number >= {low:g}, got {value!r}")
        if high is not None and number > high:
            raise ConfigError("", key, f"must be a number <= {high:.10g}{why}, got {value!r}")
        return number
    return check
