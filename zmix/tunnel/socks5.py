"""The server side of a SOCKS5 handshake (RFC 1928), pure: CONNECT only, no authentication only.

Nothing here touches a socket. The proxy feeds :meth:`SocksHandshake.receive` whatever it read
from the client and writes back what it returns; once the CONNECT request is complete it gets a
:class:`ConnectRequest`, and later writes :func:`reply` with the outcome. Anything else a client
sends (another version, another method, BIND, UDP ASSOCIATE, an unknown address type, a name that
is not a host name) raises :class:`SocksProtocolError`, which carries the bytes to write before
closing and a short counter name (docs/tunnel.md, "SOCKS5").

Wire formats (RFC 1928 sections 3, 4 and 6)::

    greeting  VER=5 NMETHODS METHODS[NMETHODS]          -> VER=5 METHOD (0 = no auth, 0xFF = none)
    request   VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT    -> VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT
"""

from __future__ import annotations

import enum
import ipaddress
import string
from dataclasses import dataclass

from zmix.errors import LocalMisuse, ZmixError

VERSION = 5
METHOD_NO_AUTH = 0x00
METHOD_NONE_ACCEPTABLE = 0xFF
COMMAND_CONNECT = 1

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

# Reply codes (RFC 1928 section 6, field REP).
REPLY_SUCCEEDED = 0
GENERAL_FAILURE = 1
NOT_ALLOWED = 2
NETWORK_UNREACHABLE = 3
HOST_UNREACHABLE = 4
CONNECTION_REFUSED = 5
TTL_EXPIRED = 6
COMMAND_NOT_SUPPORTED = 7
ADDRESS_TYPE_NOT_SUPPORTED = 8

REPLY_TEXT = {
    REPLY_SUCCEEDED: "succeeded",
    GENERAL_FAILURE: "general SOCKS server failure",
    NOT_ALLOWED: "connection not allowed by ruleset",
    NETWORK_UNREACHABLE: "network unreachable",
    HOST_UNREACHABLE: "host unreachable",
    CONNECTION_REFUSED: "connection refused",
    TTL_EXPIRED: "TTL expired",
    COMMAND_NOT_SUPPORTED: "command not supported",
    ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}

# The longest greeting (255 methods) plus the longest request (a 255-byte name). The one-byte
# length fields mean no handshake is longer: the parser reads exactly the lengths they give and
# never holds more than this; bytes after the request are the caller's (``leftover``).
MAX_GREETING_BYTES = 2 + 255
MAX_REQUEST_BYTES = 4 + 1 + 255 + 2
MAX_HANDSHAKE_BYTES = MAX_GREETING_BYTES + MAX_REQUEST_BYTES

# Host-name bytes accepted in a domain request: letters, digits, '-', '_' and the dots between
# labels. Everything else (NUL, spaces, control bytes, '%', ':' ...) is "bad_domain".
_NAME_CHARACTERS = frozenset((string.ascii_letters + string.digits + "-_.").encode())
_MAX_LABEL = 63

# Every SocksProtocolError.reason, for counters (docs/tunnel.md lists them).
REASONS = ("not_socks5", "no_acceptable_method", "bad_request", "bad_command",
           "bad_address_type", "bad_domain", "bad_port")


class SocksProtocolError(ZmixError):
    """A client broke the SOCKS5 handshake (or asked for something this server does not do).

    ``answer`` is what to write to the client before closing (it includes any bytes of this
    handshake not yet returned by :meth:`SocksHandshake.receive`); ``reason`` is a counter name
    from :data:`REASONS`.
    """

    def __init__(self, reason: str, answer: bytes) -> None:
        self.reason = reason
        self.answer = answer
        super().__init__(f"SOCKS5 handshake refused: {reason}")


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A complete CONNECT request.

    ``host`` is dotted IPv4 text (ATYP 1), the name as sent (ATYP 3) or compressed IPv6 text
    (ATYP 4); ``port`` is 1..65535; ``address_type`` is the ATYP byte.
    """

    host: str
    port: int
    address_type: int


class _Stage(enum.Enum):
    GREETING = "greeting"
    REQUEST = "request"
    DONE = "done"
    FAILED = "failed"


class _Refusal(Exception):
    """Internal: the parse stopped on a bad field (becomes a SocksProtocolError)."""

    def __init__(self, reason: str, answer: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer


def reply(code: int) -> bytes:
    """Return the server's reply with ``code`` (BND.ADDR 0.0.0.0, BND.PORT 0, ATYP 1).

    Raises LocalMisuse for a code that is not one of the nine RFC 1928 reply codes.
    """
    if code not in REPLY_TEXT:
        raise LocalMisuse(f"{code!r} is not a SOCKS5 reply code (0..8)")
    return bytes((VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0))


class SocksHandshake:
    """One client's handshake: feed it bytes, write what it returns, get the request once.

    Any split of the same bytes into :meth:`receive` calls gives the same bytes out (joined),
    the same request and the same error. After a SocksProtocolError the handshake is over:
    write ``error.answer`` and close. Once the request is returned the handshake is done too:
    read the client's stream data from the socket (the first of it is in :attr:`leftover`).
    """

    def __init__(self) -> None:
        self._stage = _Stage.GREETING
        self._buffer = bytearray()  # bytes of the greeting or request not parsed yet
        self._leftover = bytearray()  # client bytes after the request
        self._request: ConnectRequest | None = None

    @property
    def request(self) -> ConnectRequest | None:
        """Return the CONNECT request once it is complete, else None."""
        return self._request

    @property
    def leftover(self) -> bytes:
        """Return the client's bytes that followed its request (to forward as stream data)."""
        return bytes(self._leftover)

    def receive(self, data: bytes) -> tuple[bytes, ConnectRequest | None]:
        """Take bytes read from the client; return (bytes to write now, the request or None).

        The request is returned once, by the call that completes it; the bytes of ``data``
        after it are kept in :attr:`leftover`. Raises SocksProtocolError for a refused
        handshake, LocalMisuse if called after a refusal or after the request.
        """
        if self._stage is _Stage.FAILED:
            raise LocalMisuse("this SOCKS5 handshake already failed; close the connection")
        if self._stage is _Stage.DONE:
            raise LocalMisuse("this SOCKS5 handshake is complete; the rest is stream data")
        self._buffer += data
        out = bytearray()
        try:
            if self._stage is _Stage.GREETING and not self._take_greeting(out):
                return bytes(out), None
            request = self._take_request()
        except _Refusal as refusal:
            self._stage = _Stage.FAILED
            raise SocksProtocolError(refusal.reason, bytes(out) + refusal.answer) from None
        if request is None:
            return bytes(out), None
        self._leftover += self._buffer
        self._buffer.clear()
        self._request = request
        self._stage = _Stage.DONE
        return bytes(out), request

    def _take_greeting(self, out: bytearray) -> bool:
        """Consume a complete greeting, appending the method choice to ``out``; False if short."""
        length = _greeting_length(self._buffer)
        if length is None:
            return False
        del self._buffer[:length]
        out += bytes((VERSION, METHOD_NO_AUTH))
        self._stage = _Stage.REQUEST
        return True

    def _take_request(self) -> ConnectRequest | None:
        """Parse the request at the start of the buffer, consuming it; None while incomplete."""
        parsed = _parse_request(self._buffer)
        if parsed is None:
            return None
        request, length = parsed
        del self._buffer[:length]
        return request


def _greeting_length(buffer: bytearray) -> int | None:
    """Return the length of the complete greeting at the start of ``buffer``, None if short.

    Raises _Refusal for another protocol or a greeting without the no-authentication method.
    """
    if not buffer:
        return None
    if buffer[0] != VERSION:
        raise _Refusal("not_socks5", b"")
    if len(buffer) < 2:
        return None
    count = buffer[1]
    none = bytes((VERSION, METHOD_NONE_ACCEPTABLE))
    if count == 0:
        raise _Refusal("no_acceptable_method", none)
    if len(buffer) < 2 + count:
        return None
    if METHOD_NO_AUTH not in buffer[2:2 + count]:
        raise _Refusal("no_acceptable_method", none)
    return 2 + count


def _parse_request(buffer: bytearray) -> tuple[ConnectRequest, int] | None:
    """Return (request, its length) from the start of ``buffer``, None while incomplete.

    Fields are checked in wire order as soon as each is complete, so the outcome depends only
    on the bytes, not on how they were split. Raises _Refusal with the reply to send.
    """
    failure = reply(GENERAL_FAILURE)
    if not buffer:
        return None
    if buffer[0] != VERSION:
        raise _Refusal("bad_request", failure)
    if len(buffer) < 2:
        return None
    if buffer[1] != COMMAND_CONNECT:
        raise _Refusal("bad_command", reply(COMMAND_NOT_SUPPORTED))
    if len(buffer) < 3:
        return None
    if buffer[2] != 0:
        raise _Refusal("bad_request", failure)
    if len(buffer) < 4:
        return None
    parsed = _parse_address(buffer, buffer[3])
    if parsed is None:
        return None
    host, end = parsed
    if len(buffer) < end + 2:
        return None
    port = int.from_bytes(buffer[end:end + 2], "big")
    if port == 0:
        raise _Refusal("bad_port", failure)
    return ConnectRequest(host, port, buffer[3]), end + 2


def _parse_address(buffer: bytearray, address_type: int) -> tuple[str, int] | None:
    """Return (host text, offset after DST.ADDR) for the address at offset 4; None if short."""
    if address_type == ATYP_IPV4:
        end = 4 + 4
        if len(buffer) < end:
            return None
        return str(ipaddress.IPv4Address(bytes(buffer[4:end]))), end
    if address_type == ATYP_IPV6:
        end = 4 + 16
        if len(buffer) < end:
            return None
        return str(ipaddress.IPv6Address(bytes(buffer[4:end]))), end
    if address_type != ATYP_DOMAIN:
        raise _Refusal("bad_address_type", reply(ADDRESS_TYPE_NOT_SUPPORTED))
    if len(buffer) < 5:
        return None
    end = 5 + buffer[4]
    if buffer[4] == 0:
        raise _Refusal("bad_domain", reply(GENERAL_FAILURE))
    if len(buffer) < end:
        return None
    return _check_name(bytes(buffer[5:end])), end


def _check_name(raw: bytes) -> str:
    """Return ``raw`` as text if it is a host name (letters, digits, '-', '_', dots between
    labels of 1..63 bytes, one trailing dot allowed); raise _Refusal("bad_domain") otherwise."""
    labels = raw.split(b".")
    if len(labels) > 1 and labels[-1] == b"":
        labels.pop()  # "example.com." is the same fully qualified name
    bad = (any(byte not in _NAME_CHARACTERS for byte in raw)
           or any(not 1 <= len(label) <= _MAX_LABEL for label in labels))
    if bad:
        raise _Refusal("bad_domain", reply(GENERAL_FAILURE))
    return raw.decode("ascii")
