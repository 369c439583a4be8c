"""The exit's allowlist: which destinations (host:port) a tunnel may be opened to.

An :class:`ExitPolicy` is a list of ``HOST:PORT`` patterns (docs/tunnel.md, "Exit policy"); nothing
is allowed unless a pattern allows it. The exit asks twice: :meth:`ExitPolicy.allows_name` with the
host from the SOCKS request before resolving it, then :meth:`ExitPolicy.allows_address` with each
address the name resolved to. An address that is not globally routable (loopback, private,
link-local, multicast, unspecified, reserved ...) is reached only through an IP or CIDR pattern that
contains it, so a DNS answer cannot turn ``*.example.com:443`` into a way to 127.0.0.1.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zmix.errors import ConfigError, LocalMisuse
from zmix.yamlfile import read_yaml_file

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A name pattern's labels: letters, digits, '-' and '_', 1..63 characters each.
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_MAX_NAME = 253
# NAT64's well-known prefix (RFC 6052): its addresses carry an IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class HostKind(enum.Enum):
    """What a pattern's HOST part is."""

    ANY = "any"  # "*": any name, and any globally routable address
    NAME = "name"  # an exact name
    SUFFIX = "suffix"  # "*.example.com": names below example.com
    NETWORK = "network"  # an IP address or CIDR block


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed pattern: the host part (``name`` is lower case, without a trailing dot;
    for SUFFIX it is the part after "*.") and the inclusive port range."""

    text: str
    kind: HostKind
    name: str
    network: IPNetwork | None
    low_port: int
    high_port: int

    def port_matches(self, port: int) -> bool:
        """Return True if ``port`` is in this rule's range."""
        return self.low_port <= port <= self.high_port


@dataclass(frozen=True, slots=True)
class ExitPolicy:
    """An allowlist of destinations; empty refuses everything."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Iterable[str], source: str = "--allow") -> ExitPolicy:
        """Return the policy of ``patterns``. Raises ConfigError(source, pattern, problem),
        and LocalMisuse for one string instead of a list of them."""
        if isinstance(patterns, str):
            raise LocalMisuse("ExitPolicy.from_patterns takes a list of patterns, not one string")
        rules = []
        for pattern in patterns:
            try:
                rules.append(parse_pattern(pattern))
            except ValueError as exc:
                raise ConfigError(source, str(pattern), str(exc)) from None
        return cls(tuple(rules))

    @classmethod
    def load(cls, path: Path) -> ExitPolicy:
        """Read a policy file (YAML ``allow: [patterns]``).

        Raises ConfigError naming the file, the key (``allow[2]`` for the third pattern) and the
        problem, for a file that cannot be read, is not YAML, is not a mapping, has a key other
        than ``allow``, lacks ``allow``, or holds anything but a list of valid patterns.
        """
        where = str(path)
        return cls.from_mapping(read_yaml_file(path), where)

    @classmethod
    def from_mapping(cls, data: object, where: str) -> ExitPolicy:
        """Return the policy in a parsed policy file; ConfigError(where, key, problem) if bad."""
        if not isinstance(data, dict):
            raise ConfigError(where, "(top level)", f"must be a mapping with the key allow, "
                                                    f"got {_kind(data)}")
        unknown = sorted(str(key) for key in data if key != "allow")
        if unknown:
            raise ConfigError(where, unknown[0], "unknown key (the only key is allow)")
        if "allow" not in data:
            raise ConfigError(where, "allow", "missing (a list of HOST:PORT patterns; [] "
                                              "allows nothing)")
        patterns = data["allow"]
        if not isinstance(patterns, list):
            raise ConfigError(where, "allow", f"must be a list of HOST:PORT patterns, "
                                              f"got {_kind(patterns)}")
        rules = []
        for index, pattern in enumerate(patterns):
            key = f"allow[{index}]"
            if not isinstance(pattern, str):
                raise ConfigError(where, key, f"must be a HOST:PORT string, got {_kind(pattern)}")
            try:
                rules.append(parse_pattern(pattern))
            except ValueError as exc:
                raise ConfigError(where, key, f"{pattern!r}: {exc}") from None
        return cls(tuple(rules))

    @property
    def patterns(self) -> tuple[str, ...]:
        """Return the patterns as written, in order (for logs and status)."""
        return tuple(rule.text for rule in self.rules)

    def allows_name(self, host: str, port: int) -> bool:
        """Return True if the requested ``host`` (a name or an IP address) and port are allowed.

        A name is matched by exact-name, "*.suffix" and "*" patterns; an IP address by IP/CIDR
        patterns, and by "*" only if it is globally routable. Call before resolving a name.
        """
        address = _parse_address(host)
        if address is not None:
            return self._allows_ip(address, port)
        name = _normal_name(host)
        if name is None:
            return False
        return any(rule.port_matches(port) and _name_matches(rule, name) for rule in self.rules)

    def allows_address(self, address: str, port: int, *, requested: str) -> bool:
        """Return True if a connection to ``address`` (what ``requested`` resolved to) is allowed.

        ``requested`` must itself be allowed (:meth:`allows_name`). For a requested IP address
        ``address`` must be that address. For a requested name, a globally routable address is
        allowed; any other address only if an IP/CIDR pattern contains it. An ``address`` that is
        not IP address text is refused.
        """
        resolved = _parse_address(address)
        if resolved is None or not self.allows_name(requested, port):
            return False
        literal = _parse_address(requested)
        if literal is not None:
            return _unwrap(literal) == _unwrap(resolved)
        return _is_public(resolved) or self._explicitly_allows(resolved, port)

    def _allows_ip(self, address: IPAddress, port: int) -> bool:
        """An IP destination: an IP/CIDR pattern, or "*" for a globally routable address."""
        if self._explicitly_allows(address, port):
            return True
        return _is_public(address) and any(
            rule.kind is HostKind.ANY and rule.port_matches(port) for rule in self.rules)

    def _explicitly_allows(self, address: IPAddress, port: int) -> bool:
        """Return True if an IP/CIDR pattern contains ``address`` (or the IPv4 it maps)."""
        candidates = {address, _unwrap(address)}
        return any(rule.network is not None and rule.port_matches(port)
                   and any(candidate in rule.network for candidate in candidates)
                   for rule in self.rules)


def parse_pattern(text: str) -> Rule:
    """Return the rule of one ``HOST:PORT`` pattern; raises ValueError saying what is wrong."""
    host, port_text = _split_pattern(text)
    low, high = _parse_ports(port_text)
    if host == "*":
        return Rule(text, HostKind.ANY, "", None, low, high)
    if host.startswith("["):  # _split_pattern made sure the bracket closes before the colon
        return Rule(text, HostKind.NETWORK, "", _parse_network(host[1:-1], 6), low, high)
    if host and all(ch in "0123456789./" for ch in host):
        return Rule(text, HostKind.NETWORK, "", _parse_network(host, 4), low, high)
    if host.startswith("*."):
        return Rule(text, HostKind.SUFFIX, _check_pattern_name(host[2:]), None, low, high)
    return Rule(text, HostKind.NAME, _check_pattern_name(host), None, low, high)


def _split_pattern(text: str) -> tuple[str, str]:
    """Split ``HOST:PORT`` at the last colon (after the bracket for IPv6)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty pattern (write HOST:PORT)")
    if text != text.strip():
        raise ValueError("spaces around the pattern")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            raise ValueError("an IPv6 pattern is [ADDRESS]:PORT or [ADDRESS/LEN]:PORT")
        return text[:close + 1], text[close + 2:]
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise ValueError("no port (write HOST:PORT; PORT is a number, LOW-HIGH or *)")
    if ":" in host:
        raise ValueError("an IPv6 address in a pattern goes in brackets: [2001:db8::1]:443")
    return host, port


def _parse_ports(text: str) -> tuple[int, int]:
    """Return the inclusive range of PORT (``443``, ``8000-8080`` or ``*``)."""
    if text == "*":
        return 1, 65535
    low_text, dash, high_text = text.partition("-")
    low = _parse_port(low_text)
    high = _parse_port(high_text) if dash else low
    if high < low:
        raise ValueError(f"port range {text} runs backwards")
    return low, high


def _parse_port(text: str) -> int:
    """Return a port number 1..65535 written in decimal digits."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"bad port {text!r} (a number 1..65535, LOW-HIGH or *)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    return port


def _parse_network(text: str, version: int) -> IPNetwork:
    """Return the network of an address or CIDR block of that IP version."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"bad IPv{version} address or CIDR block {text!r} ({exc})") from None
    if network.version != version:
        raise ValueError(f"{text!r} is not an IPv{version} address or CIDR block")
    return network


def _check_pattern_name(name: str) -> str:
    """Return a pattern's host name in lower case without a trailing dot; ValueError if bad."""
    normal = _normal_name(name)
    if normal is None:
        raise ValueError(f"bad host name {name!r} (letters, digits, '-', '_' in dot-separated "
                         f"labels; a wildcard only as a leading '*.')")
    return normal


def _normal_name(name: str) -> str | None:
    """Return a host name lower-cased without its trailing dot, or None if it is not one."""
    lowered = name.lower()
    if lowered.endswith("."):
        lowered = lowered[:-1]
    if not lowered.isascii() or len(lowered) > _MAX_NAME:
        return None
    if not all(_LABEL.fullmatch(label) for label in lowered.split(".")):
        return None
    return lowered


def _name_matches(rule: Rule, name: str) -> bool:
    """Return True if the name rule (ANY, NAME or SUFFIX) matches the normalised ``name``."""
    if rule.kind is HostKind.ANY:
        return True
    if rule.kind is HostKind.NAME:
        return name == rule.name
    if rule.kind is HostKind.SUFFIX:
        return name.endswith("." + rule.name)
    return False


def _parse_address(text: str) -> IPAddress | None:
    """Return ``text`` as an IP address (IPv6 with or without brackets), None if it is not."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unwrap(address: IPAddress) -> IPAddress:
    """Return the IPv4 address an IPv4-mapped IPv6 address stands for, else the address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded(address: IPAddress) -> list[IPAddress]:
    """Return the address and every IPv4 address it carries (mapped, NAT64, 6to4).

    Teredo (2001::/32) needs no unwrapping: the whole block is not globally routable.
    """""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:
            found.append(address.sixtofour)
    return found


def _is_public(address: IPAddress) -> bool:
    """Return True if ``address`` (and every IPv4 address inside it) is globally routable
    unicast; loopback, private, link-local, shared, reserved, multicast and unspecified are not."""
    return all(inner.is_global and not inner.is_multicast for inner in _embedded(address))


def _kind(value: object) -> str:
    """Name a YAML value's type for an error message."""
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
