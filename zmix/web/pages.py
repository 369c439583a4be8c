"""The pure parts of the web view: what /api/network answers, how an event is framed, which Host
headers are served, and the ``[HOST:]PORT`` syntax of ``--web``. Nothing here opens a socket."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from zmix.errors import LocalMisuse
from zmix.observe import stratified_links
from zmix.topology import Topology

DEFAULT_HOST = "127.0.0.1"
RETRY_MS = 2000  # the reconnect delay a viewer's EventSource is told to use after a drop


def network_graph(topology: Topology) -> dict[str, Any]:
    """Return the JSON object of ``/api/network``: the network's name, its layers and providers
    (names, in topology order), every node (name, role, layer, address), every link (from, to),
    and the declared clients of each provider."""
    return {
        "network": topology.network,
        "providers": [p.name for p in topology.providers],
        "layers": [[n.name for n in layer] for layer in topology.layers],
        "nodes": [{"name": n.name, "role": n.role.value, "layer": n.layer,
                   "address": f"{n.host}:{n.port}"} for n in topology.nodes()],
        "links": [{"from": a, "to": b} for a, b in stratified_links(topology)],
        "clients": {p.name: [c.name for c in topology.clients_of(p.name)]
                    for p in topology.providers},
    }


def sse_event(event: str, data: object) -> bytes:
    """Return one server-sent event: ``event: NAME``, then ``data: JSON`` (compact JSON holds no
    newline, so one data line), then the blank line that ends it."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {text}\n\n".encode()


def sse_preamble() -> bytes:
    """Return what a stream starts with: the reconnect delay (``retry:``, milliseconds)."""
    return f"retry: {RETRY_MS}\n\n".encode()


def sse_keepalive() -> bytes:
    """Return a comment line, which viewers ignore; sent while nothing changes so that proxies
    and the viewer's own timeouts see a live connection."""
    return b": keep-alive\n\n"


def split_host(header: str) -> str | None:
    """Return the host part of a Host header (``name``, ``1.2.3.4``, ``[::1]``, each with an
    optional ``:port``), lower-cased, without brackets; None if it is malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        return header[1:end] or None
    host, colon, port = header.partition(":")
    if colon and not _is_port(port):
        return None
    return host or None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def allowed_hosts(bound: str) -> frozenset[str]:
    """Return the host names (not addresses) a request to a server bound to ``bound`` may name
    in its Host header: ``bound`` itself if it is a name, and ``localhost`` if the server is
    reachable on loopback (bound to a loopback or wildcard address)."""
    names = set()
    address = _ip(bound)
    if address is None:
        names.add(bound.lower())
    if address is None or address.is_loopback or address.is_unspecified:
        names.add("localhost")
    return frozenset(names)


def host_allowed(header: str | None, bound: str) -> bool:
    """Return True if a request whose Host header is ``header`` may be served by a server bound
    to ``bound``: the header names ``bound`` itself, ``localhost`` on a loopback server, a
    loopback address on a server bound to ``localhost``, or (on a wildcard address: 0.0.0.0, ::)
    any IP address. A name that only resolves to us, as a
    DNS-rebinding page's does, is refused. The port is not compared: an SSH forward may use
    another local port."""
    if header is None:
        return False
    host = split_host(header)
    if host is None:
        return False
    if host in allowed_hosts(bound):
        return True
    asked, ours = _ip(host), _ip(bound)
    if asked is None:
        return False
    if ours is None:  # bound by name: only "localhost" says which addresses that is
        return bound.lower() == "localhost" and asked.is_loopback
    return asked == ours or ours.is_unspecified


def parse_web_address(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """Return ``(host, port)`` from ``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT``; the host
    defaults to ``default_host``. Raises LocalMisuse naming the problem."""
    host, port = default_host, text
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or not inside:
            raise LocalMisuse(f"{text!r} is not [IPV6]:PORT")
        host, port = inside, rest[1:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if not host or any(c.isspace() for c in host) or ":" in host:
            raise LocalMisuse(f"{text!r} is not [HOST:]PORT (write an IPv6 address in brackets)")
    if not _is_port(port):
        raise LocalMisuse(f"{text!r}: the port must be an integer from 1 to 65535")
    return host, int(port)


def url_of(host: str, port: int) -> str:
    """Return the address a browser opens for a server bound to ``host:port``; a wildcard
    address is shown as loopback (the server listens there too)."""
    address = _ip(host)
    if address is not None and address.is_unspecified:
        host = "127.0.0.1" if address.version == 4 else "::1"
        address = _ip(host)
    shown = f"[{host}]" if address is not None and address.version == 6 else host
    return f"http://{shown}:{port}/"
